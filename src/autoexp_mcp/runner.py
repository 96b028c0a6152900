"""The eval subprocess: start, stream to a capped log, time out, kill the whole process group.

Output goes through a pipe into `CappedLog`, which writes the head to disk and keeps only a
bounded tail in memory, so an eval that prints gigabytes costs neither disk nor memory.
On Linux the server makes itself a child subreaper, so every orphaned descendant of an eval,
however detached (setsid, double fork, clean environment, no fd of the eval), becomes our child:
after the run, our children in a session other than ours that started after the eval are its
leftovers, killed and reaped without scanning /proc. Elsewhere (or if prctl fails), every eval
carries `AUTOEXP_RUN_ID` in its environment, so processes that left the group are found and
killed by a scan of /proc; so are those that dropped their environment but still hold the eval's
output pipe.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
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
METRIC_WINDOW = 1024 * 1024  # the first and last bytes of the output kept in memory for the metrics
METRIC_FD_VAR = "AUTOEXP_METRIC_FD"
CHUNK = 64 * 1024
MARKER_VAR = "AUTOEXP_RUN_ID"
PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
PR_SET_DUMPABLE = 4
REAP_WAIT_S = 2.0  # how long a sweep waits for its killed leftovers to exit (one stuck in D state is given up)
SWEEP_ROUNDS = 100  # killing a leftover hands its own children to us: sweep again, at most this often

log = logging.getLogger("autoexp_mcp")

RunStatus = Literal["done", "crash", "timeout"]


class CappedLog:
    """A log file holding at most `limit` bytes: the head, an omission line, and the tail.

    The file is only a record for people: what the server measures comes from memory (the
    first and last `METRIC_WINDOW` bytes it received), never from the file read back, since an
    eval without a sandbox could rewrite the file while it runs. The file is created fresh
    (`fd`, from fsafe.create_beneath: no symlink followed) and read back only through that fd.
    """

    def __init__(self, path: Path, limit: int, fd: int | None = None) -> None:
        self.path = path
        self.tail_limit = min(TAIL_KEEP_BYTES, limit // 2)
        self.head_limit = limit - self.tail_limit
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._f = os.fdopen(fd, "w+b")
        self._head_written = 0
        self._tail: deque[bytes] = deque()
        self._tail_len = 0
        self._mem_head = bytearray()  # the first METRIC_WINDOW bytes received
        self._mem_tail: deque[bytes] = deque()  # the last METRIC_WINDOW bytes (at least) received
        self._mem_tail_len = 0
        self.total = 0
        self._lock = threading.Lock()

    @property
    def truncated(self) -> bool:
        return self.total > self.head_limit + self.tail_limit

    def write(self, data: bytes) -> None:
        with self._lock:
            self.total += len(data)
            self._remember(data)
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

    def _remember(self, data: bytes) -> None:
        room = METRIC_WINDOW - len(self._mem_head)
        if room > 0:
            self._mem_head += data[:room]
        self._mem_tail.append(data)
        self._mem_tail_len += len(data)
        while self._mem_tail_len - len(self._mem_tail[0]) >= METRIC_WINDOW:
            self._mem_tail_len -= len(self._mem_tail.popleft())

    def received(self) -> bytes:
        """What the metrics are read from: all of the output when it is at most two windows
        long, else its first and last window joined by a newline."""
        with self._lock:
            tail = b"".join(self._mem_tail)
            if self.total <= 2 * METRIC_WINDOW:
                return bytes(self._mem_head) + tail[len(tail) - (self.total - len(self._mem_head)) :]
            return bytes(self._mem_head) + b"\n" + tail[-METRIC_WINDOW:]

    def tail_bytes(self, n: int) -> bytes:
        """The last `n` bytes received (from memory)."""
        with self._lock:
            tail = b"".join(self._mem_tail)
            return tail[-n:]

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


class Channel:
    """The metric channel: a pipe whose write end only the eval's first process gets (as
    AUTOEXP_METRIC_FD); what arrives is kept in memory, at most METRIC_WINDOW bytes."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()  # both close-on-exec; pass_fds hands on the write end
        self._data = bytearray()
        self._thread = threading.Thread(target=self._drain, name="eval-metric-channel", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.read_fd, CHUNK)
            except OSError:
                break
            if not chunk:
                break
            room = METRIC_WINDOW - len(self._data)
            if room > 0:
                self._data += chunk[:room]

    def close_write(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.write_fd)

    def finish(self, timeout: float) -> bytes:
        """The bytes received, once every holder of the write end has closed it (or `timeout`)."""
        self.close_write()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            with contextlib.suppress(OSError):
                os.close(self.read_fd)
        return bytes(self._data)


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
    log_fd: int | None = None  # the log, already created without following symlinks (fsafe)
    metric_channel: bool = False  # give the eval AUTOEXP_METRIC_FD


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    returncode: int | None
    elapsed_s: float
    log_path: Path
    truncated: bool
    output_bytes: int
    error: str | None = None
    output: bytes = b""  # what the server received (see CappedLog.received): the metrics come from here
    channel: bytes = b""  # what arrived on the metric channel


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


