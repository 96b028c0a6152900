"""Opening a lane's experiment: the lock, the tag's files, the branch and the persisted state,
the checks that the repository is as the last server left it, commits the user made between
runs, and bringing git back in line with the state after a restart or a crash.

Plain functions over git, the state and the config: the phase machine (loop.py) calls them
when it opens, and finishes the ledger side of a recovery itself.
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import guard, ledger, preflight
from .config import CONFIG_FILE, Config, with_tag
from .errors import GuardError, LockError
from .gitops import Git
from .runner import kill_marked
from .state import DecisionState, EvalResult, Pending, Phase, State, load_state, save_state
from .watch import code_config_digest

log = logging.getLogger("autoexp_mcp")

ARCHIVE_DIR = "archive"


def acquire_lock(state_dir: Path, root: Path) -> int:
    """The lane's lock file, held (flock) for the server's life; its text is the holder's pid."""
    path = state_dir / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise LockError(
            f"another autoexp-mcp server (pid {holder}) is running the experiment in {root}. "
            "Stop it first; only one server may drive a repository at a time."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def switch_tag_files(root: Path, state_dir: Path, tag: str) -> None:
    """On a new tag, archive the previous tag's state, logs and ledger (and bring back this
    tag's, if it ran before), so the files at the top always belong to the current tag."""
    old = load_state(root)
    if old is None or old.tag == tag:
        return
    movable = [state_dir / "state.json", state_dir / "runs", state_dir / "protect.json"]
    movable += [root / ledger.RESULTS_TSV, root / ledger.EXPERIMENTS_JSONL]
    dest = state_dir / ARCHIVE_DIR / old.tag
    if dest.exists():
        dest = dest.with_name(f"{old.tag}-{int(time.time())}")
    dest.mkdir(parents=True)
    for p in movable:
        if p.exists():
            shutil.move(str(p), str(dest / p.name))
    back = state_dir / ARCHIVE_DIR / tag
    if back.is_dir():
        for p in back.iterdir():
            where = root if p.name in (ledger.RESULTS_TSV, ledger.EXPERIMENTS_JSONL) else state_dir
            shutil.move(str(p), str(where / p.name))
        back.rmdir()
    log.warning("experiment tag changed from %s to %s; the old files are in %s", old.tag, tag, dest)


def check_git_code_config(git: Git, root: Path, tag: str, accept: bool) -> None:
    """Before any git command that could run a filter: the .git files that could make git run
    code must be as the last server left them (an eval without a sandbox may have changed
    them and killed the server). Refused, with what to do, unless the user accepts them."""
    old = load_state(root)
    if accept or old is None or old.git_code_config is None or old.tag != tag:
        return
    if code_config_digest(git) != old.git_code_config:
        raise GuardError(
            ".git/config, .git/config.worktree or .git/info/attributes changed since the last server ran: an "
            "eval without a sandbox could have set a filter there that runs code inside the server's git "
            "commands. Look at them (`git config --local --list`, `cat .git/info/attributes`); if the change "
            "is yours, start the server once with `autoexp-mcp serve --accept-git-config`."
        )


def open_state(git: Git, full_cfg: Config, book: ledger.Ledger, from_commit: str | None) -> State:
    """The tag's persisted state, on its branch (checked out); a new tag gets its branch (from
    `from_commit` or HEAD) and a fresh state, saved."""
    root = git.root
    exp = full_cfg.experiment
    state = load_state(root)
    branch = exp.branch
    if from_commit is not None and (state is not None or git.branch_exists(branch)):
        raise GuardError(f"branch {branch} already exists; --from only applies to a new tag.")
    if state is not None and git.current_branch() != branch:
        refuse_dirty(git)
        git.checkout_branch(branch)
    if state is not None:
        check_ledger_agrees(book, state)
        return state
    if git.branch_exists(branch):
        if from_commit is not None:
            raise GuardError(f"branch {branch} already exists; --from only applies to a new tag.")
        if git.current_branch() != branch:
            refuse_dirty(git)
            git.checkout_branch(branch)
        start = git.head()
    else:
        refuse_dirty(git)
        start = git.resolve(from_commit) if from_commit else git.head()
        config_path = root / CONFIG_FILE
        config_text = config_path.read_bytes() if config_path.exists() else None
        git.checkout_branch(branch, start)
        if from_commit and config_text is not None and config_path.read_bytes() != config_text:
            # The old best carries the old tag's config: the new branch starts with this one,
            # or a restarted server would read the old tag back.
            guard.atomic_write_file(config_path, config_text)
            if git.is_tracked(CONFIG_FILE):
                start = git.commit_file(CONFIG_FILE, f"autoexp: start tag {exp.tag} from {start[:12]}")
    state = State(tag=exp.tag, branch=branch, start_commit=start, started_at=time.time(), harness=None)
    target = full_cfg.for_stage(state.stage).experiment.target
    check_target_tracked(git, target)
    state.harness = harness_hash(git, start, target)
    save_state(root, state)
    return state


def adopt_user_commits(git: Git, st: State, full_cfg: Config, tag: str | None, save: Callable[[], None]) -> None:
    """Commits made on the experiment branch between runs, on top of the incumbent (or of the
    start, before a baseline was measured), are never reset silently: before a baseline they
    become the new start (a fixed harness or config); after it, a change of autoexp.toml's
    budget caps, timeout or wait is adopted and logged with the next row; anything else is
    refused with what to do. A commit touching only the target is the server's own commit
    that a crash kept from being recorded: `recover` handles it. `tag` is the lane's
    override of the committed tag, if any."""
    if st.phase != Phase.IDLE:
        return
    expected, head = preflight.expected_head(st), git.head()
    if head == expected or not git.is_ancestor(expected, head):
        return
    branch = st.branch
    target = full_cfg.for_stage(st.stage).experiment.target
    if st.incumbent is None:
        st.start_commit = head
        st.harness = harness_hash(git, head, target)
        st.baseline_failed = None
        save()
        log.warning("%s moved to %s before a baseline was measured: the experiment starts there", branch, head[:12])
        return
    changed = git.paths_changed(expected, head)
    if changed <= {target} and changed:
        return
    if changed != {CONFIG_FILE}:
        raise GuardError(
            f"{branch} is at {head[:12]}, past the incumbent {expected[:12]}, with commits that change "
            f"{', '.join(sorted(changed)[:10])}. Between runs the server adopts only changes of {CONFIG_FILE} "
            "that keep results comparable (budget, timeouts, limits); it never resets your commits silently. "
            "Keep them in a new experiment "
            f"(a new [experiment].tag, then `autoexp-mcp serve --from {head[:12]}`), or move the branch back with "
            f"`git reset --hard {expected[:12]}`."
        )
    from .config import config_changes, parse_config_text

    old = parse_config_text(git.show_file(expected, CONFIG_FILE).decode(), f"{CONFIG_FILE} at {expected[:12]}")
    if tag is not None:
        old = with_tag(old, tag)
    changes, refused = config_changes(old, full_cfg)
    if refused:
        best = (st.best or st.incumbent).commit
        raise GuardError(
            f"the {CONFIG_FILE} committed at {head[:12]} changes {', '.join(refused)}, which would make its "
            "results incomparable with the experiments already run. Between runs the server adopts only budget "
            "caps, timeouts, limits, the prompt and the sandbox. Start a new experiment from the best commit "
            f"instead: put a new [experiment].tag in {CONFIG_FILE}, then `autoexp-mcp serve --from {best[:12]}`; "
            f"or move the branch back with `git reset --hard {expected[:12]}`."
        )
    st.incumbent.commit = head  # the same target, with the new config: reverts keep the change
    st.harness = harness_hash(git, head, target)
    st.config_note = "; ".join(changes)
    save()
    log.warning("adopted the %s committed at %s: %s", CONFIG_FILE, head[:12], st.config_note)


def check_config_committed(git: Git, st: State, config_bytes: bytes | None, branch: str) -> None:
    """The config in force is the one committed at the incumbent: a changed, uncommitted or
    untracked autoexp.toml (the eval may have written it before a restart) is refused,
    never silently reset. `config_bytes` is None when the config was not read from the file."""
    if config_bytes is None:
        return
    err = preflight.config_error(git, preflight.expected_head(st), config_bytes, branch)
    if err is not None:
        raise err


def check_ledger_agrees(book: ledger.Ledger, st: State) -> None:
    """The ledger is the record: a state.json that disagrees with it (edited, or restored
    from an old copy) would reset the budget or number rows twice, so refuse to start."""
    last = book.last_record()
    logged = last.experiment if last is not None and last.tag in (None, st.tag) else 0
    p = st.pending
    cut_short = st.phase == Phase.DECIDED and p is not None and logged == p.experiment == st.experiments + 1
    if logged != st.experiments and not cut_short:
        raise GuardError(
            f".autoexp/state.json counts {st.experiments} experiments but experiments.jsonl has "
            f"{logged} for tag {st.tag}: the state was edited or restored from an old copy. Restore "
            "the matching files (or start a new tag); the server will not guess which one is right."
        )


def refuse_dirty(git: Git, allow: Sequence[str] = ()) -> None:
    err = preflight.dirty_error(git, allow)
    if err is not None:
        raise err


def check_target_tracked(git: Git, target: str) -> None:
    guard.resolve_target(git.root, target)
    if not git.is_tracked(target):
        raise GuardError(f"target {target} is not tracked by git. `git add {target}` and commit it first.")


def harness_hash(git: Git, commit: str, target: str) -> str:
    """Identifies what the metric is measured with: every tracked file but the target (the git
    tree of the commit without the target's entry). Protected untracked data is checked apart."""
    h = hashlib.sha256()
    for e in git.tree_entries(commit):  # the listing the harness watch reads too: one ls-tree per commit
        if e.path != target:
            h.update(f"{e.mode} {e.kind} {e.sha}\t{e.path}\0".encode())
    return h.hexdigest()


class Left(enum.Enum):
    """What `recover` leaves to the phase machine: the ledger side of an unfinished transition."""

    NOTHING = "nothing"
    INTERRUPTED = "interrupted"  # a run cut short, decided as `interrupted`: log its row
    DECIDED = "decided"  # decided before the stop: finish the transition if its row is in the ledger
    REATTACH = "reattach"  # a scheduler's job runs on (or has ended): follow it instead of a second run


def recover(git: Git, st: State, target: str, save: Callable[[], None]) -> Left:
    """Make git agree with the persisted phase after a restart (or a crash)."""
    head = git.head()
    expected = preflight.expected_head(st)
    p = st.pending
    if st.phase in (Phase.IDLE, Phase.EDITED) and head != expected:
        # A commit made but not recorded (killed between git commit and the state write),
        # or made behind our back: keep its content as an uncommitted edit of the target.
        log.warning("HEAD %s is not the incumbent %s; moving back", head[:12], expected[:12])
        git.unstage_all(expected)
        changed = git.changed()
        others = [c for c in changed if c != target]
        git.restore(expected, others)
        if target in changed and st.phase == Phase.IDLE:
            st.phase = Phase.EDITED
            st.pending = Pending(experiment=st.experiments + 1, parent=expected)
            save()
    elif st.phase == Phase.RUNNING and p is not None and p.run_id and p.remote_run:
        return Left.REATTACH  # a job on a scheduler outlives the server that submitted it
    elif st.phase == Phase.RUNNING and p is not None and p.run_id:
        # The eval of the previous server died with it (or must). The run was recorded as
        # started, so it counts: an eval that kills the server on every unlucky draw must
        # not get an invisible best-of-N.
        kill_marked(p.run_id)
        mark_interrupted(git, st, p, save)
        return Left.INTERRUPTED
    elif st.phase == Phase.DECIDED and p is not None:
        if head != expected:
            git.reset_hard(expected)
        return Left.DECIDED
    return Left.NOTHING


def mark_interrupted(git: Git, st: State, p: Pending, save: Callable[[], None]) -> None:
    """Decide the run a stopped server left unfinished as `interrupted` (a crash for the budget
    and the crashes-in-a-row limit) and go back to the incumbent; the row is logged next."""
    reason = f"the server stopped while run {p.run} was going (killed, or its client left); the run counts as a crash"
    p.result = EvalResult(status="interrupted", reason=reason)
    p.decision = DecisionState(status="interrupted", rule="interrupted", reason=reason)
    st.phase = Phase.DECIDED
    save()
    if not p.baseline and st.incumbent is not None:
        git.reset_hard(st.incumbent.commit)
    log.warning("run %s was interrupted by a server stop; logged as experiment %d", p.run, p.experiment)


def logged_record(book: ledger.Ledger, st: State) -> ledger.Record | None:
    """The ledger row of the pending experiment when a crash came between the ledger append
    and the state write (its TSV row made whole), else None."""
    p = st.pending
    last = book.last_record()
    if p is not None and last is not None and last.experiment == p.experiment and last.tag == st.tag:
        book.ensure_tsv_row(last)  # the TSV write may have been cut off too
        return last
    return None
