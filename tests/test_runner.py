"""The eval subprocess, with real processes: exit status, timeouts, process-group kills, log cap."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp import runner
from autoexp_mcp.config import DEFAULT_ENV_ALLOWLIST
from autoexp_mcp.errors import EvalError
from autoexp_mcp.runner import MARKER_VAR, EvalProcess, RunOutcome, RunSpec, build_env, decode_tail, read_tail

MIB = 1024 * 1024
FINISH_S = 20.0  # upper bound on any single run here; the runs themselves take ~1 s at most
GONE_S = 5.0  # how long a killed process may take to disappear
TIMEOUT_S = 0.75  # eval timeout where one is hit: long enough for Python to start and fork


def spec(tmp_path: Path, code: str, **kw: object) -> RunSpec:
    fields: dict[str, object] = {
        "argv": [sys.executable, "-I", "-S", "-c", textwrap.dedent(code)],  # -I -S: quick start
        "cwd": tmp_path,
        "env": build_env(DEFAULT_ENV_ALLOWLIST, {}),
        "timeout_s": 10.0,
        "log_path": tmp_path / "run.log",
        "max_log_bytes": MIB,
        "run_id": uuid.uuid4().hex,
    }
    fields.update(kw)
    return RunSpec(**fields)  # type: ignore[arg-type]


@contextlib.contextmanager
def started(s: RunSpec) -> Iterator[EvalProcess]:
    p = EvalProcess(s)
    try:
        yield p
    finally:
        p.kill()
        assert p.wait(FINISH_S), "the eval did not finish"


def run(s: RunSpec) -> RunOutcome:
    with started(s) as p:
        assert p.wait(FINISH_S), "the eval did not finish"
        assert p.outcome is not None
        return p.outcome


def is_alive(pid: int) -> bool:
    """True while `pid` runs. A killed orphan may linger as a zombie until init reaps it: that
    counts as gone (it runs no code and holds no resources but its table entry)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_gone(pid: int, within_s: float = GONE_S) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        time.sleep(0.02)  # polling interval of a bounded wait
    return not is_alive(pid)


@contextlib.contextmanager
def reaped_on_failure(*pid_files: Path) -> Iterator[None]:
    """Never leave a stray test process behind, whatever the assertions say."""
    try:
        yield
    finally:
        for pid_file in pid_files:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text())
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


# Forks a grandchild that ignores SIGTERM (optionally in a session of its own, optionally
# detached from the output pipe like a daemon), waits until it has written its pid, then
# either sleeps forever (to be timed out) or exits 0.
FAMILY = """
import os, signal, sys, time
pid_file = {pid_file!r}
pid = os.fork()
if pid == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if {escape}:
        os.setsid()
    if {detach}:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    while True:
        time.sleep(60)
deadline = time.monotonic() + 10
while not os.path.exists(pid_file) and time.monotonic() < deadline:
    time.sleep(0.005)
print("grandchild", pid, flush=True)
if {hang}:
    while True:
        time.sleep(60)
"""


def family(pid_file: Path, *, escape: bool, detach: bool, hang: bool) -> str:
    return FAMILY.format(pid_file=str(pid_file), escape=escape, detach=detach, hang=hang)


# --- exit status ---------------------------------------------------------------------------


def test_exit_zero_is_done_and_output_is_logged(tmp_path: Path) -> None:
    out = run(spec(tmp_path, "print('hello'); print('score: 1.5')"))
    assert out.status == "done"
    assert out.returncode == 0
    assert out.error is None
    assert not out.truncated
    assert out.log_path.read_text() == "hello\nscore: 1.5\n"
    assert out.output_bytes == len("hello\nscore: 1.5\n")


def test_stderr_goes_to_the_same_log(tmp_path: Path) -> None:
    out = run(spec(tmp_path, "import sys; print('out', flush=True); print('err', file=sys.stderr)"))
    assert out.log_path.read_text().splitlines() == ["out", "err"]


def test_nonzero_exit_is_crash_with_returncode(tmp_path: Path) -> None:
    out = run(spec(tmp_path, "import sys; print('Traceback: boom'); sys.exit(3)"))
    assert out.status == "crash"
    assert out.returncode == 3
    assert "Traceback: boom" in out.log_path.read_text()


