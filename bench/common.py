"""Shared pieces of the benchmarks: pinned git environment, temp repositories, the stdio client
of the installed server, the raw shell loop, and the summary lines.

Every figure is a ratio of two sides measured in the same run, interleaved, so that load from
other work on a shared machine hits both sides alike.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import tomli_w
from mcp import Client
from mcp.client.stdio import StdioServerParameters

BENCH_DIR = Path(__file__).resolve().parent
PY = sys.executable
CALL_TIMEOUT_S = 120.0
TAG = "t"
TARGET = "v.txt"
# The trivial eval of the loop benchmarks: one Python start-up and one print (no shell).
EVAL_ARGV = [PY, "-c", "print('score:', open('v.txt').read())"]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench Author",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench Author",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}

# The loop autoresearch asks an agent to run by hand, one iteration per invocation:
# write the file, commit, run the eval, grep the metric, reset or not, append to results.tsv.
RAW_ITERATION_SH = """\
#!/usr/bin/env bash
set -euo pipefail
value=$1
printf '%s\\n' "$value" > v.txt
git commit -q -m "try $value" -- v.txt
commit=$(git rev-parse --short HEAD)
"$PY" -c "print('score:', open('v.txt').read())" > run.log 2>&1 || true
score=$(grep '^score:' run.log | tail -n 1 | awk '{print $2}')
best=$(cat best.txt)
if awk -v s="$score" -v b="$best" 'BEGIN { exit !(s > b) }'; then
  status=keep
  printf '%s\\n' "$score" > best.txt
else
  status=discard
  git reset -q --hard HEAD~1
