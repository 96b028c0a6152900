"""examples/meta: autoexp on autoexp. Each outer eval runs a whole inner loop (the built-in
agent on a copy of the hparams example, with its own server and budget) inside the outer
eval's sandbox, so the end-to-end tests are slow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoexp_mcp.assets import asset_dir
from autoexp_mcp.config import load_config
from autoexp_mcp.demo import make_example_repo
from conftest import git, installed_command, server_env

META = asset_dir("examples") / "meta"
OUTER_TIMEOUT_S = 300.0  # two outer experiments take about 40 s here


def env() -> dict[str, str]:
    return {**server_env(), "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}


def records(repo: Path) -> list[dict]:
    return [json.loads(line) for line in (repo / "experiments.jsonl").read_text().splitlines()]


def test_meta_eval_crashes_at_once_on_a_strategy_the_agent_cannot_read(tmp_path: Path) -> None:
    repo = tmp_path / "meta"
    repo.mkdir()
    (repo / "evaluate.py").write_text((META / "evaluate.py").read_text())
    (repo / "agent_strategy.yaml").write_text("search: coordinate\nstep: -1\n")
    out = subprocess.run(
        [sys.executable, "evaluate.py"], cwd=repo, capture_output=True, text=True, timeout=60, env=env()
    )
    assert out.returncode == 2
    assert "agent_strategy.yaml" in out.stderr and "step" in out.stderr
    assert "best_after_n" not in out.stdout


def test_meta_config_tunes_the_strategy_with_repeats() -> None:
    cfg = load_config(META)
    assert cfg.experiment.target == "agent_strategy.yaml"
    assert cfg.metric[0].name == "best_after_n" and cfg.metric[0].direction == "max"
    assert cfg.policy.repeats >= 3, "the inner loop is noisy across seeds"


@pytest.mark.slow
def test_meta_example_runs_two_outer_experiments_with_the_built_in_agent(tmp_path: Path) -> None:
    from autoexp_mcp.sandbox import available

    repo = make_example_repo("meta", tmp_path / "meta")
    out = subprocess.run(
        [
            installed_command(),
            "agent",
            "--repo",
            str(repo),
            "--strategy",
            str(repo / "outer_strategy.yaml"),
            "--experiments",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=OUTER_TIMEOUT_S,
        env=env(),
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    rows = records(repo)
    assert [r["experiment"] for r in rows] == [1, 2]
    assert rows[0]["status"] == "keep" and rows[0]["description"] == "baseline"
    for r in rows:
        assert r["status"] in ("keep", "discard"), r["reason"]
        assert 0.5 < r["metrics"]["best_after_n"] <= 1.0
        assert len(r["repeats"]["best_after_n"]) == 3
    assert rows[1]["description"].startswith("coordinate: ")
    # Where bubblewrap runs, the inner loop (git, a server, its evals) ran inside the outer sandbox.
    assert rows[0]["sandbox"] == ("bwrap" if available().ok else "none")
    touched = {p for p in git(repo, "log", "--format=", "--name-only", "main..HEAD").splitlines() if p}
    assert touched <= {"agent_strategy.yaml"}
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.slow
def test_meta_example_keeps_its_known_better_first_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio
    from mcp import Client

    from autoexp_mcp.loop import Experiment
    from autoexp_mcp.server import build_server

    repo = make_example_repo("meta", tmp_path / "meta")
    move = json.loads((META / "moves.json").read_text())["moves"][0]
    assert move["expect"] == "keep"
    monkeypatch.setenv("PATH", env()["PATH"])  # the eval's `python` is this interpreter
    exp = Experiment(repo)

    async def call(c: Client, tool: str, **args: object) -> dict:
        with anyio.fail_after(OUTER_TIMEOUT_S):
            res = await c.call_tool(tool, args)
        assert not res.is_error, res.content
        assert res.structured_content is not None
        return res.structured_content

    async def finish(c: Client) -> dict:
        ev = await call(c, "run_eval", wait_seconds=120)
        while ev["status"] == "running":
            ev = await call(c, "run_eval", wait_seconds=120)
        d = await call(c, "decide")
        await call(c, "log_result", notes="scripted meta move")
        return d

    async def go() -> tuple[dict, dict]:
        async with Client(build_server(exp)) as c:
            base = await finish(c)
            await call(c, "write_target", content=move["content"])
            await call(c, "commit", description=move["description"])
            return base, await finish(c)

    try:
        base, d = anyio.run(go)
    finally:
        exp.close()
    assert base["status"] == "keep"
    assert d["status"] == "keep", d
    rows = records(repo)
    assert rows[1]["metrics"]["best_after_n"] > rows[0]["metrics"]["best_after_n"]
