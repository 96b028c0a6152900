"""The eval sandbox (bubblewrap): every property is checked by running wrapped commands for real
in a temp git repository. Without a working bwrap those tests skip with the reason `available()`
gives; the plan checks that need no bwrap always run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp import sandbox
from autoexp_mcp.errors import AutoexpError
from autoexp_mcp.runner import EvalProcess, RunSpec
from autoexp_mcp.sandbox import Plan, SandboxError
from conftest import cmdline_pids, init_repo

AVAIL = sandbox.available()
needs_bwrap = pytest.mark.skipif(not AVAIL.ok, reason=f"no bwrap sandbox here: {AVAIL.detail}")
# The interpreter behind the venv: a venv made under /tmp (as CI does) is hidden by the private /tmp.
PY = os.path.realpath(sys.executable)
RUN_S = 30.0  # bound on any one sandboxed command
GONE_S = 5.0  # how long processes may take to disappear after their sandbox is killed

# Runs inside the sandbox: the outcome of a list of file operations, as JSON on stdout.
OPS = textwrap.dedent(
    """\
    import json, os, sys
    def do(op, path, data=None):
        try:
            if op == "read":
                return "ok:" + open(path).read()
            if op == "write":
                with open(path, "w") as f:
                    f.write(data)
                return "ok"
            if op == "list":
                return "ok:" + ",".join(sorted(os.listdir(path)))
            if op == "mkdir":
                os.mkdir(path)
                return "ok"
        except OSError as e:
            return "error:" + type(e).__name__
    print(json.dumps([do(*op) for op in json.loads(sys.argv[1])]))
    """
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = init_repo(tmp_path / "repo", {"train.py": "x = 1\n", "results.tsv": "secret row\n", "out/.keep": ""})
    (root / ".autoexp").mkdir()
    (root / ".autoexp" / "state.json").write_text("{}")
    return root


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside the repository and outside /tmp (which the sandbox replaces anyway),
    like the server's key directory under ~/.config."""
    d = Path(tempfile.mkdtemp(prefix="autoexp-sandbox-test-", dir="/var/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run(plan: Plan, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    sandbox.prepare(plan)
    return subprocess.run(
        sandbox.wrap(plan, argv), cwd=plan.root, capture_output=True, text=True, timeout=RUN_S, check=False, **kw
    )


def ops(plan: Plan, *operations: tuple[str, ...]) -> list[str]:
    res = run(plan, [PY, "-I", "-c", OPS, json.dumps(operations)])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def py(plan: Plan, code: str, **kw: Any) -> Any:
    """Run `code` in the sandbox; it prints one JSON value."""
    res = run(plan, [PY, "-I", "-c", textwrap.dedent(code)], **kw)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def wait_gone(marker: str) -> list[int]:
    """The processes still carrying `marker`, once none are left or GONE_S has passed."""
    deadline = time.monotonic() + GONE_S
    while (left := cmdline_pids(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


# --- plan checks (no bwrap needed) ------------------------------------------------------------------


def test_prepare_creates_missing_writable_dirs_and_metric_destinations(repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "metric-src"
    src.touch()
    plan = Plan(root=repo, writable=(repo / "cache" / "deep",), files=((src, repo / "metrics.json"),))
    sandbox.prepare(plan)
    assert (repo / "cache" / "deep").is_dir()
    assert (repo / "metrics.json").read_text() == ""
    assert sandbox.wrap(plan, ["true"])[-2:] == ["--", "true"]


@pytest.mark.parametrize("where", ["outside", "root", "relative"])
def test_prepare_refuses_writable_dirs_not_strictly_inside_the_repository(
    repo: Path, tmp_path: Path, where: str
) -> None:
    path = {"outside": tmp_path / "elsewhere", "root": repo, "relative": Path("out")}[where]
    with pytest.raises(SandboxError, match="inside the repository|absolute path"):
        sandbox.prepare(Plan(root=repo, writable=(path,)))
    assert not (tmp_path / "elsewhere").exists()


def test_prepare_refuses_a_writable_dir_through_a_symlink(repo: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (repo / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SandboxError, match="symlink"):
        sandbox.prepare(Plan(root=repo, writable=(repo / "link" / "cache",)))
    assert not (tmp_path / "real" / "cache").exists()
    assert issubclass(SandboxError, AutoexpError)


def test_prepare_refuses_a_metric_file_whose_directory_is_missing(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="does not exist"):
        sandbox.prepare(Plan(root=repo, files=((tmp_path / "src", repo / "nowhere" / "m.json"),)))


def test_wrap_asks_for_prepare_when_a_bound_path_is_missing(repo: Path, tmp_path: Path) -> None:
    src = tmp_path / "metric-src"
    src.touch()
    with pytest.raises(SandboxError, match=r"prepare\(plan\)"):
        sandbox.wrap(Plan(root=repo, files=((src, repo / "metrics.json"),)), ["true"])
    with pytest.raises(SandboxError, match=r"prepare\(plan\)"):
        sandbox.wrap(Plan(root=repo, writable=(repo / "cache",)), ["true"])


def test_wrap_refuses_to_hide_a_directory_holding_the_repository(repo: Path) -> None:
    with pytest.raises(SandboxError, match="holds the repository"):
        sandbox.wrap(Plan(root=repo, hidden=(repo.parent,)), ["true"])


def test_wrap_refuses_a_home_outside_the_private_tmp(repo: Path) -> None:
    with pytest.raises(SandboxError, match="private /tmp"):
        sandbox.wrap(Plan(root=repo, home="/var/tmp/home"), ["true"])


def test_available_says_how_to_install_bwrap_when_it_is_missing(tmp_path: Path) -> None:
    got = sandbox.available(str(tmp_path / "no-such-bwrap"))
    assert not got.ok
    assert "install the package `bubblewrap`" in got.detail
    assert sandbox.available(str(tmp_path / "no-such-bwrap")) is got  # probed once per path


# --- what the wrapped eval gets (bwrap needed) ------------------------------------------------------


@needs_bwrap
def test_available_names_the_working_bwrap() -> None:
    assert AVAIL.detail.startswith("bubblewrap ")
    assert sandbox.available() is AVAIL


@needs_bwrap
@pytest.mark.parametrize("under", ["/tmp", "/var/tmp"])
def test_repository_is_read_only_except_writable_dirs_and_metric_files(
    repo: Path, tmp_path: Path, outside: Path, under: str
) -> None:
    """Under /tmp the sandbox binds the repository again over its private /tmp; elsewhere not."""
    if under == "/var/tmp":
        repo = Path(shutil.move(repo, outside / "repo"))
    src = tmp_path / "server-metric"
    src.write_text("")
    plan = Plan(root=repo, writable=(repo / "out",), files=((src, repo / "metrics.json"),))
    got = ops(
        plan,
        ("write", str(repo / "train.py"), "hacked"),
        ("mkdir", str(repo / "new")),
        ("write", str(repo.parent / "beside-the-repo"), "x"),
        ("write", "/var/tmp/autoexp-sandbox-escape", "x"),
        ("write", str(repo / "out" / "model.bin"), "weights"),
        ("write", str(repo / "metrics.json"), '{"score": 3}'),
        ("read", str(repo / "train.py")),
    )
    assert got[:2] == ["error:OSError"] * 2 and got[3:] == ["error:OSError", "ok", "ok", "ok:x = 1\n"]
    assert (repo / "train.py").read_text() == "x = 1\n"
    assert not (repo / "new").exists() and not (repo.parent / "beside-the-repo").exists()
    assert not Path("/var/tmp/autoexp-sandbox-escape").exists()
    assert (repo / "out" / "model.bin").read_text() == "weights"
    assert src.read_text() == '{"score": 3}'  # the server's file, not the repository's
    assert (repo / "metrics.json").read_text() == ""


@needs_bwrap
def test_a_hidden_path_under_the_private_tmp_is_mounted_over_only_where_it_is_bound_again(
    repo: Path, tmp_path: Path
) -> None:
    """The sandbox's /tmp is a fresh tmpfs: a hidden path there is out of sight without a mount
    of its own, unless something around it is bound again (a virtualenv kept from /tmp)."""
    gone = tmp_path / "key-dir"
    gone.mkdir()
    (gone / "key").write_text("server secret")
    kept = tmp_path / "venv"
    (kept / "secrets").mkdir(parents=True)
    (kept / "secrets" / "token").write_text("server secret")
    plan = Plan(root=repo, keep=(kept,), hidden=(gone, kept / "secrets"))
    argv = sandbox.wrap(plan, ["true"])
    assert str(gone) not in argv and str(kept / "secrets") in argv
    got = ops(
        plan,
        ("read", str(gone / "key")),
        ("list", str(kept / "secrets")),
        ("read", str(kept / "secrets" / "token")),
        ("list", str(kept)),
    )
    assert got[0] == "error:FileNotFoundError" and got[1] == "ok:" and got[2] == "error:FileNotFoundError"
    assert got[3] == "ok:secrets"


@needs_bwrap
def test_hidden_paths_are_invisible_inside_and_outside_the_repository(
    repo: Path, outside: Path, tmp_path: Path
) -> None:
    (outside / "key").write_text("server secret")
    (tmp_path / "key-dir").mkdir()  # under /tmp, which the sandbox replaces anyway: still fine to name
    plan = Plan(root=repo)
    visible = ops(plan, ("read", str(outside / "key")), ("list", str(repo / ".git")))
    assert visible[0] == "ok:server secret" and "HEAD" in visible[1]  # so the checks below can fail

    hidden = (
        repo / ".git",
        repo / ".autoexp",
        repo / "results.tsv",
        outside,
        repo / "missing.tsv",
        tmp_path / "key-dir",
    )
    got = ops(
        Plan(root=repo, hidden=hidden),
        ("list", str(repo / ".git")),
        ("list", str(repo / ".autoexp")),
        ("read", str(repo / "results.tsv")),
        ("write", str(repo / "results.tsv"), "forged"),
        ("list", str(outside)),
        ("read", str(outside / "key")),
        ("write", str(repo / ".autoexp" / "state.json"), "{}"),
        ("read", str(repo / "train.py")),
    )
    assert got[:2] == ["ok:", "ok:"]  # empty
    assert got[2].startswith("error:") and got[3].startswith("error:")
    assert got[4:6] == ["ok:", "error:FileNotFoundError"]
    assert got[6].startswith("error:")  # the empty tmpfs is read-only too
    assert got[7] == "ok:x = 1\n"
    assert (repo / "results.tsv").read_text() == "secret row\n"
    assert (repo / ".autoexp" / "state.json").read_text() == "{}"


@needs_bwrap
def test_private_tmp_home_and_shm_are_empty_and_writable(repo: Path) -> None:
    host_file = Path("/tmp") / f"autoexp-host-{uuid.uuid4().hex}"
    host_file.write_text("host")
    try:
        got = py(
            Plan(root=repo),
            f"""
            import json, os
            home = os.environ["HOME"]
            seen = [os.listdir(home), os.path.exists({str(host_file)!r}), os.environ["TMPDIR"]]
            for d in (home, "/tmp", "/dev/shm"):
                open(os.path.join(d, {host_file.name!r}), "w").write("x")
            print(json.dumps(seen + [home, os.getcwd(), os.listdir("/run")]))
            """,
            env={**os.environ, "TMPDIR": str(repo), "HOME": str(repo)},  # both read-only in there
        )
        assert host_file.read_text() == "host"  # the sandbox wrote its own /tmp
    finally:
        host_file.unlink()
    assert got == [[], False, "/tmp", "/tmp/autoexp-home", str(repo), []]
    assert not (Path("/dev/shm") / host_file.name).exists()


@needs_bwrap
def test_eval_cannot_see_or_signal_the_servers_processes(repo: Path) -> None:
    marker = f"autoexp-neighbour-{uuid.uuid4().hex}"
    neighbour = subprocess.Popen([PY, "-c", "import time; time.sleep(60)", marker])
    try:
        got = py(
            Plan(root=repo),
            f"""
            import json, os
            marker = ({marker[:12]!r} + {marker[12:]!r}).encode()  # in two pieces: not on our own command line
            pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
            seen = [p for p in pids if marker in open(f"/proc/{{p}}/cmdline", "rb").read()]
            try:
                os.kill({neighbour.pid}, 9)
                killed = "killed"
            except ProcessLookupError:
                killed = "no such process"
            print(json.dumps([max(pids), seen, killed, os.getpid()]))
            """,
        )
        assert neighbour.poll() is None
    finally:
        neighbour.kill()
        neighbour.wait()
    most, seen, killed, own = got
    assert seen == [] and killed == "no such process"
    assert most < 10 and own > 1  # its own PID namespace; bwrap's reaper is pid 1


@needs_bwrap
@pytest.mark.parametrize("network", [False, True])
def test_eval_runs_in_namespaces_and_a_session_of_its_own(repo: Path, network: bool) -> None:
    """Its own session: no controlling terminal to push keystrokes into (TIOCSTI)."""
    kinds = ["mnt", "pid", "ipc", "uts", "cgroup", "net"]
    code = f"import json, os; print(json.dumps([os.getsid(0), [os.readlink('/proc/self/ns/' + k) for k in {kinds!r}]]))"
    sid, inside = py(Plan(root=repo, network=network), code)
    outside = [os.readlink(f"/proc/self/ns/{k}") for k in kinds]
    shared = [k for k, i, o in zip(kinds, inside, outside, strict=True) if i == o]
    assert sid == 1  # bwrap's pid 1 called setsid() for the sandbox
    assert shared == (["net"] if network else [])


@needs_bwrap
def test_no_network_but_loopback_unless_asked(repo: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    code = f"""
        import json, socket
        ifaces = [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]]
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
            reached = True
        except OSError:
            reached = False
        print(json.dumps([ifaces, reached]))
        """
    try:
        assert py(Plan(root=repo), code) == [["lo"], False]
        ifaces, reached = py(Plan(root=repo, network=True), code)
    finally:
        listener.close()
    assert reached and "lo" in ifaces


@needs_bwrap
def test_no_capabilities_left_and_the_mounts_stay_put(repo: Path) -> None:
    """Even run by root: without --cap-drop the eval could unmount what hides .git, and root
    without capabilities could still write sysctls were /proc/sys not read-only."""
    got = py(
        Plan(root=repo, hidden=(repo / ".git",)),
        f"""
        import ctypes, json, os
        caps = [line.split()[1] for line in open("/proc/self/status") if line.startswith(("CapEff", "CapPrm"))]
        libc = ctypes.CDLL(None, use_errno=True)
        umount = libc.umount2({str(repo / ".git")!r}.encode(), 0)
        try:
            open("/proc/sys/kernel/hostname", "w").write("sandboxed")
            sysctl = "written"
        except OSError as e:
            sysctl = type(e).__name__
        print(json.dumps([caps, umount, os.listdir({str(repo / ".git")!r}), sysctl]))
        """,
    )
    assert got[:3] == [["0000000000000000"] * 2, -1, []]
    assert got[3] in ("OSError", "PermissionError")


@needs_bwrap
def test_devices_matching_the_globs_are_passed_through(repo: Path) -> None:
    """bwrap's /dev holds only null, zero, full, random, urandom and tty; a GPU would be
    /dev/nvidia*. A harmless device stands in: it is only looked at, never opened."""
    candidates = ["/dev/kmsg", "/dev/loop-control", "/dev/cpu_dma_latency", "/dev/tty1"]
    dev = next((d for d in candidates if os.path.exists(d)), None)
    if dev is None:
        pytest.skip(f"none of {candidates} exists here")
    code = f"""
        import json, os, stat
        print(json.dumps(os.path.exists({dev!r}) and stat.S_ISCHR(os.stat({dev!r}).st_mode)))
        """
    assert py(Plan(root=repo), code) is False
    assert py(Plan(root=repo, devices=(dev[:-1] + "*", "/dev/no-such-device*")), code) is True


@needs_bwrap
def test_environment_and_passed_fds_reach_the_command(repo: Path) -> None:
    r, w = os.pipe()
    try:
        env = {"PATH": os.environ["PATH"], "AUTOEXP_RUN": "7", "AUTOEXP_METRIC_FD": str(w)}
        code = (
            "import os; fd = int(os.environ['AUTOEXP_METRIC_FD']); "
            "os.write(fd, ('score: ' + os.environ['AUTOEXP_RUN']).encode())"
        )
        res = run(Plan(root=repo), [PY, "-I", "-c", code], env=env, pass_fds=(w,))
        os.close(w)
        w = -1
        assert res.returncode == 0, res.stderr
        assert os.read(r, 100) == b"score: 7"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@needs_bwrap
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_an_unprivileged_user_gets_the_same_sandbox(outside: Path) -> None:
    """Users run the server unprivileged: bwrap then builds its own user namespace."""
    repo = init_repo(outside / "repo", {"train.py": "x = 1\n"})
    (repo / "out").mkdir()
    (repo / "out").chmod(0o777)
    plan = Plan(root=repo, writable=(repo / "out",), hidden=(repo / ".git",))
    sandbox.prepare(plan)
    # The shell, not Python: the interpreter may live where nobody may run it (e.g. under /root).
    script = "echo x > out/w; id -u; if [ -w train.py ]; then echo writable; else echo read-only; fi; ls -A .git"
    res = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *sandbox.wrap(plan, ["sh", "-c", script])],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=RUN_S,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["65534", "read-only"]
    assert (repo / "out" / "w").stat().st_uid == 65534


@needs_bwrap
def test_available_explains_when_user_namespaces_are_off() -> None:
    """An outer sandbox that forbids user namespaces stands in for a kernel or container
    that does; available() inside it must say so and say what to do."""
    src = Path(sandbox.__file__).resolve().parents[1]
    code = "from autoexp_mcp import sandbox; a = sandbox.available(); print(a.ok); print(a.detail)"
    outer = ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-user"]
    outer += ["--disable-userns", "--uid", "65534", "--gid", "65534", "--unshare-pid", "--die-with-parent"]
    outer += ["--setenv", "PYTHONPATH", str(src), "--", sys.executable, "-c", code]
    res = subprocess.run(outer, capture_output=True, text=True, timeout=RUN_S, check=False)
    if res.returncode != 0:
        pytest.skip(f"cannot build an outer sandbox without user namespaces here: {res.stderr.strip()}")
    ok, detail = res.stdout.split("\n", 1)
    assert ok == "False"
    assert "user namespaces" in detail and "seccomp=unconfined" in detail and "bwrap" in detail


# --- nothing outlives the sandbox -------------------------------------------------------------------

# A child that ignores SIGTERM and a double-forked daemon in a session of its own, each with the
# marker (argv[1]) on its command line; "ready" once both run (each writes a byte to a pipe).
STUBBORN = textwrap.dedent(
    """\
    import os, signal, subprocess, sys, time
    marker = sys.argv[1]
    r, w = os.pipe()
    os.set_inheritable(w, True)
    child = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "os.write(int(sys.argv[2]), b'x'); time.sleep(600)")
    subprocess.Popen([sys.executable, "-c", child, marker, str(w)], pass_fds=(w,))
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", child, marker, str(w)])
        os._exit(0)
    os.wait()
    os.close(w)
    assert len(os.read(r, 1)) + len(os.read(r, 1)) == 2
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(600)
    """
)


def start_stubborn(plan: Plan, marker: str) -> subprocess.Popen[str]:
    sandbox.prepare(plan)
    proc = subprocess.Popen(
        sandbox.wrap(plan, [PY, "-I", "-c", STUBBORN, marker]),
        cwd=plan.root,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    assert len(cmdline_pids(marker)) >= 5  # and, outside the namespace, bwrap's launcher
    return proc


@needs_bwrap
def test_killing_the_process_group_kills_everything_inside(repo: Path) -> None:
    """What the runner does on a timeout: SIGTERM to the group, SIGKILL after a grace period.
    The group holds only the outer bwrap (--new-session); its death takes the namespace down."""
    marker = f"autoexp-stubborn-{uuid.uuid4().hex}"
    proc = start_stubborn(Plan(root=repo), marker)
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert wait_gone(marker) == []
    finally:
        for pid in cmdline_pids(marker):
            os.kill(pid, signal.SIGKILL)
        proc.stdout.close()  # type: ignore[union-attr]


@needs_bwrap
def test_the_sandbox_dies_with_the_server(repo: Path) -> None:
    marker = f"autoexp-orphan-{uuid.uuid4().hex}"
    sandbox.prepare(plan := Plan(root=repo))
    server = textwrap.dedent(
        f"""\
        import os, signal, subprocess
        proc = subprocess.Popen({sandbox.wrap(plan, [PY, "-I", "-c", STUBBORN, marker])!r},
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        print(proc.stdout.readline(), end="", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    try:
        res = subprocess.run([PY, "-I", "-c", server], cwd=repo, capture_output=True, text=True, timeout=RUN_S)
        assert res.stdout == "ready\n" and res.returncode == -signal.SIGKILL
        assert wait_gone(marker) == []
    finally:
        for pid in cmdline_pids(marker):
            os.kill(pid, signal.SIGKILL)


@needs_bwrap
def test_the_sandbox_dies_with_the_thread_that_started_it(repo: Path) -> None:
    """PR_SET_PDEATHSIG follows the thread that forked bwrap, not the process: whoever starts
    a sandboxed eval must do it from a thread that outlives the run."""
    marker = f"autoexp-thread-{uuid.uuid4().hex}"
    started: list[subprocess.Popen[str]] = []
    t = threading.Thread(target=lambda: started.append(start_stubborn(Plan(root=repo), marker)))
    t.start()
    t.join(RUN_S)
    proc = started[0]
    try:
        assert proc.wait(timeout=GONE_S) == -signal.SIGKILL
        assert wait_gone(marker) == []
    finally:
        for pid in cmdline_pids(marker):
            os.kill(pid, signal.SIGKILL)
        proc.stdout.close()  # type: ignore[union-attr]


@needs_bwrap
@pytest.mark.slow
def test_runner_timeout_leaves_nothing_running(repo: Path, tmp_path: Path) -> None:
    marker = f"autoexp-timeout-{uuid.uuid4().hex}"
    plan = Plan(root=repo, hidden=(repo / ".git",))
    sandbox.prepare(plan)
    spec = RunSpec(
        argv=sandbox.wrap(plan, [PY, "-I", "-c", STUBBORN, marker]),
        cwd=repo,
        env={"PATH": os.environ["PATH"]},
        timeout_s=2.0,
        log_path=tmp_path / "run.log",
        max_log_bytes=1 << 20,
        run_id=marker,
    )
    proc = EvalProcess(spec)
    try:
        assert proc.wait(RUN_S)
        assert proc.outcome is not None and proc.outcome.status == "timeout"
        assert "ready" in (tmp_path / "run.log").read_text()  # the leftovers existed before the kill
        assert wait_gone(marker) == []
    finally:
        proc.kill()
        for pid in cmdline_pids(marker):
            os.kill(pid, signal.SIGKILL)
