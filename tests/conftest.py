"""Shared fixtures and helpers: temp git repositories with pinned identity, a small scriptable harness,
the installed command and MCP tool calls.

Nothing here touches the real $HOME or global git config.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from autoexp_mcp.loop import Experiment

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.com",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}

# The harness used by most loop tests. The target `value.txt` holds one line, and the line
# decides what the eval does, so a scripted agent can produce every outcome:
#   "<number>"        prints "score: <number>"                    (a normal run)
#   "crash"           exits 2 after printing a traceback-like line
#   "sleep <s> <n>"   sleeps s seconds, then prints score n      (long evals, timeouts)
#   "nometric"        prints something that is not a metric line
#   "nan"             prints "score: nan"
#   "touch <file>"    writes to <file> (tamper with the harness during the run), prints score 0
HARNESS = textwrap.dedent(
    """\
    import os, sys, time
    line = open("value.txt").read().strip()
    parts = line.split()
    print("evaluating", line, flush=True)
    if parts[0] == "crash":
        print("Traceback: boom", file=sys.stderr)
        sys.exit(2)
    if parts[0] == "sleep":
        time.sleep(float(parts[1]))
        print(f"score: {float(parts[2])}")
    elif parts[0] == "nometric":
        print("all done, no figures today")
    elif parts[0] == "nan":
        print("score: nan")
    elif parts[0] == "touch":
        open(parts[1], "a").write("tampered\\n")
        print("score: 0")
    else:
        print(f"score: {float(parts[0])}")
    """
)

BASE_CONFIG = textwrap.dedent(
    """\
    [experiment]
    tag = "t"
    target = "value.txt"
    eval = "{python} evaluate.py"
    timeout = {timeout}
    wait_seconds = {wait}

    [[metric]]
    name = "score"
    direction = "max"

    [budget]
    max_experiments = {max_experiments}
    abort_on_consecutive_crashes = {crashes}
    """
)


@pytest.fixture(scope="session", autouse=True)
def _key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The key the servers sign their files with (autoexp_mcp.auth): one per test session, in a
    temp dir, never the user's. Session-wide so module-scoped templates share it with their tests."""
    path = tmp_path_factory.mktemp("autoexp-key") / "key"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOEXP_KEY_FILE", str(path))
        yield path


@pytest.fixture(autouse=True)
def _pinned_git(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("home")
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))