def test_eval_runs_in_the_given_cwd(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("42")
    out = run(spec(tmp_path, "print(open('data.txt').read())"))
    assert out.log_path.read_text().strip() == "42"


def test_command_not_found_is_a_clear_eval_error(tmp_path: Path) -> None:
    s = spec(tmp_path, "", argv=["autoexp-no-such-command-xyz", "--flag"])
    with pytest.raises(EvalError) as info:
        EvalProcess(s)
    msg = str(info.value)
    assert "'autoexp-no-such-command-xyz'" in msg
    assert "command not found" in msg
    assert "[experiment].eval" in msg
    assert "cannot start" in s.log_path.read_text()


def test_non_executable_command_is_an_eval_error(tmp_path: Path) -> None:
    script = tmp_path / "evaluate.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(EvalError, match="cannot start the eval command"):
        EvalProcess(spec(tmp_path, "", argv=[str(script)]))


# --- timeouts and process-group kills ---------------------------------------------------------


def test_timeout_stops_a_sleeping_eval(tmp_path: Path) -> None:
    started_at = time.monotonic()
    out = run(spec(tmp_path, "import time; print('start', flush=True); time.sleep(60)", timeout_s=0.5))
    assert out.status == "timeout"
    assert out.returncode == -signal.SIGTERM
    assert 0.5 <= out.elapsed_s < 5
    assert time.monotonic() - started_at < 10
    assert out.log_path.read_text() == "start\n"


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "EVAL_GRACE_S", 0.3)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    out = run(spec(tmp_path, code, timeout_s=0.5))
    assert out.status == "timeout"
    assert out.returncode == -signal.SIGKILL


def test_timeout_kills_grandchild_that_ignores_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    with reaped_on_failure(pid_file):
        out = run(spec(tmp_path, family(pid_file, escape=False, detach=False, hang=True), timeout_s=TIMEOUT_S))
        assert out.status == "timeout"
        grandchild = int(pid_file.read_text())
        assert wait_gone(grandchild), f"grandchild {grandchild} survived the timeout"


def test_grandchild_left_in_group_after_normal_exit_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    with reaped_on_failure(pid_file):
        out = run(spec(tmp_path, family(pid_file, escape=False, detach=True, hang=False)))
        assert out.status == "done"
        assert wait_gone(int(pid_file.read_text()))


@pytest.mark.parametrize(
    ("detach", "hang"),
    [(False, False), (True, False), (True, True)],
    ids=["holding-the-pipe", "daemonised", "daemonised-eval-times-out"],
)
def test_grandchild_that_escapes_with_setsid_is_still_killed(tmp_path: Path, detach: bool, hang: bool) -> None:
    pid_file = tmp_path / "grandchild.pid"
    with reaped_on_failure(pid_file):
        started_at = time.monotonic()
        out = run(spec(tmp_path, family(pid_file, escape=True, detach=detach, hang=hang), timeout_s=TIMEOUT_S))
        assert out.status == ("timeout" if hang else "done")
        grandchild = int(pid_file.read_text())
        assert wait_gone(grandchild), f"grandchild {grandchild} escaped with setsid and survived"
        # Killed right away: the run does not first wait READER_JOIN_S for the pipe.
        assert time.monotonic() - started_at < (TIMEOUT_S if hang else 0.0) + runner.READER_JOIN_S