# --- leftovers of a run, as our own children (Linux child subreaper) --------------------------------

_subreaper: bool | None = None  # None until the first eval; then whether prctl succeeded
_children_files = False  # whether the kernel lists each thread's children (CONFIG_PROC_CHILDREN)
# Main pids of running evals: our children in sessions of their own that no sweep may touch
# (and whose status belongs to their Popen). Guarded, with every sweep, by _sweep_lock.
_live_evals: set[int] = set()
_sweep_lock = threading.Lock()


def _become_subreaper() -> bool:
    """Once per process (under `_sweep_lock`): adopt every orphaned descendant, so an eval's
    detached descendants come to us. Never raises; False keeps the /proc-scan clean-up."""
    global _subreaper, _children_files
    if _subreaper is None:
        _subreaper = False
        if sys.platform.startswith("linux") and os.path.exists("/proc/self/stat"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
            except (OSError, AttributeError):
                pass
            _children_files = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
            if not _subreaper:
                log.info("cannot become a child subreaper; eval leftovers are found by scanning /proc")
    return _subreaper


def make_undumpable() -> bool:
    """Make this process non-dumpable (Linux): processes of the same user, an eval's among them,
    can then neither read /proc/<pid>/environ, mem or fds nor ptrace us. Children get the
    default again at exec. Returns whether it worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def _read(path: str) -> bytes:
    """A small /proc file, without the cost of a buffered file object (this runs after every eval)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, CHUNK)]
        while chunks[-1]:
            chunks.append(os.read(fd, CHUNK))
        return b"".join(chunks)
    finally:
        os.close(fd)


def _stat(pid: int | str) -> list[bytes]:
    """The fields of /proc/PID/stat from field 3 (state) on: parsed after the last ')', since the
    command name may hold spaces and parentheses. Field N is at index N - 3."""
    data = _read(f"/proc/{pid}/stat")
    return data[data.rindex(b")") + 2 :].split()


def _boot_ticks() -> int:
    """Now, in the clock ticks since boot that /proc/PID/stat gives start times in."""
    return int(float(_read("/proc/uptime").split()[0]) * os.sysconf("SC_CLK_TCK"))


def _children() -> list[int]:
    """Our own children: from every thread's children list (an orphan is handed to any of our
    threads), or, where the kernel keeps no such lists, from every process's parent pid."""
    found: list[int] = []
    if _children_files:
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that has just ended
                found += (int(pid) for pid in _read(f"/proc/self/task/{tid}/children").split())
        return found
    me = str(os.getpid()).encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if _stat(entry)[1] == me:
                    found.append(int(entry))
    return found