def cmdline_pids(marker: str) -> list[int]:
    """Live processes whose command line carries `marker` (a zombie's is empty)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone meanwhile
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True, env={**os.environ, **GIT_ENV}
    ).stdout.strip()


def init_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def harness_config(
    *,
    timeout: float = 10,
    wait: float = 10,
    max_experiments: int = 50,
    crashes: int = 3,
    extra: str = "",
    sandbox: str | None = None,
) -> str:
    """The test harness's config; `sandbox="none"` for tests of the defences that work without
    one (the default, "auto", sandboxes every eval where bubblewrap runs)."""
    text = BASE_CONFIG.format(
        python=sys.executable, timeout=timeout, wait=wait, max_experiments=max_experiments, crashes=crashes
    )
    return text + extra + (f'\n[sandbox]\nmode = "{sandbox}"\n' if sandbox else "")


PIPELINE_CONFIG = textwrap.dedent(
    """\
    [experiment]
    tag = "pipe"
    target = "stage1.txt"
    eval = "{python} evaluate.py"
    timeout = 20

    [[stage]]
    name = "prep"
    target = "stage1.txt"
    [[stage.metric]]
    name = "quality"
    direction = "max"
    [stage.budget]
    max_experiments = 2

    [[stage]]
    name = "train"
    target = "stage2.txt"
    [[stage.metric]]
    name = "loss"
    direction = "min"
    [stage.budget]
    max_experiments = {stage2_budget}
    """
)
PIPELINE_HARNESS = (
    "q = float(open('stage1.txt').read())\nlr = float(open('stage2.txt').read())\n"
    "print('quality:', q)\nprint('loss:', abs(lr - 0.1) + 1 / q)\n"
)


def pipeline_repo(path: Path, stage2_budget: int = 2) -> Path:
    """A two-stage pipeline: `prep` tunes stage1.txt (quality, 2 experiments), then `train`
    tunes stage2.txt (loss)."""
    cfg = PIPELINE_CONFIG.format(python=sys.executable, stage2_budget=stage2_budget)
    files = {"stage1.txt": "1\n", "stage2.txt": "0.5\n", "evaluate.py": PIPELINE_HARNESS, "autoexp.toml": cfg}
    return init_repo(path, files)


MakeRepo = Callable[..., Path]


@pytest.fixture
def make_repo(tmp_path: Path) -> MakeRepo:
    """make_repo(value="1", config=None, files=None) -> a committed repo with the test harness."""
    counter = iter(range(1000))

    def make(value: str = "1", config: str | None = None, files: dict[str, str] | None = None, **cfg: object) -> Path:
        all_files = {
            "value.txt": value + "\n",
            "evaluate.py": HARNESS,
            "autoexp.toml": config if config is not None else harness_config(**cfg),  # type: ignore[arg-type]
            **(files or {}),
        }
        return init_repo(tmp_path / f"repo{next(counter)}", all_files)

    return make


@pytest.fixture
def experiment(make_repo: MakeRepo) -> Iterator[Experiment]:
    exp = Experiment(make_repo())
    try:
        yield exp
    finally:
        exp.close()


def baseline(exp: Experiment) -> None:
    """The baseline run: run_eval (which must finish "done") -> decide -> log_result."""
    assert exp.run_eval(30).status == "done"
    exp.decide()
    exp.log_result()


def baseline_and_close(repo: Path) -> None:
    """A server that measures the baseline and goes away."""
    exp = Experiment(repo)
    try:
        baseline(exp)
    finally:
        exp.close()


def first_eval(repo: Path, wait_s: float = 30) -> Any:
    """The first run_eval of a server opened and closed around it (the baseline's eval)."""
    exp = Experiment(repo)
    try:
        return exp.run_eval(wait_s)
    finally:
        exp.close()


def play(exp: Experiment, value: str, description: str | None = None) -> tuple[str, str]:
    """One whole experiment with `value` as the new target; returns (eval status, decision)."""
    exp.write_target(content=value + "\n")
    exp.commit(description or f"try {value}")
    view = exp.run_eval(30)
    d = exp.decide()
    exp.log_result()
    return view.status, d.status


# --- the installed command and MCP clients ---------------------------------------------------

CALL_TIMEOUT_S = 30.0
EXE = Path(sys.executable).parent / "autoexp-mcp"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def installed_command() -> str:
    """The `autoexp-mcp` command installed next to this interpreter."""
    assert EXE.exists(), f"autoexp-mcp is not installed next to {sys.executable}"
    return str(EXE)


def server_env() -> dict[str, str]:
    """The whole environment of a server subprocess: PATH, the test's HOME and key file, the pinned git identity."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ["HOME"], **GIT_ENV}
    return {**env, "AUTOEXP_KEY_FILE": os.environ["AUTOEXP_KEY_FILE"]}


def stdio_params(repo: Path) -> StdioServerParameters:
    """`autoexp-mcp serve --repo REPO` for the SDK's stdio client."""
    return StdioServerParameters(command=installed_command(), args=["serve", "--repo", str(repo)], env=server_env())


async def call(c: Client, tool: str, *, timeout: float = CALL_TIMEOUT_S, **args: Any) -> dict[str, Any]:
    """A tool call that must succeed; returns its structured content."""
    with anyio.fail_after(timeout):
        res = await c.call_tool(tool, args)
    assert not res.is_error, res.content
    assert res.structured_content is not None
    # The text content carries the same JSON (clients that show only text see everything).
    assert json.loads(res.content[0].text) == res.structured_content  # type: ignore[union-attr]
    return res.structured_content


async def call_error(c: Client, tool: str, *, timeout: float = CALL_TIMEOUT_S, **args: Any) -> str:
    """A tool call that must fail; returns the error text."""
    with anyio.fail_after(timeout):
        res = await c.call_tool(tool, args)
    assert res.is_error
    return res.content[0].text  # type: ignore[union-attr]


async def eval_to_end(c: Client, *, timeout: float = CALL_TIMEOUT_S, **args: Any) -> dict[str, Any]:
    """run_eval, again while the run is still running; returns the final view."""
    ev = await call(c, "run_eval", timeout=timeout, **args)
    while ev["status"] == "running":
        ev = await call(c, "run_eval", timeout=timeout, **args)
    return ev
