"""What `serve` refuses at start, as checks that change nothing: `autoexp-mcp check` runs all of
them and prints every problem with its fix, and the server raises the same errors from the same
functions, so `check` cannot say "ok" where `serve` then refuses."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path

from .config import CONFIG_FILE, Config, load_config
from .errors import AutoexpError, ConfigError, DirtyTreeError, GitError, GuardError, LockError
from .gitops import Git
from .runs import packages_in_writable
from .state import STATE_DIR, Phase, State, load_state


def _listed(paths: Sequence[str], most: int) -> str:
    return ", ".join(paths[:most]) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def dirty_error(git: Git, allow: Sequence[str] = ()) -> DirtyTreeError | None:
    changed = [p for p in git.changed() if p not in allow]
    if not changed:
        return None
    shown = _listed(changed, 20)
    return DirtyTreeError(
        f"the working tree has uncommitted changes to tracked files: {shown}. Commit or stash them "
        "first (no restart needed: the next tool call checks again); autoexp-mcp only starts from a "
        "clean tree so that every result is reproducible."
    )


def config_error(git: Git, commit: str, current: bytes | None, branch: str) -> DirtyTreeError | None:
    """The config in force is the one committed at `commit`: anything else is refused."""
    try:
        committed = git.show_file(commit, CONFIG_FILE)
    except GitError:
        committed = None
    if committed == current:
        return None
    if committed is None:
        return DirtyTreeError(
            f"{CONFIG_FILE} is not committed on {branch}. The server only runs with a committed config, so that a "
            f"restart can tell it was not changed: `git add {CONFIG_FILE} && git commit`, then start again."
        )
    head = git.head()
    if head != commit:
        fix = (
            f"{branch} is at {head[:12]}, past that commit, and nothing but the server commits there while an "
            f"experiment is under way. Go back with `git reset --hard {commit[:12]}`"
        )
    else:
        fix = f"If the change is yours, commit it on {branch}; else restore it: `git checkout -- {CONFIG_FILE}`"
    return DirtyTreeError(
        f"{CONFIG_FILE} in the working tree differs from the one committed at {commit[:12]} on {branch}, which is "
        "the config this experiment runs with. The server never runs with a changed, uncommitted config (an "
        f"eval may have rewritten it). {fix}. Then start the server again."
    )


def lock_holder(root: Path) -> LockError | None:
    """Another server holding the repository's lock, found without taking it for long."""
    path = root / STATE_DIR / "lock"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        return LockError(
            f"another autoexp-mcp server (pid {holder}) is running the experiment in {root}. "
            "Stop it first; only one server may drive a repository at a time."
        )
    finally:
        os.close(fd)
    return None


def expected_head(st: State) -> str:
    """Where the branch must be for the state `st`: the commit under evaluation, else the incumbent."""
    p = st.pending
    if st.phase in (Phase.COMMITTED, Phase.RUNNING, Phase.EVALUATED) and p is not None and p.commit:
        return p.commit
    if st.incumbent is not None:
        return st.incumbent.commit
    return st.start_commit


def writable_code_error(git: Git, cfg: Config, commit: str) -> ConfigError | None:
    """Tracked Python code inside a writable dir of the sandbox, where an eval could leave
    bytecode, an extension module or a package of the same name that the next run imports
    instead: refused, since no check of the tracked files would see it. The target too: a run
    could leave its own code there for every later candidate's run."""
    dirs = tuple(w.rstrip("/") + "/" for w in cfg.sandbox.writable)
    if not dirs:
        return None
    found = [e.path for e in git.tree_entries(commit) if e.path.startswith(dirs) and e.path.endswith((".py", ".pyw"))]
    found += packages_in_writable(git.root, cfg)  # untracked: a package a run could fill
    if not found:
        return None
    return ConfigError(
        f"[sandbox] writable holds Python code ({_listed(found, 3)}): an eval could leave bytecode, an extension "
        "module or a package there that a later run imports instead. Move the code out of the writable dir (which "
        "must not be a package either), or name a subdirectory that holds only output; commit, and start again."
    )


def problems(root: Path) -> list[AutoexpError]:
    """Every reason `serve --repo root` would refuse to start, without changing anything."""
    try:
        git = Git(root)
    except GitError as e:
        return [e]
    root = git.root
    try:
        cfg = load_config(root)
    except ConfigError as e:
        return [e]
    found: list[AutoexpError] = []
    held = lock_holder(root)
    if held is not None:
        found.append(held)
    try:
        st = load_state(root)
    except AutoexpError as e:
        return [*found, e]
    if st is not None and st.tag != cfg.experiment.tag:
        st = None  # a new tag: the old one's files are archived at start
    branch = cfg.experiment.branch
    current = (root / CONFIG_FILE).read_bytes() if (root / CONFIG_FILE).is_file() else None
    on_branch = st is not None and git.current_branch() == st.branch
    dirty = None if on_branch else dirty_error(git)
    if dirty is not None:
        found.append(dirty)
    commit = expected_head(st) if on_branch and st is not None else git.head()
    bad_config = config_error(git, commit, current, branch)
    if bad_config is not None and not (dirty is not None and CONFIG_FILE in str(dirty)):
        found.append(bad_config)
    code = writable_code_error(git, cfg, commit)
    if code is not None:
        found.append(code)
    target = cfg.for_stage(st.stage if st is not None else 0).experiment.target
    if not git.is_tracked(target):
        found.append(GuardError(f"target {target} is not tracked by git. `git add {target}` and commit it first."))
    return found
