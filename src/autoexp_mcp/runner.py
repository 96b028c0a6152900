"""The eval subprocess: start, stream to a capped log, time out, kill the whole process group.

Output goes through a pipe into `CappedLog`, which writes the head to disk and keeps only a
bounded tail in memory, so an eval that prints gigabytes costs neither disk nor memory.
Every eval carries `AUTOEXP_RUN_ID` in its environment, so processes that left the group
(setsid, daemonised grandchildren) are still found and killed; so are those that also dropped
their environment but still hold the eval's output pipe.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import EvalError

EVAL_GRACE_S = 2.0  # between SIGTERM and SIGKILL of the eval's process group
PIPE_EOF_S = 0.05  # after the group is killed, how long EOF on the output pipe may take
READER_JOIN_S = 2.0  # how long to wait for the output pipe to drain after the eval exits
TAIL_KEEP_BYTES = 1024 * 1024  # tail of a runaway log kept in memory (and written at the end)
CHUNK = 64 * 1024
MARKER_VAR = "AUTOEXP_RUN_ID"

RunStatus = Literal["done", "crash", "timeout"]


class CappedLog:
    """A log file holding at most `limit` bytes: the head, an omission line, and the tail."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.tail_limit = min(TAIL_KEEP_BYTES, limit // 2)
        self.head_limit = limit - self.tail_limit
        self._f = path.open("wb")
        self._head_written = 0
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self.total = 0
        self._lock = threading.Lock()

    @property
    def truncated(self) -> bool:
        return self.total > self.head_limit + self.tail_limit

    def write(self, data: bytes) -> None:
        with self._lock:
            self.total += len(data)
            room = self.head_limit - self._head_written
            if room > 0:
                self._f.write(data[:room])
                self._f.flush()
                self._head_written += min(room, len(data))
                data = data[room:]
            if data:
                self._tail.append(data)
                self._tail_len += len(data)
                while self._tail_len - len(self._tail[0]) >= self.tail_limit:
                    self._tail_len -= len(self._tail.popleft())

    def tail_bytes(self, n: int) -> bytes:
        """The last `n` bytes written (from memory past the head, else from the file)."""
        with self._lock:
            if self._tail:
                return b"".join(self._tail)[-n:]
            if not self._f.closed:
                self._f.flush()
        with self.path.open("rb") as f:
            f.seek(max(0, self._head_written - n))
            return f.read(n)

    def close(self) -> None:
        with self._lock:
            if self._f.closed:
                return
            if self._tail:
                tail = b"".join(self._tail)[-self.tail_limit :]
                omitted = self.total - self._head_written - len(tail)
                if omitted > 0:
                    self._f.write(f"\n[autoexp: {omitted} bytes of output omitted]\n".encode())
                self._f.write(tail)
            self._f.close()


@dataclass(frozen=True)
class RunSpec:
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    timeout_s: float
    log_path: Path
    max_log_bytes: int
    run_id: str
    cpu_seconds: int | None = None
    memory_mb: int | None = None


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    returncode: int | None
    elapsed_s: float
    log_path: Path
    truncated: bool
    output_bytes: int
    error: str | None = None


def _limits(cpu_seconds: int | None, memory_mb: int | None):
    if cpu_seconds is None and memory_mb is None:
        return None

    def apply() -> None:  # runs in the child between fork and exec
        import resource

        if cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
        if memory_mb is not None:
            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _kill_processes_where(matches: Callable[[Path], bool]) -> int:
    """SIGKILL every other process whose /proc entry `matches`. Linux only (0 elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return 0
    me = os.getpid()
    killed = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            hit = matches(entry)
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if hit:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
    return killed


def kill_marked(run_id: str) -> int:
    """SIGKILL every process whose environment carries this run's marker."""
    needle = f"{MARKER_VAR}={run_id}".encode()
    return _kill_processes_where(lambda entry: needle in (entry / "environ").read_bytes().split(b"\0"))


def kill_pipe_holders(pipe_ino: int) -> int:
    """SIGKILL every other process holding an end of this pipe: eval descendants that dropped
    their environment (so carry no marker) and left the group, but still hold the eval's
    output."""
    needle = f"pipe:[{pipe_ino}]"

    def holds(entry: Path) -> bool:
        for fd in os.listdir(entry / "fd"):
            with contextlib.suppress(OSError):
                if os.readlink(entry / "fd" / fd) == needle:
                    return True
        return False

    return _kill_processes_where(holds)


