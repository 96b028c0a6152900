"""The `combine` tool: a coordinating agent combines lanes through any lane's server or the main one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client

from autoexp_mcp import lane
from autoexp_mcp.loop import Experiment
from autoexp_mcp.server import build_server
from conftest import MakeRepo, call, call_error, git, harness_config
from test_combine import BASE, KEYED_HARNESS, lane_with

WAIT_S = 60.0


def _lanes(make_repo: MakeRepo) -> Path:
    repo = make_repo(
        value=BASE.rstrip("\n"), config=harness_config(sandbox="none"), files={"evaluate.py": KEYED_HARNESS}
    )
    lane_with(repo, "a", BASE.replace("a 0", "a 1.5"))
    lane_with(repo, "b", BASE.replace("b 0", "b 2"))
    lane_with(repo, "c", BASE.replace("b 0", "b 1"))  # the same line as b's: a conflict
    return repo


@pytest.mark.anyio
async def test_combine_tool_on_a_lanes_server_returns_each_step_and_the_best(make_repo: MakeRepo) -> None:
    repo = _lanes(make_repo)
    progress: list[float] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with Client(build_server(lane.open_lane(repo, "a"), coordinator=True)) as c:
        with anyio.fail_after(WAIT_S):
            res = await c.call_tool("combine", {"tags": ["a", "b", "c"], "into": "abc"}, progress_callback=on_progress)
        assert not res.is_error, res.content
        out = res.structured_content
        assert out is not None
        assert [(s["tag"], s["status"], s["gain"]) for s in out["steps"]] == [
            ("b", "kept", 2.0), ("a", "kept", 1.5), ("c", "conflict", 1.0)
        ]  # fmt: skip
        assert "conflicts" in out["steps"][2]["reason"] and out["best"] == {"score": 3.5}
        assert git(repo, "rev-parse", "autoexp/abc").startswith(out["commit"]) and len(out["commit"]) == 12
        assert progress, "the client heard from the server while combine ran"
        # Errors say what to do: a lane that exists, one that does not, the server's own tag.
        assert "already exists; give another name" in await call_error(c, "combine", tags=["a", "b"], into="abc")
        assert "no lane nope" in await call_error(c, "combine", tags=["nope"], into="x")
        assert "own experiment: give a new lane name" in await call_error(c, "combine", tags=["b"], into="a")
    assert git(repo, "status", "--porcelain") == "" and git(repo, "branch", "--show-current") == "main"


@pytest.mark.anyio
async def test_combine_tool_on_the_main_tags_server_combines_the_lanes(make_repo: MakeRepo) -> None:
    repo = _lanes(make_repo)
    async with Client(build_server(Experiment(repo), coordinator=True)) as c:
        out = await call(c, "combine", timeout=WAIT_S, tags=["a", "b"])
        assert out["into"] == "combined" and out["best"] == {"score": 3.5}
        assert [s["status"] for s in out["steps"]] == ["kept", "kept"]
        assert "give the lanes to combine" in await call_error(c, "combine", tags=[], into="none")
    assert (repo / ".autoexp/lanes/combined/.autoexp/combine.json").is_file()


def test_only_a_coordinators_server_lists_combine(tmp_path: Path) -> None:
    from conftest import init_repo, installed_command, server_env

    repo = init_repo(tmp_path / "plain", {"value.txt": "1\n", "evaluate.py": "print('score: 1')\n"})
    (repo / "autoexp.toml").write_text(
        '[experiment]\ntag = "t"\ntarget = "value.txt"\neval = "python3 evaluate.py"\n\n'
        '[[metric]]\nname = "score"\ndirection = "max"\n'
    )
    git(repo, "add", "autoexp.toml")
    git(repo, "commit", "-qm", "config")
    hello = (
        b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        b'"capabilities":{},"clientInfo":{"name":"t","version":"0"}}}\n'
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'
        b'{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{}}\n'
    )
    names = {}
    for extra in ([], ["--coordinator"]):
        out = subprocess.run(
            [installed_command(), "serve", "--repo", str(repo), *extra],
            input=hello,
            capture_output=True,
            env=server_env(),
            timeout=60,
        )
        answers = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
        listing = next(a for a in answers if a.get("id") == 2)
        names[bool(extra)] = {t["name"] for t in listing["result"]["tools"]}
    assert "combine" not in names[False] and "combine" in names[True]
    assert names[True] - names[False] == {"combine"}
