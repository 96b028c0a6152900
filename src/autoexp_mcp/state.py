"""The persisted phase machine: `.autoexp/state.json`, written atomically after every change.

A restarted server reads it back and continues where the previous one stopped. The eval
could have written the file, so it carries a mac made with the user's key (`auth`): a state
this server did not write is refused, never guessed at.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import auth
from .errors import IntegrityError
from .ledger import EXPERIMENTS_JSONL

STATE_DIR = ".autoexp"
STATE_FILE = "state.json"
STATE_VERSION = 1
STATE_REL = f"{STATE_DIR}/{STATE_FILE}"
_PURPOSE = "state"
_GIVE_UP = (
    "To give this experiment up instead, move .autoexp/state.json, .autoexp/protect.json, results.tsv and "
    "experiments.jsonl aside (keep them as evidence) and start a new tag: a fresh `tag` in autoexp.toml, "
    "with `autoexp-mcp serve --from <commit>` to start from a commit you trust. `autoexp-mcp verify` shows "
    "what the ledger says."
)


class Phase(StrEnum):
    IDLE = "idle"
    EDITED = "edited"
    COMMITTED = "committed"
    RUNNING = "running"
    EVALUATED = "evaluated"
    DECIDED = "decided"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Point(_Model):
    """A measured commit: means per metric, and every repeat's values."""

    commit: str
    metrics: dict[str, float]
    values: dict[str, list[float]] = Field(default_factory=dict)
    holdout: float | None = None
    experiment: int | None = None


class RemoteJob(_Model):
    """The scheduler's job that ran (the last of) a result's runs."""

    executor: str  # slurm | ray
    job_id: str
    node: str | None = None
    queue_wait_s: float = 0.0  # in the scheduler's queue: not eval time, not against the timeout


class EvalResult(_Model):
    status: str  # done | crash | timeout
    metrics: dict[str, float | None] = Field(default_factory=dict)
    values: dict[str, list[float]] = Field(default_factory=dict)
    std: dict[str, float] = Field(default_factory=dict)
    elapsed_s: float = 0.0
    reason: str = ""
    log: str | None = None
    log_truncated: bool = False
    returncode: int | None = None
    tail: str = ""  # the output tail the server received (never the hold-out's)
    holdout: float | None = None
    holdout_failed: bool = False
    drift_values: dict[str, list[float]] | None = None
    slot: str | None = None  # the eval slot the (last) run held
    slot_wait_s: float = 0.0  # waiting for slots, not counted in elapsed_s nor against the timeout
    remote: RemoteJob | None = None  # set when a scheduler ran it ([executor] kind = "slurm" | "ray")


class DecisionState(_Model):
    status: str
    rule: str
    reason: str
    margin: float | None = None


class AutoLog(_Model):
    """What a one-call `experiment` asked to be logged with its row: the server decides and logs
    the run itself when it ends, also when no call is waiting (and after a restart)."""

    notes: str = ""
    tokens_used: int = 0
    cost_usd: float | None = None


class Pending(_Model):
    """The experiment in flight, from its first edit (or the baseline run) to its ledger row."""

    experiment: int
    baseline: bool = False
    parent: str  # the incumbent when the experiment started: where a revert goes
    commit: str | None = None
    description: str = ""
    diff_lines: int = 0
    run: int | None = None
    run_id: str | None = None
    result: EvalResult | None = None
    decision: DecisionState | None = None
    drift_note: str | None = None
    auto: AutoLog | None = None  # set by `experiment`: the server decides and logs this run
    # The scheduler's job of the run going on (by its log name): a restart follows it to its end.
    remote_run: dict[str, str] | None = None


class State(_Model):
    version: int = STATE_VERSION
    tag: str
    branch: str
    start_commit: str
    phase: Phase = Phase.IDLE
    incumbent: Point | None = None
    best: Point | None = None
    baseline: Point | None = None
    experiments: int = 0  # rows logged, the baseline included
    consecutive_crashes: int = 0
    cost_usd: float = 0.0
    tokens_used: int = 0
    started_at: float  # epoch seconds when the loop began (wall-clock budget)
    runs: int = 0  # eval runs started (names the log files)
    stage: int = 0
    stage_started_experiments: int = 0
    stage_started_at: float | None = None
    stage_started_cost: float = 0.0
    harness: str | None = None
    pending: Pending | None = None
    baseline_failed: str | None = None  # why the baseline could not be measured, and what to do
    config_note: str | None = None  # a config change adopted between runs, for the next ledger row
    git_code_config: str | None = None  # watch.code_config_digest when the last server ran


def state_path(root: Path) -> Path:
    return root / STATE_DIR / STATE_FILE


def load_state(root: Path) -> State | None:
    """The persisted state, or None before the first start. Raises IntegrityError when the
    file was not written by this server with this user's key, or is gone while the ledger
    shows an experiment under way."""
    path = state_path(root)
    if not path.exists():
        _refuse_if_deleted(root)
        return None
    try:
        payload = json.loads(path.read_bytes())
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise IntegrityError(
            f"{STATE_REL} is not the JSON object the server writes (edited by hand, or by the eval). The server "
            f"will not guess the state. Restore the {STATE_REL} the server wrote. {_GIVE_UP}",
            [STATE_REL],
        )
    verdict = auth.unseal(payload, _PURPOSE)
    if verdict is not auth.Verdict.OK:
        raise IntegrityError(
            f"{auth.explain(STATE_REL, verdict)}. The server will not guess which state is right. Restore the "
            f"{STATE_REL} the server wrote. {_GIVE_UP}",
            [STATE_REL],
        )
    try:
        return State.model_validate(payload)
    except ValidationError as e:  # signed by this key, so written by another version of the server
        raise IntegrityError(f"{STATE_REL} is signed but not a state this version reads: {e}. {_GIVE_UP}") from None


def _refuse_if_deleted(root: Path) -> None:
    """Without a state a start begins afresh (budget and wall clock reset), which is only right
    when no experiment was logged: the ledger moves with the state on a change of tag."""
    ledger = root / EXPERIMENTS_JSONL
    if ledger.exists() and ledger.stat().st_size > 0:
        raise IntegrityError(
            f"{STATE_REL} is missing, but {EXPERIMENTS_JSONL} holds experiments: the state was deleted (by hand, "
            f"or by the eval), and starting afresh would reset the budget. Restore the {STATE_REL} the server "
            f"wrote. {_GIVE_UP}",
            [STATE_REL],
        )


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write via a temp file in the same directory and rename it over `path`. With `durable`
    (the default) the file and the directory are fsync'd too; without, the write survives a
    killed process but not a power cut: only for states a restart can redo."""
    # One temp name per writer (process and thread): no random name to make, nothing shared.
    # Made afresh (O_EXCL): whatever a killed writer left under the name (or anyone planted, a
    # FIFO or a link) is removed first, never opened.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, flags, 0o600)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if not durable:
        return
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_state(root: Path, state: State, durable: bool = True) -> None:
    """Write the state, signed with the user's key (created on the first save)."""
    payload = auth.seal(state.model_dump(mode="json"), _PURPOSE)
    atomic_write(state_path(root), json.dumps(payload, indent=1).encode(), durable)
