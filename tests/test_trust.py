"""The eval cannot forge a result. Each attack is made by the eval's code (the target's code
runs inside it), in the bubblewrap sandbox and, where the defence does not rest on the sandbox,
with `[sandbox] mode = "none"`; each test asserts the outcome: no false keep, nothing written
outside the repository, the run counted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoexp_mcp import sandbox
from autoexp_mcp.errors import ConfigError, DirtyTreeError, GuardError
from autoexp_mcp.loop import Experiment
from conftest import MakeRepo, baseline, baseline_and_close, first_eval, git, harness_config, play, server_env

BWRAP = sandbox.available()
needs_bwrap = pytest.mark.skipif(not BWRAP.ok, reason=f"no sandbox here: {BWRAP.detail}")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "none"]
WAIT_S = 30.0


def sandboxed(mode: str, extra: str = "", **cfg: object) -> str:
    return harness_config(extra=f'\n[sandbox]\nmode = "{mode}"\n' + extra, **cfg)  # type: ignore[arg-type]


def rows(repo: Path) -> list[dict]:
    return [json.loads(line) for line in (repo / "experiments.jsonl").read_text().splitlines()]


# --- the run log and the metric file ---------------------------------------------------------

FORGE_LOG = textwrap.dedent(
    """\
    import os
    value = open("value.txt").read().strip()
    print(f"score: {float(value)}", flush=True)
    if value == "2":  # a worse candidate that rewrites its own run log
        runs = os.path.join(".autoexp", "runs")
        try:
            for name in os.listdir(runs):
                if name.startswith(os.environ["AUTOEXP_RUN"] + "."):
                    with open(os.path.join(runs, name), "w") as f:
                        f.write("score: 1000\\n")
        except OSError as e:
            print("cannot forge:", type(e).__name__)
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_a_run_log_replaced_during_the_run_changes_nothing(make_repo: MakeRepo, mode: str) -> None:
    repo = make_repo("5", config=sandboxed(mode), files={"evaluate.py": FORGE_LOG})
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content="2\n")
        exp.commit("worse, and forge the log")
        view = exp.run_eval(WAIT_S)
        d = exp.decide()
    finally:
        exp.close()
    assert view.metrics == {"score": 2.0}
    assert d.status == "discard"