def _wait_exact(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """`proc.wait(timeout)` without Popen's polling loop: a pidfd wakes us when the process exits."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(0, int(timeout * 1000))):
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait()


class EvalProcess:
    """One run of the eval command. Thread-safe; `wait` may be called from any thread."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.log = CappedLog(spec.log_path, spec.max_log_bytes)
        self._done = threading.Event()
        self._outcome: RunOutcome | None = None
        self._started = time.monotonic()
        env = dict(spec.env)
        env[MARKER_VAR] = spec.run_id
        try:
            self.proc = subprocess.Popen(
                list(spec.argv),
                cwd=spec.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_limits(spec.cpu_seconds, spec.memory_mb),
            )
        except (FileNotFoundError, PermissionError, NotADirectoryError) as e:
            self.log.write(f"autoexp: cannot start {spec.argv[0]!r}: {e}\n".encode())
            self.log.close()
            reason = "command not found" if isinstance(e, FileNotFoundError) else str(e)
            raise EvalError(
                f"cannot start the eval command {spec.argv[0]!r}: {reason}. Check [experiment].eval "
                "in autoexp.toml and that the program is on PATH."
            ) from None
        assert self.proc.stdout is not None
        self._pipe_ino = os.fstat(self.proc.stdout.fileno()).st_ino
        # Held while looking for the pipe's holders, and to close it: a closed pipe's inode
        # number may be reused by a stranger's pipe.
        self._pipe_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"eval-{spec.run_id}-out", daemon=True)
        self._reader.start()
        self._waiter = threading.Thread(target=self._wait, name=f"eval-{spec.run_id}", daemon=True)
        self._waiter.start()

    @property
    def elapsed_s(self) -> float:
        if self._outcome is not None:
            return self._outcome.elapsed_s
        return time.monotonic() - self._started

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except OSError:
                break
            if not chunk:
                break
            self.log.write(chunk)

    def _killpg(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _wait(self) -> None:
        status: RunStatus
        try:
            rc = _wait_exact(self.proc, self.spec.timeout_s)
            status = "done" if rc == 0 else "crash"
        except subprocess.TimeoutExpired:
            self._killpg(signal.SIGTERM)
            try:
                self.proc.wait(timeout=EVAL_GRACE_S)
            except subprocess.TimeoutExpired:
                self._killpg(signal.SIGKILL)
                self.proc.wait()
            rc, status = self.proc.returncode, "timeout"
        elapsed = time.monotonic() - self._started
        # Grandchildren left in the group (or escaped from it with setsid, daemonised or
        # not) must not outlive the run; killing them also closes any copy of the pipe.
        self._killpg(signal.SIGKILL)
        kill_marked(self.spec.run_id)
        self._reader.join(PIPE_EOF_S)
        # Something still holds the pipe: find it by its fds (twice, for one that forked meanwhile).
        for _ in range(2):
            if not self._reader.is_alive():
                break
            self._kill_leftovers()
            self._reader.join(READER_JOIN_S)
        with self._pipe_lock, contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        self.log.close()
        self._outcome = RunOutcome(
            status=status,
            returncode=rc,
            elapsed_s=round(elapsed, 3),
            log_path=self.spec.log_path,
            truncated=self.log.truncated,
            output_bytes=self.log.total,
        )
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the run has finished and its log is closed."""
        return self._done.wait(timeout)

    @property
    def outcome(self) -> RunOutcome | None:
        return self._outcome

    def _kill_leftovers(self) -> None:
        self._killpg(signal.SIGKILL)
        kill_marked(self.spec.run_id)
        with self._pipe_lock:
            if self.proc.stdout is not None and not self.proc.stdout.closed:
                kill_pipe_holders(self._pipe_ino)

    def kill(self) -> None:
        """Stop the run now (server shutdown): the whole group, then anything carrying the marker
        or holding the output pipe."""
        if self._done.is_set():
            return
        self._kill_leftovers()

    def tail(self, max_bytes: int = 2000) -> str:
        data = self.log.tail_bytes(max_bytes)
        return decode_tail(data, cut=self.log.total > len(data))


def decode_tail(data: bytes, cut: bool = True) -> str:
    """`data` as text; when it was `cut` from a longer output, without its partial first line."""
    text = data.decode("utf-8", errors="replace")
    # Drop a partial first line so the tail starts cleanly.
    if cut and "\n" in text[:-1]:
        first_nl = text.find("\n")
        if first_nl < len(text) - 1 and first_nl < 200:
            text = text[first_nl + 1 :]
    return text


def read_tail(path: Path, max_bytes: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return decode_tail(f.read(), cut=size > max_bytes)
    except OSError:
        return ""


def build_env(
    allow: Sequence[str], extra: Mapping[str, str], source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The eval's environment: allowlisted variables from `source`, plus `extra`."""
    src = os.environ if source is None else source
    env = {k: src[k] for k in allow if k in src}
    env.update(extra)
    return env