fi
printf '%s\\t%s\\t%s\\t%s\\n' "$commit" "$score" "$status" "try $value" >> results.tsv
"""


def pin_environment() -> Path:
    """Pin git identity and config for this process and every child (server, git, shell)."""
    home = Path(tempfile.mkdtemp(prefix="autoexp-bench-home-"))
    atexit.register(shutil.rmtree, home, True)
    (home / ".gitconfig").write_text("")
    os.environ.update(GIT_ENV)
    os.environ["HOME"] = str(home)
    os.environ["GIT_CONFIG_GLOBAL"] = str(home / ".gitconfig")
    os.environ["AUTOEXP_KEY_FILE"] = str(home / "autoexp-key")  # never the user's own key
    os.environ["PY"] = PY
    return home


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    out = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, input=input)
    return out.stdout.decode().strip()


def config_text(
    eval_argv: list[str] | None = None,
    *,
    protect: list[str] | None = None,
    timeout: float = 60.0,
    max_experiments: int = 1_000_000,
) -> str:
    import shlex

    exp: dict[str, Any] = {
        "tag": TAG,
        "target": TARGET,
        "eval": shlex.join(eval_argv or EVAL_ARGV),
        "timeout": timeout,
        "wait_seconds": 60.0,
    }
    if protect:
        exp["protect"] = protect
    data = {
        "experiment": exp,
        "metric": [{"name": "score", "direction": "max"}],
        "budget": {"max_experiments": max_experiments, "abort_on_consecutive_crashes": 1000},
    }
    return tomli_w.dumps(data)


def make_repo(path: Path, files: dict[str, str | bytes]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            f.write_bytes(content)
        else:
            f.write_text(content)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def make_raw_repo(path: Path, value: float) -> Path:
    """The hand-run side: same target and eval, plain git, a best.txt instead of a server."""
    make_repo(path, {TARGET: f"{value:g}\n", "autoexp.toml": config_text()})
    exclude = path / ".git" / "info" / "exclude"
    exclude.write_text(exclude.read_text() + "\n/run.log\n/best.txt\n/results.tsv\n/iteration.sh\n")
    (path / "best.txt").write_text(f"{value:g}\n")
    (path / "results.tsv").write_text("commit\tscore\tstatus\tdescription\n")
    (path / "iteration.sh").write_text(RAW_ITERATION_SH)
    return path


def raw_iteration(repo: Path, value: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", str(repo / "iteration.sh"), value], cwd=repo, check=True)
    return time.perf_counter() - t0


def installed_command() -> str:
    exe = Path(PY).parent / "autoexp-mcp"
    if not exe.exists():
        sys.exit(f"autoexp-mcp is not installed next to {PY}; run `pip install -e .` in that environment")
    return str(exe)


def server_params(repo: Path) -> StdioServerParameters:
    return StdioServerParameters(command=installed_command(), args=["serve", "--repo", str(repo)], env=dict(os.environ))


def bare_server_params() -> StdioServerParameters:
    return StdioServerParameters(command=PY, args=[str(BENCH_DIR / "bare_server.py")], env=dict(os.environ))


async def call(c: Client, tool: str, **args: Any) -> dict[str, Any]:
    with anyio.fail_after(CALL_TIMEOUT_S):
        res = await c.call_tool(tool, args)
    if res.is_error or res.structured_content is None:
        raise RuntimeError(f"{tool} failed: {res.content}")
    return res.structured_content


LOOP_TOOLS = ("write_target", "commit", "run_eval", "decide", "log_result")


def _loop_steps(value: str) -> list[tuple[str, dict[str, Any]]]:
    """The five calls of one experiment that writes `value` into the target."""
    return [
        ("write_target", {"content": value + "\n"}),
        ("commit", {"description": f"try {value}"}),
        ("run_eval", {}),
        ("decide", {}),
        ("log_result", {"notes": f"value {value}"}),
    ]


async def server_iteration(c: Client, value: str, per_tool: dict[str, list[float]] | None = None) -> float:
    """One experiment through the five loop tools; returns its wall time (client side)."""
    t_start = time.perf_counter()
    for tool, args in _loop_steps(value):
        t0 = time.perf_counter()
        res = await call(c, tool, **args)
        while tool == "run_eval" and res["status"] == "running":
            res = await call(c, tool)
        if tool == "run_eval" and res["status"] != "done":
            raise RuntimeError(f"the eval did not finish cleanly: {res}")
        if per_tool is not None:
            per_tool.setdefault(tool, []).append(time.perf_counter() - t0)
    return time.perf_counter() - t_start


class LeanClient:
    """The least a client can do: newline-delimited JSON-RPC over the server's pipes, no
    validation, blocking reads. Times the server with next to no client cost on top (the
    SDK's client adds ~2.5 ms per call of its own on this machine)."""

    def __init__(self, repo: Path, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [installed_command(), "serve", "--repo", str(repo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._id = 0
        info = {"name": "lean", "version": "1"}
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": info})
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.request("tools/list", {})

    def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._id += 1
        self._send({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        assert self.proc.stdout is not None
        while True:  # skip notifications (progress, logs)
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the server closed stdout during {method}")
            msg = json.loads(line)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method} failed: {msg['error']}")
                return msg["result"]

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        res = self.request("tools/call", {"name": tool, "arguments": args})
        if res.get("isError"):
            raise RuntimeError(f"{tool} failed: {res['content']}")
        return res["structuredContent"]

    def baseline(self) -> None:
        for tool in ("run_eval", "decide", "log_result"):
            self.call(tool)

    def iteration(self, value: str, per_tool: dict[str, list[float]] | None = None) -> float:
        """One experiment through the five loop tools; returns its wall time (and adds each
        tool's to `per_tool`)."""
        t_start = time.perf_counter()
        for tool, args in _loop_steps(value):
            t0 = time.perf_counter()
            res = self.call(tool, **args)
            while tool == "run_eval" and res["status"] == "running":
                res = self.call(tool)
            if tool == "run_eval" and res["status"] != "done":
                raise RuntimeError(f"the eval did not finish cleanly: {res}")
            if per_tool is not None:
                per_tool.setdefault(tool, []).append(time.perf_counter() - t0)
        return time.perf_counter() - t_start

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(CALL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def baseline(c: Client) -> None:
    for tool in ("run_eval", "decide", "log_result"):
        await call(c, tool)


class Values:
    """Alternating keep (best + 1) and discard (best - 0.5), so both sides reset half the time."""

    def __init__(self, best: float) -> None:
        self.best = best
        self.i = 0

    def next(self) -> str:
        self.i += 1
        if self.i % 2:
            self.best += 1
            return f"{self.best:g}"
        return f"{self.best - 0.5:g}"


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summary(figure: str, measured: float, target: str, ok: bool, detail: str = "") -> str:
    line = f"SUMMARY {figure}: {measured:.3f} (target {target}) {verdict(ok)}"
    if detail:
        line += f"  [{detail}]"
    print(line, flush=True)
    return line


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=1))


@contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        if not keep:
            subprocess.run(["rm", "-rf", str(d)], check=False)