PLANT_SYMLINK = textwrap.dedent(
    """\
    import os
    value = open("value.txt").read().strip()
    target = os.environ.get("OUTSIDE_FILE", "")
    nxt = os.path.join(".autoexp", "runs", str(int(os.environ["AUTOEXP_RUN"]) + 1) + ".log")
    try:
        os.symlink(target, nxt)
    except OSError as e:
        print("cannot plant:", type(e).__name__)
    print(f"score: {float(value)}")
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_a_symlink_planted_for_the_next_log_is_not_written_through(
    make_repo: MakeRepo, tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside.txt"
    monkeypatch.setenv("OUTSIDE_FILE", str(outside))
    extra = 'env = ["OUTSIDE_FILE"]\n'
    cfg = sandboxed(mode).replace("[[metric]]", extra + "\n[[metric]]", 1)
    repo = make_repo("1", config=cfg, files={"evaluate.py": PLANT_SYMLINK})
    exp = Experiment(repo)
    try:
        baseline(exp)
        assert play(exp, "2") == ("done", "keep")
    finally:
        exp.close()
    assert not outside.exists(), "the server wrote outside the repository"
    log2 = repo / ".autoexp" / "runs" / "2.log"
    assert log2.is_file() and not log2.is_symlink()


METRIC_FILE = textwrap.dedent(
    """\
    import os
    value = open("value.txt").read().strip()
    with open("metrics.json", "w") as f:
        f.write('{"score": %s}' % value)
    print("wrote metrics.json")
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_a_metric_file_is_read_from_this_run(make_repo: MakeRepo, mode: str) -> None:
    cfg = sandboxed(mode).replace('direction = "max"', 'direction = "max"\nfile = "metrics.json"\njson_key = "score"')
    repo = make_repo("3", config=cfg, files={"evaluate.py": METRIC_FILE, ".gitignore": "metrics.json\n"})
    view = first_eval(repo)
    assert view.status == "done", view.reason
    assert view.metrics == {"score": 3.0}


def test_a_metric_file_that_is_a_symlink_is_not_followed(make_repo: MakeRepo, tmp_path: Path) -> None:
    secret = tmp_path / "elsewhere.json"
    secret.write_text('{"score": 1000}')
    evaluate = f"import os\nos.symlink({str(secret)!r}, 'metrics.json')\nprint('planted')\n"
    cfg = sandboxed("none").replace('direction = "max"', 'direction = "max"\nfile = "metrics.json"\njson_key = "score"')
    repo = make_repo("3", config=cfg, files={"evaluate.py": evaluate, ".gitignore": "metrics.json\n"})
    view = first_eval(repo)
    assert view.status == "crash" and "did not write metrics.json" in view.reason


# --- the metric channel ---------------------------------------------------------------------

CHANNEL_HARNESS = textwrap.dedent(
    """\
    # The harness pattern from the README: take the metric fd before running the target's code,
    # run that code in a child that never gets the fd, report the figure on the fd.
    import os, subprocess, sys
    fd = int(os.environ.pop("AUTOEXP_METRIC_FD"))
    out = subprocess.run([sys.executable, "-c", open("value.txt").read()], capture_output=True, text=True)
    print(out.stdout, end="")
    score = float(out.stdout.strip().splitlines()[-1].split()[-1])
    with os.fdopen(fd, "w") as channel:
        channel.write(f"score: {score}\\n")
    """
)
FORGING_TARGET = textwrap.dedent(
    """\
    import os
    print("score: 1000")  # a forged line on the output: not what the server reads
    fd = os.environ.get("AUTOEXP_METRIC_FD")
    if fd:
        os.write(int(fd), b"score: 1000\\n")
    print("real 2")
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_the_metric_channel_ignores_what_the_target_prints(make_repo: MakeRepo, mode: str) -> None:
    cfg = sandboxed(mode).replace('direction = "max"', 'direction = "max"\nchannel = "fd"')
    repo = make_repo("print('real 5')", config=cfg, files={"evaluate.py": CHANNEL_HARNESS})
    exp = Experiment(repo)
    try:
        baseline(exp)
        assert exp.state.incumbent is not None and exp.state.incumbent.metrics == {"score": 5.0}
        exp.write_target(content=FORGING_TARGET)
        exp.commit("forge the figure")
        view = exp.run_eval(WAIT_S)
        d = exp.decide()
    finally:
        exp.close()
    assert view.metrics == {"score": 2.0}
    assert d.status == "discard"


def test_a_channel_metric_that_never_arrives_is_a_crash_that_says_so(make_repo: MakeRepo) -> None:
    cfg = sandboxed("none").replace('direction = "max"', 'direction = "max"\nchannel = "fd"')
    repo = make_repo("1", config=cfg)  # the plain harness prints to stdout only
    view = first_eval(repo)
    assert view.status == "crash" and "AUTOEXP_METRIC_FD" in view.reason


# --- Python bytecode ------------------------------------------------------------------------

PYC_CONFIG = textwrap.dedent(
    """\
    [experiment]
    tag = "pyc"
    target = "train.py"
    eval = "{python} evaluate.py"
    timeout = 20
    wait_seconds = 20

    [[metric]]
    name = "score"
    direction = "max"

    [sandbox]
    mode = "{mode}"
    """
)
PYC_HARNESS = "import scoring, train\nprint(f'score: {scoring.scale(train.score())}')\n"
SCORING = "def scale(x):\n    return x\n"
POISON = textwrap.dedent(
    """\
    import importlib.util, os, py_compile, tempfile
    def score():
        return 1
    # Plant bytecode, valid whatever the source, for an innocent future train.py that says 1000
    # and for the harness's own scoring.py.
    planted = {"train": "def score():\\n    return 1000\\n", "scoring": "def scale(x):\\n    return 1000\\n"}
    for name, code in planted.items():
        src = os.path.join(tempfile.mkdtemp(), name + ".py")
        with open(src, "w") as f:
            f.write(code)
        try:
            os.makedirs("__pycache__", exist_ok=True)
            py_compile.compile(src, cfile=importlib.util.cache_from_source(os.path.abspath(name + ".py")),
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        except OSError as e:
            print("cannot plant:", type(e).__name__)
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_planted_bytecode_is_never_what_gets_measured(make_repo: MakeRepo, mode: str) -> None:
    cfg = PYC_CONFIG.format(python=sys.executable, mode=mode)
    files = {"train.py": "def score():\n    return 2\n", "evaluate.py": PYC_HARNESS, "scoring.py": SCORING}
    repo = make_repo(config=cfg, files=files)
    assert poisoned_then_honest(repo, POISON) == {"score": 3.0}
    assert not list(repo.rglob("*.pyc")), "none written by the runs; what the eval planted is gone"


def poisoned_then_honest(repo: Path, poison: str) -> dict[str, float | None]:
    """The baseline, a candidate whose code plants something, then an honest 3: its metrics."""
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content=poison)
        exp.commit("plant bytecode")
        exp.run_eval(WAIT_S)  # what the target's own code does within its own run is its own
        exp.decide()
        exp.log_result()
        exp.write_target(content="def score():\n    return 3\n")
        exp.commit("an honest 3")
        return exp.run_eval(WAIT_S).metrics
    finally:
        exp.close()


PLANT_ELSEWHERE = textwrap.dedent(
    """\
    import importlib._bootstrap_external as be, importlib.util, os, shutil
    def score():
        return 1
    code = compile("def scale(x):\\n    return 1000\\n", os.path.abspath("{module}"), "exec")
    pyc = be._code_to_hash_pyc(code, b"\\0" * 8, checked=False)  # loaded whatever the source says
    if "{how}" == "symlink":  # __pycache__ as a link to bytecode kept elsewhere
        os.makedirs(".cache-x", exist_ok=True)
        open(".cache-x/" + os.path.basename(importlib.util.cache_from_source("{module}")), "wb").write(pyc)
        shutil.rmtree("__pycache__", ignore_errors=True)
        os.symlink(".cache-x", "__pycache__")
    else:  # where the interpreter looks: the repository's __pycache__, or the allowlisted prefix
        path = importlib.util.cache_from_source(os.path.abspath("{module}"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").write(pyc)
    """
)


@pytest.mark.parametrize("how", ["symlink", "dotted name", "prefix"])
def test_bytecode_an_unsandboxed_run_left_anywhere_python_looks_is_not_loaded(
    make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, how: str
) -> None:
    module = "scoring.v2.py" if how == "dotted name" else "scoring.py"
    harness = PYC_HARNESS
    if how == "dotted name":  # a module file name with a dot, loaded by path
        harness = (
            "import importlib.util as u, train\n"
            "spec = u.spec_from_file_location('scoring', 'scoring.v2.py'); scoring = u.module_from_spec(spec)\n"
            "spec.loader.exec_module(scoring)\nprint(f'score: {scoring.scale(train.score())}')\n"
        )
    cfg = PYC_CONFIG.format(python=sys.executable, mode="none")
    if how == "prefix":  # the user keeps bytecode out of the tree, and passes that on to evals
        monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path / "prefix"))
        cfg = cfg.replace("wait_seconds = 20\n", 'wait_seconds = 20\nenv = ["PYTHONPYCACHEPREFIX"]\n')
    files = {"train.py": "def score():\n    return 2\n", "evaluate.py": harness, module: SCORING}
    repo = make_repo(config=cfg, files=files)
    assert poisoned_then_honest(repo, PLANT_ELSEWHERE.format(module=module, how=how)) == {"score": 3.0}
    assert not (repo / "__pycache__").is_symlink()