def test_kill_stops_a_running_eval_and_its_family(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    with (
        reaped_on_failure(pid_file),
        started(spec(tmp_path, family(pid_file, escape=True, detach=True, hang=True), timeout_s=30)) as p,
    ):
        deadline = time.monotonic() + FINISH_S
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # polling interval of a bounded wait
        assert not p.wait(0)
        p.kill()
        assert p.wait(FINISH_S)
        assert p.outcome is not None
        assert p.outcome.returncode == -signal.SIGKILL
        assert wait_gone(int(pid_file.read_text()))


def test_elapsed_is_frozen_once_the_run_is_over(tmp_path: Path) -> None:
    with started(spec(tmp_path, "print('quick')")) as p:
        assert p.wait(FINISH_S)
        assert p.outcome is not None
        assert p.elapsed_s == p.outcome.elapsed_s


# --- leftovers of a run, as our own children (child subreaper) ------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux's")

# Imported by the evals below. `detached` forks a daemon the hard way: its own session, no fd
# of its parent, an empty environment (so no group, marker or pipe leads to it); the daemon
# runs this file as `DIR NAME [CHILD...]`: it records its pid in DIR/NAME.pid, starts CHILD...
# the same way, waits for it to record its pid, then stays alive.
DETACH = """
import os, sys, time

def detached(d, *names):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, 65536)
        os.execve(sys.executable, [sys.executable, "-I", "-S", __file__, d, *names], {})
    return pid

def record(d, name):
    path = os.path.join(d, name + ".pid")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)

def wait_for(d, name):
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(d, name + ".pid")) and time.monotonic() < deadline:
        time.sleep(0.005)

if __name__ == "__main__":
    d, name, *rest = sys.argv[1:]
    record(d, name)
    if rest:
        detached(d, *rest)
        wait_for(d, rest[0])
    while True:
        time.sleep(60)
"""


def detach_eval(tmp_path: Path, body: str) -> str:
    """Eval code with `detached`, `record`, `wait_for` and `d` (the pid files' directory) at hand."""
    (tmp_path / "detach.py").write_text(DETACH)
    return f"import os, sys, time\nd = {str(tmp_path)!r}\nsys.path.insert(0, d)\nfrom detach import *\n" + body


def pid_of(tmp_path: Path, name: str) -> int:
    return int((tmp_path / f"{name}.pid").read_text())


def not_our_child(pid: int) -> bool:
    """True when `pid` is no child of ours, not even a zombie waiting to be reaped."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def assert_reaped(*pids: int) -> None:
    assert runner._subreaper, "the server did not become a child subreaper"
    for pid in pids:
        assert not is_alive(pid), f"{pid} outlived the run"
        assert not_our_child(pid), f"{pid} was left to us unreaped"
        assert pid not in runner._children()


# The classic daemon: the eval forks a middle process, which starts the daemon and exits; the
# eval does not wait for the middle one either, so its exit hands us a zombie as well.
DOUBLE_FORK = """
middle = os.fork()
if middle == 0:
    detached(d, "daemon")
    wait_for(d, "daemon")
    os._exit(0)
with open(os.path.join(d, "middle.pid"), "w") as f:
    f.write(str(middle))
wait_for(d, "daemon")
print("daemon up", flush=True)
if {hang}:
    while True:
        time.sleep(60)
"""


@linux_only
@pytest.mark.parametrize("stop", ["run-ends", "killed"])
def test_a_daemonised_grandchild_is_killed_and_reaped_leaving_no_zombie(tmp_path: Path, stop: str) -> None:
    code = detach_eval(tmp_path, DOUBLE_FORK.format(hang=stop == "killed"))
    with reaped_on_failure(tmp_path / "daemon.pid"), started(spec(tmp_path, code, timeout_s=30)) as p:
        if stop == "killed":
            deadline = time.monotonic() + FINISH_S
            while "daemon up" not in p.tail() and time.monotonic() < deadline:
                time.sleep(0.01)  # polling interval of a bounded wait
            p.kill()
        assert p.wait(FINISH_S)
        assert p.outcome is not None
        assert p.outcome.status == ("crash" if stop == "killed" else "done")
        assert_reaped(pid_of(tmp_path, "daemon"), pid_of(tmp_path, "middle"))


@linux_only
def test_a_chain_of_detached_descendants_is_killed_to_the_last(tmp_path: Path) -> None:
    # eval -> A (detached, stays alive) -> B (detached from A): only A is ours when the run ends;
    # B becomes ours once A is killed.
    body = """
    detached(d, "A", "B")
    wait_for(d, "A")
    wait_for(d, "B")
    b = open(os.path.join(d, "B.pid")).read()
    print("parent of B:", open(f"/proc/{b}/stat").read().rsplit(")", 1)[1].split()[1])
    """
    code = detach_eval(tmp_path, textwrap.dedent(body))
    with reaped_on_failure(tmp_path / "A.pid", tmp_path / "B.pid"):
        out = run(spec(tmp_path, code))
        assert out.status == "done"
        a, b = pid_of(tmp_path, "A"), pid_of(tmp_path, "B")
        assert out.log_path.read_text() == f"parent of B: {a}\n"
        assert_reaped(a, b)


@contextlib.contextmanager
def sleeping(new_session: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """A sleeper of our own, killed and waited for at the end whatever happens."""
    argv = [sys.executable, "-I", "-S", "-c", "import time; time.sleep(30)"]
    proc = subprocess.Popen(argv, start_new_session=new_session)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(GONE_S)


@linux_only
def test_the_sweep_spares_our_own_processes_and_older_ones(tmp_path: Path) -> None:
    code = detach_eval(tmp_path, 'detached(d, "daemon")\nwait_for(d, "daemon")\nwait_for(d, "go")\n')
    with (
        sleeping(new_session=True) as older,  # in another session, but older than the eval
        reaped_on_failure(tmp_path / "daemon.pid"),
    ):
        # Start times count in clock ticks (10 ms): "older" means started in an earlier tick.
        older_start = int(runner._stat(older.pid)[19])
        deadline = time.monotonic() + GONE_S
        while runner._boot_ticks() <= older_start + 1 and time.monotonic() < deadline:
            time.sleep(0.002)  # polling interval of a bounded wait for the clock to tick on
        with started(spec(tmp_path, code)) as p, sleeping() as ours:  # ours: started during the eval
            (tmp_path / "go.pid").write_text("")
            assert p.wait(FINISH_S)
            assert_reaped(pid_of(tmp_path, "daemon"))  # the sweep did run
            assert ours.poll() is None, "the sweep killed a process of our own session"
            assert older.poll() is None, "the sweep killed a process older than the eval"
        assert ours.returncode == -signal.SIGKILL  # its status is still its Popen's
    assert older.returncode == -signal.SIGKILL


@linux_only
def test_a_run_without_descendants_sweeps_only_our_children(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []

    def counted(name: str) -> None:
        real = getattr(runner, name)

        def wrapper(arg: Any) -> int:
            n = real(arg)
            calls.append((name, n))
            return n

        monkeypatch.setattr(runner, name, wrapper)

    for name in ("kill_marked", "kill_pipe_holders", "reap_leftovers"):
        counted(name)
    assert run(spec(tmp_path, "print('alone')")).status == "done"
    assert calls == [("reap_leftovers", 0)]  # nothing found, and no scan of all of /proc


@linux_only
@pytest.mark.parametrize("source", ["children-files", "parent-pids"])
def test_our_children_are_listed_from_every_thread(monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    with runner._sweep_lock:
        runner._become_subreaper()
    if source == "children-files" and not runner._children_files:
        pytest.skip("this kernel keeps no /proc/PID/task/TID/children lists")
    monkeypatch.setattr(runner, "_children_files", source == "children-files")
    spawned, listed = threading.Event(), threading.Event()
    box: list[subprocess.Popen[bytes]] = []

    def other_thread() -> None:  # keeps its child in its own children list until listed
        with sleeping() as proc:
            box.append(proc)
            spawned.set()
            listed.wait(FINISH_S)

    thread = threading.Thread(target=other_thread)
    with sleeping() as here:
        thread.start()
        try:
            assert spawned.wait(FINISH_S)
            assert {here.pid, box[0].pid} <= set(runner._children())
        finally:
            listed.set()
            thread.join(FINISH_S)
    assert not {here.pid, box[0].pid} & set(runner._children())


# --- the capped log ----------------------------------------------------------------------------


def test_huge_output_is_capped_to_head_omission_and_tail(tmp_path: Path) -> None:
    code = """
    import sys
    out = sys.stdout.buffer
    out.write(b"FIRST LINE\\n")
    line = b"x" * 1023 + b"\\n"
    block = line * 1024
    for _ in range(50):
        out.write(block)
    out.write(b"score: 0.875\\n")
    """
    s = spec(tmp_path, code, max_log_bytes=MIB)
    with started(s) as p:
        assert p.wait(FINISH_S)
        assert p.tail(100) == "score: 0.875\n"  # from the tail kept in memory, partial line dropped
        out = p.outcome
    assert out is not None
    assert out.status == "done"
    assert out.truncated
    total = 11 + 50 * MIB + 13
    assert out.output_bytes == total
    data = s.log_path.read_bytes()
    assert MIB <= len(data) <= MIB + 200  # the omission line is the only overhead
    assert data.startswith(b"FIRST LINE\n")
    assert data.endswith(b"\nscore: 0.875\n")
    omitted = [ln for ln in data.split(b"\n") if ln.startswith(b"[autoexp:")]
    assert len(omitted) == 1
    assert omitted[0] == f"[autoexp: {total - MIB} bytes of output omitted]".encode()


def test_output_under_the_cap_is_kept_whole(tmp_path: Path) -> None:
    code = "import sys; sys.stdout.write('y' * (200 * 1024) + '\\nscore: 2\\n')"
    s = spec(tmp_path, code, max_log_bytes=MIB)
    out = run(s)
    assert not out.truncated
    assert s.log_path.read_text() == "y" * (200 * 1024) + "\nscore: 2\n"


def test_tail_after_the_run_is_read_from_the_closed_log(tmp_path: Path) -> None:
    with started(spec(tmp_path, "print('a\\nb\\nscore: 3')")) as p:
        assert p.wait(FINISH_S)
        assert p.tail() == "a\nb\nscore: 3\n"
        assert p.tail(9) == "score: 3\n"


def test_decode_tail_drops_the_partial_first_line_of_a_cut_tail() -> None:
    assert decode_tail(b"artial line\nfull line\nlast\n") == "full line\nlast\n"
    assert decode_tail(b"only one line\n") == "only one line\n"
    assert decode_tail(b"\xffbad\nok\n") == "ok\n"
    assert decode_tail(b"first\nsecond\n", cut=False) == "first\nsecond\n"


def test_read_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    tail = read_tail(log, 30)
    assert tail.endswith("line 999\n")
    assert "line 1\n" not in tail
    assert read_tail(tmp_path / "missing.log") == ""


def test_read_tail_of_a_short_log_keeps_its_first_line(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("evaluating crash\nTraceback: boom\n")
    assert read_tail(log) == "evaluating crash\nTraceback: boom\n"


# --- environment, stdin, resource limits --------------------------------------------------------


def test_build_env_passes_only_allowlisted_variables() -> None:
    source = {"PATH": "/bin", "HOME": "/h", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "OPENAI_API_KEY": "k"}
    env = build_env(["PATH", "HOME", "LANG"], {"CUDA_VISIBLE_DEVICES": "0"}, source)
    assert env == {"PATH": "/bin", "HOME": "/h", "CUDA_VISIBLE_DEVICES": "0"}


def test_build_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("AUTOEXP_TEST_SECRET", "nope")
    env = build_env(DEFAULT_ENV_ALLOWLIST, {})
    assert env["PATH"] == "/usr/bin:/bin"
    assert "AUTOEXP_TEST_SECRET" not in env


def test_eval_sees_only_its_environment_and_the_run_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOEXP_TEST_SECRET", "do-not-leak")
    env = build_env(["PATH", "HOME"], {"EXTRA_VAR": "1"})
    s = spec(tmp_path, "import json, os; print(json.dumps(dict(os.environ)))", env=env)
    run(s)
    seen = json.loads(s.log_path.read_text())
    assert "AUTOEXP_TEST_SECRET" not in seen
    assert seen[MARKER_VAR] == s.run_id
    assert seen["EXTRA_VAR"] == "1"
    # Python itself may add LC_CTYPE when coercing the C locale; nothing else appears.
    assert set(seen) - {"LC_CTYPE"} <= {"PATH", "HOME", "EXTRA_VAR", MARKER_VAR}


def test_stdin_is_closed(tmp_path: Path) -> None:
    out = run(spec(tmp_path, "import sys; data = sys.stdin.read(); print('stdin bytes:', len(data))", timeout_s=5))
    assert out.status == "done"
    assert out.log_path.read_text() == "stdin bytes: 0\n"


def test_cpu_seconds_limit_kills_a_busy_loop(tmp_path: Path) -> None:
    out = run(spec(tmp_path, "while True: pass", cpu_seconds=1, timeout_s=15))
    assert out.status == "crash"
    assert out.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    assert out.elapsed_s < 10


def test_memory_mb_limit_stops_a_huge_allocation(tmp_path: Path) -> None:
    code = "b = bytearray(2 * 1024 ** 3); print('allocated')"
    out = run(spec(tmp_path, code, memory_mb=256))
    assert out.status == "crash"
    assert "MemoryError" in out.log_path.read_text()
