"""What an executor is: something that starts one eval run and hands back the bytes it
printed, how it ended and how long it took. Everything that decides stays in the server.

A local run is an `EvalProcess` (runner.py). A job on a scheduler is a `RemoteRun`: a thread
that follows the job through the scheduler's states with a `Backend` (submit, look, cancel,
read the output), applies the eval's timeout from the moment the job starts running (the
queue wait is counted apart), and cancels the job when the run is stopped.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ..errors import EvalError
from ..runner import METRIC_WINDOW, RunOutcome, RunSpec, decode_tail

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


class Backend(Protocol):
    """The scheduler-specific part of a remote run."""

    name: str

    def look(self, job_id: str) -> JobState:
        """The job's state now. Raises EvalError when the scheduler cannot be asked."""
        ...

    def cancel(self, job_id: str) -> None: ...

    def output(self, job_id: str) -> bytes:
        """All the output the job printed so far (the metrics come from its first and last window)."""
        ...

    def output_tail(self, job_id: str, n: int) -> bytes: ...


def windowed(data: bytes) -> bytes:
    """What the metrics are read from, as for a local run: the first and last window."""
    if len(data) <= 2 * METRIC_WINDOW:
        return data
    return data[:METRIC_WINDOW] + b"\n" + data[-METRIC_WINDOW:]


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
        submitted: float | None = None,
        channel: Path | None = None,
    ) -> None:
        self.backend = backend
        self.job_id = job_id
        self.spec = spec
        self.poll_s = poll_s
        self.channel_path = channel
        self._submitted = time.monotonic() if submitted is None else submitted
        self._started: float | None = None
        self._last_pending = self._submitted  # when the job was last seen waiting in the queue
        self._node: str | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._outcome: RunOutcome | None = None
        self._thread = threading.Thread(target=self._follow, name=f"{backend.name}-{job_id}", daemon=True)
        self._thread.start()

    # --- what the measurement reads ---------------------------------------------------------

    @property
    def facts(self) -> JobFacts:
        wait = (self._started or time.monotonic()) - self._submitted
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

    def _follow(self) -> None:
        status: Literal["done", "crash", "timeout"] = "crash"
        error: str | None = None
        rc: int | None = None
        pause = FIRST_POLL_S
        unreachable_since: float | None = None
        deadline_stop: float | None = None
        timed_out = False
        while True:
            try:
                st = self.backend.look(self.job_id)
                unreachable_since = None
            except EvalError as e:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > LOST_AFTER_S:
                    error = f"lost contact with {self.backend.name} for {LOST_AFTER_S:g}s: {e}"
                    self.kill()
                    break
                st = JobState("unknown")
            now = time.monotonic()
            if st.phase == "pending":
                self._last_pending = now
            if st.phase == "ended" and self._started is None:  # it ran between two looks
                self._started = self._last_pending
            if st.node:
                self._node = st.node
            if st.phase == "running" and self._started is None:
                self._started = now
            if st.phase == "ended":
                rc = st.returncode
                if timed_out:
                    status = "timeout"
                elif self._stop.is_set():
                    status, error = "crash", "cancelled"
                elif st.ok:
                    status = "done"
                else:
                    status, error = "crash", f"{self.backend.name} job {self.job_id} {st.detail}"
                break
            if st.phase == "unknown" and unreachable_since is None:
                status, error = "crash", f"{self.backend.name} job {self.job_id} {st.detail or 'is unknown'}"
                break
            if self._started is not None and not timed_out and now - self._started > self.spec.timeout_s:
                timed_out = True
                self._stop.set()
                with contextlib.suppress(EvalError):
                    self.backend.cancel(self.job_id)
            if self._stop.is_set():
                deadline_stop = deadline_stop or now + STOP_WAIT_S
                if now > deadline_stop:
                    status = "timeout" if timed_out else "crash"
                    error = f"{self.backend.name} job {self.job_id} did not end within {STOP_WAIT_S:g}s of its cancel"
                    break
            self._stop.wait(pause) if not self._stop.is_set() else time.sleep(min(pause, 0.2))
            pause = min(self.poll_s, pause * 1.5)
        self._finish(status, rc, error)

    def _finish(self, status: Literal["done", "crash", "timeout"], rc: int | None, error: str | None) -> None:
        end = time.monotonic()
        elapsed = end - (self._started or end)
        try:
            data = self.backend.output(self.job_id)
        except (EvalError, OSError) as e:
            data = b""
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
            truncated=False,
            output_bytes=len(data),
            error=error,
            output=windowed(data),
            channel=channel,
        )
        self._done.set()