@pytest.mark.parametrize("mode", MODES)
def test_bytecode_comes_from_where_no_eval_can_write(make_repo: MakeRepo, mode: str) -> None:
    """The interpreter's own bytecode caches are used, sandboxed or not, so a Python eval starts
    as fast as by hand (an empty PYTHONPYCACHEPREFIX made it compile every module it imported)."""
    harness = "import sys\nprint('prefix', sys.pycache_prefix)\nprint('score: 1')\n"
    cfg = PYC_CONFIG.format(python=sys.executable, mode=mode).replace(" evaluate.py", " -S evaluate.py")
    repo = make_repo(config=cfg, files={"train.py": "x = 1\n", "evaluate.py": harness})
    exp = Experiment(repo)
    try:
        view = exp.run_eval(WAIT_S)
        assert view.status == "done", view.reason
        log = (repo / ".autoexp" / "runs").glob("*.log")
        prefix = next(line for f in log for line in f.read_text().splitlines() if line.startswith("prefix"))
    finally:
        exp.close()
    assert prefix == "prefix None"


@pytest.mark.parametrize("where", ["lib", "lib/"])
def test_tracked_python_code_in_a_writable_dir_is_refused_before_anything_runs(make_repo: MakeRepo, where: str) -> None:
    """A run could leave lib/__pycache__/helper.*.pyc (or helper.*.so, or helper/__init__.py)
    for the next run's `import helper`: no check of the tracked files would see it."""
    harness = "import sys\nsys.path.insert(0, 'lib')\nimport helper\nprint('score:', helper.VALUE)\n"
    cfg = PYC_CONFIG.format(python=sys.executable, mode="auto") + f'writable = ["{where}"]\n'
    repo = make_repo(config=cfg, files={"train.py": "x = 1\n", "evaluate.py": harness, "lib/helper.py": "VALUE = 1\n"})
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(ConfigError, match=r"writable holds Python code \(lib/helper.py\).*Move the code"):
        Experiment(repo)
    assert git(repo, "rev-parse", "HEAD") == head and not (repo / "results.tsv").exists()
    out = subprocess.run(
        [sys.executable, "-m", "autoexp_mcp", "check", "--repo", str(repo)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "writable holds Python code (lib/helper.py)" in out.stdout
    git(repo, "mv", "lib/helper.py", "helper.py")
    git(repo, "commit", "-qm", "code out of the writable dir")
    Experiment(repo).close()


SHADOW_HARNESS = textwrap.dedent(
    """\
    import subprocess, sys
    import data  # the harness's own tracked module: data.py
    out = subprocess.run([sys.executable, "-c", "import train; print(train.answer())"], capture_output=True, text=True)
    answer = (out.stdout.strip().splitlines() or [""])[-1]
    print("score:", 1.0 if answer == data.EXPECTED else 0.0)
    """
)
PLANT_PACKAGE = textwrap.dedent(
    """\
    import os
    def answer():
        return "0"
    try:  # data/ is writable: make it a package that every later `import data` loads
        with open("data/__init__.py", "w") as f:
            f.write("EXPECTED = '7'\\n")
    except OSError as e:
        print("cannot plant:", type(e).__name__)
    """
)


@needs_bwrap
def test_a_writable_dir_made_a_package_by_the_eval_is_a_crash_and_is_removed(make_repo: MakeRepo) -> None:
    """A package dir beats a module of the same name: an eval that leaves data/__init__.py in the
    writable data/ would replace the harness's own data.py for every later run."""
    repo = make_repo(
        config=PYC_CONFIG.format(python=sys.executable, mode="bwrap") + 'writable = ["data"]\n',
        files={
            "train.py": "def answer():\n    return '0'\n",
            "data.py": "EXPECTED = '42'\n",
            "evaluate.py": SHADOW_HARNESS,
        },
    )
    (repo / "data").mkdir()
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content=PLANT_PACKAGE)
        exp.commit("plant a package")
        view = exp.run_eval(WAIT_S)
        assert view.status == "crash" and "data/__init__.py (Python code left in a writable dir" in view.reason
        assert exp.decide().status == "crash"
        exp.log_result()
        assert not (repo / "data" / "__init__.py").exists()
        exp.write_target(content="def answer():\n    return '7'\n")
        exp.commit("a wrong answer")
        assert exp.run_eval(WAIT_S).metrics == {"score": 0.0}, "measured with the harness's own data.py"
    finally:
        exp.close()


def test_a_writable_dir_that_is_already_a_package_or_holds_the_target_is_refused(make_repo: MakeRepo) -> None:
    cfg = PYC_CONFIG.format(python=sys.executable, mode="auto") + 'writable = ["out"]\n'
    repo = make_repo(config=cfg, files={"train.py": "x = 1\n", "evaluate.py": "print('score: 1')\n"})
    (repo / "out").mkdir()
    (repo / "out" / "__init__.py").write_text("")  # untracked, the user's: refused, never deleted
    with pytest.raises(ConfigError, match=r"writable holds Python code \(out/__init__.py\)"):
        Experiment(repo)
    assert (repo / "out" / "__init__.py").exists()
    # The target's own code is no exception: a run could leave its bytecode for every later candidate.
    cfg = PYC_CONFIG.format(python=sys.executable, mode="auto").replace('"train.py"', '"lib/train.py"')
    repo = make_repo(
        config=cfg + 'writable = ["lib"]\n', files={"lib/train.py": "x = 1\n", "evaluate.py": "print('score: 1')\n"}
    )
    with pytest.raises(ConfigError, match=r"writable holds Python code \(lib/train.py\)"):
        Experiment(repo)


@pytest.mark.parametrize("path", ["__pycache__", "src/__pycache__", "out/__pycache__/x"])
def test_a_writable_dir_in_a_bytecode_cache_is_refused(path: str) -> None:
    from autoexp_mcp.config import SandboxConfig

    with pytest.raises(ValueError, match="__pycache__ directory"):
        SandboxConfig(writable=(path,))


# --- spend figures ---------------------------------------------------------------------------


def test_log_result_refuses_huge_costs_and_logs_nothing(make_repo: MakeRepo) -> None:
    repo = make_repo()
    exp = Experiment(repo)
    try:
        exp.run_eval(WAIT_S)
        exp.decide()
        for _ in range(2):
            with pytest.raises(GuardError, match="cost_usd must be a finite number"):
                exp.log_result(cost_usd=1e308)
        with pytest.raises(GuardError, match="tokens_used must be a whole number"):
            exp.log_result(tokens_used=10**15)
        assert not (repo / "experiments.jsonl").exists()
        exp.log_result(cost_usd=0.5)
        assert exp.budget_status().cost_usd == 0.5
    finally:
        exp.close()


# --- the sandbox's view ---------------------------------------------------------------------

LOOK_AROUND = textwrap.dedent(
    """\
    import os, signal
    value = open("value.txt").read().strip()
    seen = {p: os.path.exists(p) and bool(os.listdir(p) if os.path.isdir(p) else os.path.getsize(p))
            for p in (".git", ".autoexp", "results.tsv", "experiments.jsonl", "holdout.py")}
    print("SEEN", sorted(p for p, v in seen.items() if v))
    mine = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                env = open(f"/proc/{pid}/environ", "rb").read()
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if b"SERVER_SECRET=" in env:
                found.append("secret")
            if b"autoexp-mcp" in cmd and int(pid) != mine:
                found.append("server")
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
    print("FOUND", sorted(set(found)))
    try:
        open("written-by-eval.txt", "w").write("x")
        print("WROTE repo")
    except OSError:
        print("READ-ONLY repo")
    print(f"score: {float(value)}")
    """
)


@needs_bwrap
def test_a_sandboxed_eval_sees_no_server_no_secret_no_ledger_and_cannot_write(make_repo: MakeRepo) -> None:
    holdout = "print('score: 1')\n"
    extra = f'\n[holdout]\neval = "{sys.executable} holdout.py"\n'
    repo = make_repo(config=sandboxed("bwrap", extra), files={"evaluate.py": LOOK_AROUND, "holdout.py": holdout})
    # The server here is this process: its environment is what the eval must not read.
    os.environ["SERVER_SECRET"] = "hunter2"
    try:
        exp = Experiment(repo)
        try:
            view = exp.run_eval(WAIT_S)
            tail = view.tail
        finally:
            exp.close()
    finally:
        del os.environ["SERVER_SECRET"]
    assert view.status == "done", view.reason
    assert "SEEN []" in tail
    assert "FOUND []" in tail
    assert "READ-ONLY repo" in tail
    assert not (repo / "written-by-eval.txt").exists()


def test_start_refuses_a_config_rewritten_before_a_restart(make_repo: MakeRepo) -> None:
    repo = make_repo()
    baseline_and_close(repo)
    cfg = (repo / "autoexp.toml").read_text().replace("max_experiments = 50", "max_experiments = 1000")
    (repo / "autoexp.toml").write_text(cfg)  # what an eval wrote just before it killed the server
    with pytest.raises(DirtyTreeError, match="autoexp.toml in the working tree differs"):
        Experiment(repo)
    assert "max_experiments = 1000" in (repo / "autoexp.toml").read_text(), "never silently reset"


# --- a server killed by its eval --------------------------------------------------------------

KILLER = textwrap.dedent(
    """\
    import os, signal
    value = open("value.txt").read().strip()
    if value == "kill":  # an unlucky draw: kill the server before it can log it
        ppid = os.getppid()
        if ppid > 1:
            os.kill(ppid, signal.SIGKILL)
    print(f"score: {float(value) if value != 'kill' else 0.0}")
    """
)


@pytest.mark.slow
def test_a_run_cut_short_by_a_killed_server_is_logged_and_counted(make_repo: MakeRepo) -> None:
    from test_fault_injection import EXIT_S, StdioServer

    repo = make_repo("1", config=sandboxed("none", crashes=2), files={"evaluate.py": KILLER})
    log = repo.parent / f"{repo.name}-server.log"
    server = StdioServer(repo, log)
    server.call("run_eval", wait_seconds=20)
    server.call("decide")
    server.call("log_result")
    for attempt in range(2):
        if attempt:
            server = StdioServer(repo, log)
        server.call("write_target", content="kill\n")
        server.call("commit", description="unlucky draw")
        server.send("tools/call", {"name": "run_eval", "arguments": {"wait_seconds": 20}})
        assert server.proc.wait(EXIT_S) == -9
        server._cleanup()
    server = StdioServer(repo, log)
    try:
        status = server.call("budget_status")
    finally:
        server.close()
    statuses = [r["status"] for r in rows(repo)]
    assert statuses == ["keep", "interrupted", "interrupted"]
    assert status["experiments_used"] == 3 and status["consecutive_crashes"] == 2
    assert status["stop"] is True, "two interrupted runs in a row hit abort_on_consecutive_crashes = 2"
    assert git(repo, "show", "HEAD:value.txt") == "1"


# --- the server's own environment -------------------------------------------------------------

SNOOP = textwrap.dedent(
    """\
    import os
    try:
        env = open(f"/proc/{os.getppid()}/environ", "rb").read()
        print("READ", b"SERVER_SECRET=hunter2" in env)
    except OSError as e:
        print("DENIED", type(e).__name__)
    print("score: 1")
    """
)
SERVER_SCRIPT = textwrap.dedent(
    """\
    import sys
    from autoexp_mcp.loop import Experiment
    from autoexp_mcp.runner import make_undumpable
    if sys.argv[2] == "harden":
        assert make_undumpable()
    exp = Experiment(sys.argv[1])
    try:
        print(exp.run_eval(30).tail)
    finally:
        exp.close()
    """
)


def ordinary_user() -> list[str]:
    """A command prefix that runs a program as an ordinary user would: root gives up every
    capability (same uid, so only dumpability guards the server), anyone else runs as is."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to run without capabilities as root")
    return [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--"]


@pytest.mark.parametrize("harden", [True, False])
def test_an_eval_without_a_sandbox_cannot_read_the_servers_environment(make_repo: MakeRepo, harden: bool) -> None:
    """Made non-dumpable, as `serve` makes itself, the server's environment is out of reach
    of an eval of the same user; the control run without it shows the eval could read it."""
    repo = make_repo(sandbox="none", files={"evaluate.py": SNOOP})
    env = {**server_env(), "SERVER_SECRET": "hunter2", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    argv = [*ordinary_user(), sys.executable, "-c", SERVER_SCRIPT, str(repo), "harden" if harden else "plain"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert ("DENIED PermissionError" if harden else "READ True") in out.stdout, out.stdout


def test_serve_makes_itself_non_dumpable(make_repo: MakeRepo) -> None:
    """A process of the same user (and no more capabilities) cannot read the environment of
    `autoexp-mcp serve`, and can read that of a plain process: the control."""
    from conftest import installed_command

    repo = make_repo()
    hello = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    hello += b'"capabilities":{},"clientInfo":{"name":"t","version":"0"}}}\n'
    server = subprocess.Popen(
        [*ordinary_user(), installed_command(), "serve", "--repo", str(repo)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=server_env(),
    )
    control = subprocess.Popen([*ordinary_user(), sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write(hello)
        server.stdin.flush()
        assert server.stdout.readline(), "the server answers the handshake (so it is serving)"
        probe = "import sys\ntry:\n open(sys.argv[1], 'rb').read(); print('READ')\nexcept OSError: print('DENIED')"
        seen = [
            subprocess.run(
                [*ordinary_user(), sys.executable, "-c", probe, f"/proc/{pid}/environ"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            for pid in (server.pid, control.pid)
        ]
    finally:
        for p in (server, control):
            p.kill()
            p.wait(10)
        for f in (server.stdin, server.stdout):
            f.close()  # type: ignore[union-attr]
    assert seen == ["DENIED", "READ"]


# --- the hold-out ---------------------------------------------------------------------------

HOLDOUT_SLOW = textwrap.dedent(
    """\
    import sys, time
    print("HOLDOUT-SECRET figures follow", flush=True)
    time.sleep(1.5)
    print("score: 0.4217")
    """
)


@pytest.mark.parametrize("mode", MODES)
def test_the_holdout_output_never_reaches_a_tool_result_even_while_it_runs(make_repo: MakeRepo, mode: str) -> None:
    extra = f'\n[holdout]\neval = "{sys.executable} holdout.py"\ntolerance = 1.0\n'
    repo = make_repo("1", config=sandboxed(mode, extra), files={"holdout.py": HOLDOUT_SLOW})
    exp = Experiment(repo)
    seen: list[str] = []
    try:
        view = exp.run_eval(0.3)
        seen.append(view.model_dump_json())
        for _ in range(200):  # bounded: the baseline and its hold-out take about 2 s
            if view.status != "running":
                break
            view = exp.run_eval(0.1)
            seen.append(view.model_dump_json())
        assert view.status == "done"
        seen.append(exp.decide().model_dump_json())
        seen.append(exp.log_result().model_dump_json())
        seen.append(exp.budget_status().model_dump_json())
    finally:
        exp.close()
    assert sum('"running"' in s for s in seen) >= 2, "the hold-out was polled while it ran"
    assert not [s for s in seen if "HOLDOUT-SECRET" in s or "0.4217" in s]
    assert rows(repo)[0]["holdout"]["value"] == 0.4217, "kept for the server, out of every tool result"


FORGE_CONFIG = textwrap.dedent(
    """\
    import os, signal, subprocess
    value = open("value.txt").read().strip()
    if value == "forge":  # commit a bigger budget, then kill the server before it can look
        cfg = open("autoexp.toml").read().replace("max_experiments = 50", "max_experiments = 1000")
        open("autoexp.toml", "w").write(cfg)
        subprocess.run(["git", "-c", "user.name=e", "-c", "user.email=e@x", "commit", "-qam", "more"], check=True)
        os.kill(os.getppid(), signal.SIGKILL)
    print(f"score: {float(value) if value != 'forge' else 0.0}")
    """
)


@pytest.mark.slow
def test_a_config_committed_by_an_eval_that_killed_the_server_is_refused_at_restart(make_repo: MakeRepo) -> None:
    from test_fault_injection import EXIT_S, RpcError, StdioServer

    repo = make_repo("1", config=sandboxed("none"), files={"evaluate.py": FORGE_CONFIG})
    log = repo.parent / f"{repo.name}-server.log"
    server = StdioServer(repo, log)
    server.call("run_eval", wait_seconds=20)
    server.call("decide")
    server.call("log_result")
    server.call("write_target", content="forge\n")
    server.call("commit", description="forge the budget")
    server.send("tools/call", {"name": "run_eval", "arguments": {"wait_seconds": 20}})
    assert server.proc.wait(EXIT_S) == -9
    server._cleanup()
    server = StdioServer(repo, log)
    try:
        res = server.request("tools/call", {"name": "budget_status", "arguments": {}})
    except RpcError as e:
        res = {"isError": True, "content": [{"text": str(e)}]}
    finally:
        server.close()
    assert res.get("isError"), res
    assert "autoexp.toml in the working tree differs" in res["content"][0]["text"]
    assert "git reset --hard" in res["content"][0]["text"]
    assert "max_experiments = 1000" in (repo / "autoexp.toml").read_text(), "never silently reset"


def test_a_filter_planted_in_git_config_while_no_server_ran_is_refused_before_git_runs(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    marker = tmp_path / "filter-ran"
    repo = make_repo()
    baseline_and_close(repo)
    # What an eval without a sandbox could leave before it kills the server.
    git(repo, "config", "filter.x.clean", f"sh -c 'touch {marker}; cat'")
    (repo / ".git" / "info" / "attributes").write_text("* filter=x\n")
    (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text() + "# dirty\n")
    with pytest.raises(GuardError, match="--accept-git-config"):
        Experiment(repo)
    assert not marker.exists(), "no git command ran the filter"
    (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text().replace("# dirty\n", ""))
    git(repo, "config", "--unset", "filter.x.clean")
    (repo / ".git" / "info" / "attributes").unlink()
    Experiment(repo, accept_git_config=True).close()
    Experiment(repo).close()  # accepted once, recorded: the next start is quiet


@pytest.mark.parametrize("path", [".", ".git", ".autoexp/runs"])
def test_the_sandbox_refuses_writable_paths_that_would_open_what_it_hides(path: str) -> None:
    from autoexp_mcp.config import SandboxConfig

    with pytest.raises(ValueError, match="must be a directory inside the repository"):
        SandboxConfig(writable=(path,))


def test_a_writable_directory_holds_the_metric_file_and_what_the_eval_writes(make_repo: MakeRepo) -> None:
    evaluate = "import os\nos.makedirs('out', exist_ok=True)\nopen('out/tmp.json', 'w').write('{\"score\": 4}')\n"
    evaluate += "os.replace('out/tmp.json', 'out/m.json')\nprint('done')\n"  # written by rename: fine in a dir
    extra = '\n[sandbox]\nwritable = ["out"]\n'
    cfg = harness_config(extra=extra).replace(
        'direction = "max"', 'direction = "max"\nfile = "out/m.json"\njson_key = "score"'
    )
    repo = make_repo(config=cfg, files={"evaluate.py": evaluate, ".gitignore": "out/\n"})
    view = first_eval(repo)
    assert view.status == "done", view.reason
    assert view.metrics == {"score": 4.0}


def test_a_harness_that_serves_both_evals_stays_visible_to_the_visible_one(make_repo: MakeRepo) -> None:
    evaluate = "import sys\nv = float(open('value.txt').read())\n"
    evaluate += "print(f'score: {v * (2 if \"--holdout\" in sys.argv else 1)}')\n"
    extra = f'\n[holdout]\neval = "{sys.executable} evaluate.py --holdout"\ntolerance = 1.0\n'
    repo = make_repo("3", config=harness_config(extra=extra), files={"evaluate.py": evaluate})
    view = first_eval(repo)
    assert view.status == "done", view.reason
    assert view.metrics == {"score": 3.0}


@needs_bwrap
def test_a_program_and_a_virtualenv_under_tmp_stay_reachable_in_the_sandbox(
    make_repo: MakeRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox's /tmp is private: what the eval needs from the host's /tmp (its virtualenv,
    a PATH entry: CI's own virtualenv lives there) is bound again, read-only."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    tool = venv / "bin" / "score-tool"
    tool.write_text(f"#!/bin/sh\nexec {sys.executable} evaluate.py\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    cfg = sandboxed("bwrap").replace(f'eval = "{sys.executable} evaluate.py"', 'eval = "score-tool"')
    repo = make_repo("4", config=cfg)
    view = first_eval(repo)
    assert view.status == "done", view.tail
    assert view.metrics == {"score": 4.0}
