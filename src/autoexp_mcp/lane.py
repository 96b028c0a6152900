"""Lanes: several experiments at once on one repository, one server each.

A lane is an Experiment opened on its own git worktree, `.autoexp/lanes/<tag>/` under the
repository, on branch `autoexp/<tag>`: its own HEAD, index, `.autoexp/` (state, lock, run logs)
and ledger (`results.tsv`, `experiments.jsonl` at the worktree's top). Refs and objects are
shared with the user's checkout, which a lane never touches. The lane's tag is an override of
the committed config's (never written to autoexp.toml, so it is no config change).

What a lane records about itself (its base commit and focus line) is in
`.autoexp/lanes/<tag>.json`, next to the worktree.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .config import CONFIG_FILE, load_config, with_tag
from .errors import GuardError
from .gitops import Git
from .guard import atomic_write_file
from .ledger import EXPERIMENTS_JSONL
from .loop import Experiment
from .slots import shared_state_dir
from .state import STATE_DIR, State, load_state

LANES_DIR = "lanes"
MAX_FOCUS = 300  # characters: one line for the prompt


@dataclass(frozen=True)
class LaneInfo:
    tag: str
    path: Path  # the worktree
    base: str | None  # the commit the lane started from
    focus: str | None


def main_root(repo: Path) -> Path:
    """The repository's main checkout, also when `repo` is a lane's worktree."""
    return shared_state_dir(Git(repo)).parent


def lanes_dir(root: Path) -> Path:
    return root / STATE_DIR / LANES_DIR


def lane_path(root: Path, tag: str) -> Path:
    return lanes_dir(root) / tag


def _meta_path(root: Path, tag: str) -> Path:
    return lanes_dir(root) / f"{tag}.json"


def read_info(root: Path, tag: str) -> LaneInfo:
    meta: dict[str, str | None] = {}
    path = _meta_path(root, tag)
    if path.is_file():
        meta = json.loads(path.read_text(encoding="utf-8"))
    return LaneInfo(tag, lane_path(root, tag), meta.get("base"), meta.get("focus"))


def list_lanes(root: Path) -> list[LaneInfo]:
    """Every lane of the repository (a worktree under .autoexp/lanes/), by tag."""
    d = lanes_dir(root)
    if not d.is_dir():
        return []
    return [read_info(root, p.name) for p in sorted(d.iterdir()) if p.is_dir() and (p / ".git").exists()]


def lane_state(info: LaneInfo) -> State | None:
    return load_state(info.path) if (info.path / STATE_DIR).is_dir() else None


def _clean_focus(focus: str) -> str:
    from .ledger import clean_text

    return clean_text(focus, MAX_FOCUS)


def create(repo: Path, tag: str, *, from_commit: str | None = None, focus: str | None = None) -> LaneInfo:
    """The lane `tag`'s worktree, made on first use from `from_commit` (default: the main
    checkout's HEAD). A focus given replaces the recorded one."""
    git = Git(repo)
    root = shared_state_dir(git).parent
    if git.root != root:
        raise GuardError(f"{repo} is a lane's worktree: give the repository itself ({root}) with --tag")
    cfg = with_tag(load_config(root), tag)
    branch = cfg.experiment.branch
    path = lane_path(root, tag)
    git.ensure_excluded()
    info = read_info(root, tag)
    base = info.base
    if not (path / ".git").exists():
        if git.branch_exists(branch):
            if from_commit is not None:
                raise GuardError(f"branch {branch} already exists; --from only applies to a new lane.")
            git.add_worktree(path, branch, None)
        else:
            base = git.resolve(from_commit) if from_commit else git.head()
            try:
                git.show_file(base, CONFIG_FILE)
            except Exception:
                raise GuardError(
                    f"{CONFIG_FILE} is not committed at {base[:12]}: a lane starts from a commit that holds the "
                    f"config. `git add {CONFIG_FILE} && git commit`, then start the lane again."
                ) from None
            path.parent.mkdir(parents=True, exist_ok=True)
            git.add_worktree(path, branch, base)
    elif from_commit is not None:
        raise GuardError(f"lane {tag} already exists at {path}; --from only applies to a new lane.")
    new_focus = _clean_focus(focus) if focus is not None else info.focus
    if (base, new_focus) != (info.base, info.focus):
        meta = {"tag": tag, "base": base, "focus": new_focus or None}
        atomic_write_file(_meta_path(root, tag), json.dumps(meta, indent=1).encode())
    return read_info(root, tag)


def hidden_from(root: Path, tag: str) -> list[Path]:
    """What a lane's eval must not see besides its own files: the repository's `.autoexp/`
    (other lanes' state, ledgers and hold-outs, the slots) but for the lane's own worktree.
    Listed at each run, so lanes started later are hidden too."""
    state_dir = root / STATE_DIR
    own = lane_path(root, tag)
    found = [p for p in state_dir.iterdir() if p.name != LANES_DIR] if state_dir.is_dir() else []
    found += [p for p in lanes_dir(root).iterdir() if p != own] if lanes_dir(root).is_dir() else []
    found += [root / f for f in (EXPERIMENTS_JSONL, "results.tsv")]
    return found


def open_lane(
    repo: Path,
    tag: str,
    *,
    from_commit: str | None = None,
    focus: str | None = None,
    accept_git_config: bool = False,
) -> Experiment:
    """The Experiment of lane `tag` of the repository at `repo` (created on first use)."""
    info = create(repo, tag, from_commit=from_commit, focus=focus)
    exp = Experiment(info.path, tag=tag, accept_git_config=accept_git_config)
    root = main_root(info.path)
    exp.focus = info.focus
    exp.hidden_extra = lambda: hidden_from(root, tag)
    return exp


def where(info: LaneInfo) -> str:
    """Where a user finds a lane's files, for status and the log."""
    return os.path.relpath(info.path, Path.cwd()) if info.path.is_relative_to(Path.cwd()) else str(info.path)