def _reap(pid: int, timeout: float) -> bool:
    """Collect the status of our exited child `pid`, waiting at most `timeout` s for it to exit.
    This pid only: waitpid(-1) would steal the status of some Popen's child."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True  # already collected
    except (AttributeError, OSError):
        fd = -1
    try:
        if fd >= 0:
            poller = select.poll()
            poller.register(fd, select.POLLIN)  # readable once the process has exited
            poller.poll(max(0, int(timeout * 1000)))
        else:
            deadline = time.monotonic() + timeout
            while os.waitpid(pid, os.WNOHANG)[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.005)  # no pidfd (Linux < 5.3): a bounded poll
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True  # collected meanwhile
    finally:
        if fd >= 0:
            os.close(fd)


def reap_leftovers(since: int) -> int:
    """SIGKILL and reap what an eval started at `since` (clock ticks since boot) left behind: our
    children in a session other than ours (every eval descendant lives in the eval's new session
    or a newer one; the git commands we run share ours) that started no earlier than the eval,
    zombies included. Returns how many. Only meaningful once we are a child subreaper."""
    our_session = os.getsid(0)
    stuck: set[int] = set()
    found = 0
    with _sweep_lock:
        deadline = time.monotonic() + REAP_WAIT_S
        for _ in range(SWEEP_ROUNDS):
            leftovers = []
            for pid in _children():
                if pid in _live_evals or pid in stuck:
                    continue
                with contextlib.suppress(OSError, ValueError, IndexError):
                    fields = _stat(pid)
                    if int(fields[3]) != our_session and int(fields[19]) >= since:
                        leftovers.append(pid)
            if not leftovers:
                break
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):  # our unreaped child: its pid is not reused
                    os.kill(pid, signal.SIGKILL)
            for pid in leftovers:  # each exit hands the leftover's children to us, for the next round
                if not _reap(pid, deadline - time.monotonic()):
                    stuck.add(pid)
                    log.warning("eval leftover %d did not exit within %.0f s of SIGKILL; left behind", pid, REAP_WAIT_S)
            found += len(leftovers)
    return found


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
        self.log = CappedLog(spec.log_path, spec.max_log_bytes, spec.log_fd)
        self._done = threading.Event()
        self._outcome: RunOutcome | None = None
        self._started = time.monotonic()
        env = dict(spec.env)
        env[MARKER_VAR] = spec.run_id
        self.channel = Channel() if spec.metric_channel else None
        pass_fds: tuple[int, ...] = ()
        if self.channel is not None:
            env[METRIC_FD_VAR] = str(self.channel.write_fd)
            pass_fds = (self.channel.write_fd,)
        # No sweep may see the new eval before it is spared as a running one.
        try:
            with _sweep_lock:
                # The eval's start time bounds what its sweep kills: one tick early if we cannot
                # read it from /proc (it cannot have been reaped yet, so this is a safety net).
                floor = _boot_ticks() - 1 if _become_subreaper() else None
                self.proc = subprocess.Popen(
                    list(spec.argv),
                    cwd=spec.cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_limits(spec.cpu_seconds, spec.memory_mb),
                    pass_fds=pass_fds,
                )
                _live_evals.add(self.proc.pid)
        except (FileNotFoundError, PermissionError, NotADirectoryError) as e:
            if self.channel is not None:
                self.channel.finish(0)
            self.log.write(f"autoexp: cannot start {spec.argv[0]!r}: {e}\n".encode())
            self.log.close()
            reason = "command not found" if isinstance(e, FileNotFoundError) else str(e)
            raise EvalError(
                f"cannot start the eval command {spec.argv[0]!r}: {reason}. Check [experiment].eval "
                "in autoexp.toml and that the program is on PATH."
            ) from None
        if self.channel is not None:
            self.channel.close_write()  # the eval holds it now: EOF comes when the eval's copies close
        # Set when we are a child subreaper: the eval's start, in clock ticks since boot.
        self._since: int | None = floor
        if floor is not None:
            with contextlib.suppress(OSError, ValueError, IndexError):
                self._since = int(_stat(self.proc.pid)[19])
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
        with _sweep_lock:
            _live_evals.discard(self.proc.pid)  # reaped by the wait above
        # Grandchildren left in the group (or escaped from it with setsid, daemonised or
        # not) must not outlive the run; killing them also closes any copy of the pipe.
        self._killpg(signal.SIGKILL)
        if self._since is not None:
            reap_leftovers(self._since)  # however detached, they are all our children by now
        else:
            kill_marked(self.spec.run_id)
        self._reader.join(PIPE_EOF_S)
        # Something still holds the pipe: find it by its fds (twice, for one that forked meanwhile).
        for _ in range(2):
            if not self._reader.is_alive():
                break
            self._kill_leftovers(marked=self._since is None)
            self._reader.join(READER_JOIN_S)
        with self._pipe_lock, contextlib.suppress(OSError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        # Every process of the run is gone by now, so the channel's EOF is immediate.
        channel = self.channel.finish(READER_JOIN_S) if self.channel is not None else b""
        output = self.log.received()
        self.log.close()
        self._outcome = RunOutcome(
            status=status,
            returncode=rc,
            elapsed_s=round(elapsed, 3),
            log_path=self.spec.log_path,
            truncated=self.log.truncated,
            output_bytes=self.log.total,
            output=output,
            channel=channel,
        )
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the run has finished and its log is closed."""
        return self._done.wait(timeout)

    @property
    def outcome(self) -> RunOutcome | None:
        return self._outcome

    def _kill_leftovers(self, *, marked: bool) -> None:
        self._killpg(signal.SIGKILL)
        if marked:
            kill_marked(self.spec.run_id)
        if self._since is not None:
            reap_leftovers(self._since)
        with self._pipe_lock:
            if self.proc.stdout is not None and not self.proc.stdout.closed:
                kill_pipe_holders(self._pipe_ino)

    def kill(self) -> None:
        """Stop the run now (server shutdown): the whole group, then anything carrying the marker,
        our children the run left, or anything holding the output pipe. The marker scan stays
        here: the server may exit before the run's own sweep, and its orphans would go to init."""
        if self._done.is_set():
            return
        self._kill_leftovers(marked=True)

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
