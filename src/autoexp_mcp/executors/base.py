"""What an executor is: something that starts one eval run and hands back the bytes it
printed, how it ended and how long it took. Everything that decides stays in the server.

A local run is an `EvalProcess` (runner.py). A job on a scheduler is a `RemoteRun`: a thread
that follows the job through the scheduler's states with a `Backend` (submit, look, cancel,
read the output), applies the eval's timeout from the moment the job starts running (the
queue wait is counted apart), and cancels the job when the run is stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..errors import EvalError
from ..runner import METRIC_WINDOW, RunOutcome, RunSpec, decode_tail

log = logging.getLogger("autoexp_mcp")

STOP_WAIT_S = 60.0  # after a cancel, how long to wait for the scheduler to say the job ended
LOST_AFTER_S = 120.0  # the scheduler unreachable this long during a run: the run is a crash
FIRST_POLL_S = 0.05  # a trivial job starts and ends within a second on an idle cluster: look early


class RunHandle(Protocol):
    """One run, local or remote, as the measurement sees it."""

    def wait(self, timeout: float | None = None) -> bool: ...

    @property
    def outcome(self) -> RunOutcome | None: ...

    def kill(self) -> None: ...

    def tail(self, max_bytes: int = 2000) -> str: ...


@dataclass(frozen=True)
class JobFacts:
    """What the scheduler told about a run's job: recorded in the ledger row."""

    executor: str  # slurm | ray
    job_id: str
    node: str | None = None
    queue_wait_s: float = 0.0


Phase = Literal["pending", "running", "ended", "unknown"]


@dataclass(frozen=True)
class JobState:
    """One look at a job. `ok` only for an end the run itself chose (exit status 0)."""

    phase: Phase
    node: str | None = None
    returncode: int | None = None
    ok: bool = False
    detail: str = ""  # the scheduler's words: state, reason, exit code
    ran_s: float | None = None  # the scheduler's own count of the eval's run time so far (Slurm)
    waited_s: float | None = None  # the scheduler's own count of the time in its queue (Slurm)
    since_submit_s: float | None = None  # time since the job's submission, by the scheduler's record (Ray)


class Backend(Protocol):
    """The scheduler-specific part of a remote run."""

    name: str

    def look(self, job_id: str) -> JobState:
        """The job's state now. Raises EvalError when the scheduler cannot be asked."""
        ...

    def cancel(self, job_id: str) -> None: ...

    def output(self, job_id: str) -> tuple[bytes, int]:
        """What the metrics are read from (the first and last window of the job's output, see
        `windowed`), and how many bytes of output the job left."""
        ...

    def output_tail(self, job_id: str, n: int) -> bytes: ...


def windowed(data: bytes) -> bytes:
    """What the metrics are read from, as for a local run: the first and last window."""
    if len(data) <= 2 * METRIC_WINDOW:
        return data
    return data[:METRIC_WINDOW] + b"\n" + data[-METRIC_WINDOW:]


