"""`autoexp-mcp demo`: the regex example in a temp git repository, driven over real stdio MCP
by a scripted (non-LLM) agent that plays the moves in examples/regex/moves.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .assets import asset_dir

DEMO_TIMEOUT_S = 60.0  # per tool call; the regex eval takes well under a second


def make_example_repo(example: str, dest: Path) -> Path:
    """Copy examples/<example> to `dest` and make it a git repository with one commit."""
    src = asset_dir("examples") / example
    if not src.is_dir():
        raise FileNotFoundError(f"no example named {example!r} in {asset_dir('examples')}")
    shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "autoexp demo",
        "GIT_AUTHOR_EMAIL": "demo@localhost",
        "GIT_COMMITTER_NAME": "autoexp demo",
        "GIT_COMMITTER_EMAIL": "demo@localhost",
    }
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "example"],
    ):
        subprocess.run(cmd, cwd=dest, check=True, env=env, stdin=subprocess.DEVNULL)
    return dest


def server_params(repo: Path) -> Any:
    """How to start this installation's server over stdio, with a usable `python` on PATH."""
    from mcp.client.stdio import StdioServerParameters

    exe = shutil.which("autoexp-mcp")
    command, args = (
        (exe, ["serve", "--repo", str(repo)])
        if exe
        else (sys.executable, ["-m", "autoexp_mcp", "serve", "--repo", str(repo)])
    )
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return StdioServerParameters(command=command, args=args, env={"PATH": path, "HOME": str(Path.home())})


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}=—" for k, v in metrics.items())


async def _drive(repo: Path, moves: list[dict[str, Any]], experiments: int) -> None:
    import anyio
    from mcp import Client

    async def call(c: Client, tool: str, **arguments: Any) -> dict[str, Any]:
        with anyio.fail_after(DEMO_TIMEOUT_S):
            res = await c.call_tool(tool, arguments)
        if res.is_error:
            raise RuntimeError(res.content[0].text if res.content else f"{tool} failed")  # type: ignore[union-attr]
        assert res.structured_content is not None
        return res.structured_content

    def show(out: dict[str, Any], description: str) -> None:
        metrics = _fmt(out.get("metrics") or {})
        print(f"  #{out['experiment']:<3} {out['commit']}  {out['status']:<8} {metrics}  {description}")
        if out["status"] in ("discard", "crash", "timeout"):
            print(f"       ↳ {out['reason'][:110]}")

    async with Client(server_params(repo)) as c:
        print("  exp  commit   status   metric     description")
        # The baseline step by step (run_eval, decide, log_result), to show it on its own line;
        # then one `experiment` call per move: write, commit, run, keep or revert, log.
        ev = await call(c, "run_eval")
        while ev["status"] == "running":
            ev = await call(c, "run_eval")
        show(await call(c, "decide"), "baseline")
        await call(c, "log_result", notes="scripted demo baseline")
        for move in moves[:experiments]:
            out = await call(c, "experiment", content=move["content"], description=move["description"])
            while out["status"] == "running":
                out = await call(c, "run_eval")
            show(out, move["description"])
            if out["next"] == "stop":
                print(f"budget: {out['budget']}")
                break
        final = await call(c, "budget_status")
        best = final["best"]
        print(f"\nbest: commit {best['commit']} {_fmt(best['metrics'])} after {final['experiments_used']} experiments")


def run_demo(experiments: int = 12, keep: Path | None = None) -> int:
    import anyio

    moves = json.loads((asset_dir("examples") / "regex" / "moves.json").read_text(encoding="utf-8"))["moves"]
    if keep is None:
        repo = Path(tempfile.mkdtemp(prefix="autoexp-demo-"))
    else:
        repo = keep.resolve()
        repo.mkdir(parents=True, exist_ok=True)
    make_example_repo("regex", repo)
    print(f"demo repository: {repo}  (regex example: tune patterns.yaml for F1)")
    print("a scripted agent drives `autoexp-mcp serve` over stdio, as a real client would:\n")
    anyio.run(_drive, repo, moves, experiments)
    print(f"\nresults.tsv: {repo / 'results.tsv'}")
    print(f"branch:      autoexp/regex-f1 in {repo}  (git -C {repo} log --oneline)")
    return 0