def windowed_file(path: os.PathLike[str] | str) -> tuple[bytes, int]:
    """`windowed` of a file's content, reading no more than the two windows; and its size."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= 2 * METRIC_WINDOW:
            return f.read(), size
        head = f.read(METRIC_WINDOW)
        f.seek(size - METRIC_WINDOW)
        return head + b"\n" + f.read(METRIC_WINDOW), size


class RemoteRun:
    """A job on a scheduler, followed from a thread until it ends. `job_id` was returned by
    the backend's submit (or recorded by an earlier server that submitted it)."""

    def __init__(
        self,
        backend: Backend,
        job_id: str,
        spec: RunSpec,
        *,
        poll_s: float,
        channel: Path | None = None,
        attached: bool = False,
    ) -> None:
        self.attached = attached  # started by an earlier server: its clock did not start here
        self.backend = backend
        self.job_id = job_id
        self.spec = spec
        self.poll_s = poll_s
        self.channel_path = channel
        self._submitted = time.monotonic()
        self._started: float | None = None
        self._last_pending = self._submitted  # when the job was last seen waiting in the queue
        self._ran = 0.0  # how long the eval has run so far, as far as the looks tell
        self._waited: float | None = None  # the queue wait, as the scheduler tells it
        self._node: str | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._outcome: RunOutcome | None = None
        self._thread = threading.Thread(target=self._follow, name=f"{backend.name}-{job_id}", daemon=True)
        self._thread.start()

    # --- what the measurement reads ---------------------------------------------------------

    @property
    def facts(self) -> JobFacts:
        wait = self._waited if self._waited is not None else (self._started or time.monotonic()) - self._submitted
        return JobFacts(self.backend.name, self.job_id, self._node, round(max(0.0, wait), 3))

    @property
    def outcome(self) -> RunOutcome | None:
        return self._outcome

    def progress(self) -> str:
        """Where the job is, in words for the agent waiting on it."""
        if self._started is None:
            waited = time.monotonic() - self._submitted
            return (
                f"queued as {self.backend.name} job {self.job_id} for {waited:.0f}s "
                "(time in the queue does not count against the timeout). "
            )
        return f"running as {self.backend.name} job {self.job_id} on {self._node or '?'}. "

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def kill(self) -> None:
        """Cancel the job (the run was cancelled, or the server is stopping)."""
        if not self._done.is_set():
            self._stop.set()
            with contextlib.suppress(EvalError):
                self.backend.cancel(self.job_id)

    def tail(self, max_bytes: int = 2000) -> str:
        try:
            data = self.backend.output_tail(self.job_id, max_bytes + 1)
        except (EvalError, OSError):
            return ""
        return decode_tail(data[-max_bytes:], cut=len(data) > max_bytes)

    # --- following the job --------------------------------------------------------------------

    def _ran_s(self, st: JobState, now: float) -> float:
        """How long the eval has run, never less than the scheduler says: its own count (Slurm's
        RunTime), or for a job an earlier server started, the time since its submission when
        the scheduler keeps no run time (Ray), so a restart never resets the eval's clock."""
        ours = now - self._started if self._started is not None else 0.0
        return max(ours, st.ran_s or 0.0, (st.since_submit_s or 0.0) if self.attached else 0.0)

    def _follow(self) -> None:
        try:
            status, rc, error = self._until_ended()
        except Exception as e:  # never leave the run "running" for ever: a crash, and the job stopped
            log.exception("following %s job %s failed", self.backend.name, self.job_id)
            with contextlib.suppress(Exception):
                self.backend.cancel(self.job_id)
            status, rc, error = "crash", None, f"internal error while following {self.backend.name} job: {e!r}"
        try:
            self._finish(status, rc, error)
        except Exception as e:
            log.exception("reading %s job %s failed", self.backend.name, self.job_id)
            self._outcome = RunOutcome("crash", None, self._ran, self.spec.log_path, False, 0, f"{e!r}")
            self._done.set()

    def _until_ended(self) -> tuple[Literal["done", "crash", "timeout"], int | None, str | None]:
        pause = FIRST_POLL_S
        unreachable_since: float | None = None
        deadline_stop: float | None = None
        timed_out = False
        timeout = self.spec.timeout_s
        while True:
            try:
                st = self.backend.look(self.job_id)
                unreachable_since = None
            except EvalError as e:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > LOST_AFTER_S:
                    self.kill()
                    return "crash", None, f"lost contact with {self.backend.name} for {LOST_AFTER_S:g}s: {e}"
                st = JobState("unknown")
            now = time.monotonic()
            if st.phase == "pending":
                self._last_pending = now
            if st.node:
                self._node = st.node
            if st.waited_s is not None:
                self._waited = st.waited_s
            if st.phase in ("running", "ended") and self._started is None:
                # Between the last look that saw it queued and this one: the middle, unless the
                # scheduler counts the run time itself (then from here, and its count rules).
                self._started = now if st.ran_s is not None else (self._last_pending + now) / 2
            if st.phase in ("running", "ended"):
                self._ran = self._ran_s(st, now)
            if st.phase == "ended":
                # Timed out also when it ended between two looks, or while no server followed it.
                if timed_out or self._ran > timeout:
                    return "timeout", st.returncode, None
                if self._stop.is_set():
                    return "crash", st.returncode, "cancelled"
                if st.ok:
                    return "done", st.returncode, None
                return "crash", st.returncode, f"{self.backend.name} job {self.job_id} {st.detail}"
            if st.phase == "unknown" and unreachable_since is None:
                return "crash", None, f"{self.backend.name} job {self.job_id} {st.detail or 'is unknown'}"
            if st.phase == "running" and not timed_out and self._ran > timeout:
                timed_out = True
                self._stop.set()
                with contextlib.suppress(EvalError):
                    self.backend.cancel(self.job_id)
            if self._stop.is_set():
                deadline_stop = deadline_stop or now + STOP_WAIT_S
                if now > deadline_stop:
                    why = f"{self.backend.name} job {self.job_id} did not end within {STOP_WAIT_S:g}s of its cancel"
                    return ("timeout" if timed_out else "crash"), None, why
                time.sleep(min(pause, 0.2))
            else:
                wait = pause
                if st.phase == "running":  # look again at the timeout, not a poll interval after it
                    wait = min(pause, max(FIRST_POLL_S, timeout - self._ran + FIRST_POLL_S))
                self._stop.wait(wait)
            pause = min(self.poll_s, pause * 1.5)

    def _finish(self, status: Literal["done", "crash", "timeout"], rc: int | None, error: str | None) -> None:
        elapsed = self._ran
        try:
            data, size = self.backend.output(self.job_id)
        except (EvalError, OSError) as e:
            data, size = b"", 0
            if status == "done":
                status, error = "crash", f"cannot read the job's output: {e}"
        channel = b""
        if self.channel_path is not None:
            with contextlib.suppress(OSError):
                channel = self.channel_path.read_bytes()[-METRIC_WINDOW:]
        self._outcome = RunOutcome(
            status=status,
            returncode=rc,
            elapsed_s=round(elapsed, 3),
            log_path=self.spec.log_path,
            truncated=size > self.spec.max_log_bytes // 2,  # the relay kept its head and tail
            output_bytes=size,
            error=error,
            output=data,
            channel=channel,
        )
        self._done.set()
