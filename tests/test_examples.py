"""Every shipped example climbs through the real server: the baseline, then its first
known-better move is kept and moves the metric the right way; where the second move is a
known-worse one, it is discarded and reverted. The regex example (the demo's script) plays
all of its moves. Each example uses its own domain prompt."""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

import conftest
from autoexp_mcp.assets import asset_dir
from autoexp_mcp.config import load_config
from autoexp_mcp.demo import make_example_repo
from autoexp_mcp.loop import Experiment
from autoexp_mcp.server import build_server
from conftest import git

CALL_TIMEOUT_S = 60.0  # the slowest example eval (etl) takes about 2.5 s here
EXAMPLES_DIR = asset_dir("examples")
# meta runs a whole inner autoexp loop per eval (about 20 s): tests/test_meta.py plays it, marked slow.
EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.iterdir() if (p / "autoexp.toml").is_file() and p.name != "meta")
# Timing-based examples: only moves whose effect dwarfs the timing noise are played.
BIG_MOVES_ONLY = {"sql"}


@pytest.fixture(autouse=True)
def _python_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example configs run `python evaluate.py`: that must be this interpreter (numpy etc.).
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def moves_of(example: str) -> list[dict[str, Any]]:
    return json.loads((EXAMPLES_DIR / example / "moves.json").read_text(encoding="utf-8"))["moves"]


CLIMB_PARAMS = [
    name
    for name in EXAMPLES
    if name != "regex"  # test_regex_example_plays_every_move_as_expected plays all of its moves
]


call = partial(conftest.call, timeout=CALL_TIMEOUT_S)


async def finish(c: Client) -> tuple[dict[str, Any], dict[str, Any]]:
    """run_eval (until it is no longer running) -> decide -> log_result; returns (eval, decision)."""
    ev = await conftest.eval_to_end(c, timeout=CALL_TIMEOUT_S, wait_seconds=CALL_TIMEOUT_S)
    d = await call(c, "decide")
    await call(c, "log_result", notes="scripted example move")
    return ev, d


async def play(c: Client, move: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    await call(c, "write_target", content=move["content"])
    await call(c, "commit", description=move["description"])
    return await finish(c)


def better(direction: str, new: float, old: float) -> bool:
    return new > old if direction == "max" else new < old


def test_every_expected_example_is_discovered() -> None:
    assert {"regex", "sql", "cache", "compression", "etl", "game_ai", "hparams", "ml_training"} <= set(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_uses_its_own_domain_prompt(example: str) -> None:
    cfg = load_config(EXAMPLES_DIR / example)
    assert cfg.experiment.domain == example
    assert (asset_dir("prompts") / "domains" / f"{example}.md").is_file()


@pytest.mark.parametrize("example", CLIMB_PARAMS)
@pytest.mark.anyio
async def test_example_keeps_a_known_better_move_and_reverts_a_worse_one(example: str, tmp_path: Path) -> None:
    repo = make_example_repo(example, tmp_path / example)
    cfg = load_config(repo)
    objective = cfg.objective
    moves = moves_of(example)
    assert moves[0]["expect"] == "keep", "the first move of moves.json must be a known-better edit"
    plays = (
        moves[:2] if len(moves) > 1 and moves[1]["expect"] == "discard" and example not in BIG_MOVES_ONLY else moves[:1]
    )
    exp = Experiment(repo)
    async with Client(build_server(exp)) as c:
        ev, d = await finish(c)
        assert ev["baseline"] and ev["status"] == "done", ev
        assert d["status"] == "keep"
        baseline = ev["metrics"][objective.name]
        assert baseline is not None

        ev, d = await play(c, moves[0])
        assert d["status"] == "keep", d["reason"]
        gained = ev["metrics"][objective.name]
        assert better(objective.direction, gained, baseline), (baseline, gained)
        kept_head = git(repo, "rev-parse", "HEAD")
        assert kept_head.startswith(d["commit"])

        for move in plays[1:]:
            ev, d = await play(c, move)
            assert d["status"] == "discard", (move["description"], d["reason"])
            assert d["reverted"]
            assert git(repo, "rev-parse", "HEAD") == kept_head
            assert (repo / cfg.experiment.target).read_text(encoding="utf-8") == moves[0]["content"]

        status = await call(c, "budget_status")
        assert status["experiments_used"] == 1 + len(plays)
        assert status["best"]["metrics"][objective.name] == gained
    rows = (repo / "results.tsv").read_text(encoding="utf-8").splitlines()
    assert [r.split("\t")[-2] for r in rows[1:]] == ["keep", "keep", *["discard"] * (len(plays) - 1)]


@pytest.mark.anyio
async def test_regex_example_plays_every_move_as_expected(tmp_path: Path) -> None:
    """The demo's script: every move of examples/regex/moves.json gets its expected decision."""
    repo = make_example_repo("regex", tmp_path / "regex")
    moves = moves_of("regex")
    exp = Experiment(repo)
    best = None
    async with Client(build_server(exp)) as c:
        ev, d = await finish(c)
        assert d["status"] == "keep"
        best = ev["metrics"]["f1"]
        for i, move in enumerate(moves, start=2):
            ev, d = await play(c, move)
            assert d["status"] == move["expect"], (i, move["description"], d["reason"])
            if move["expect"] == "keep":
                assert ev["metrics"]["f1"] > best
                best = ev["metrics"]["f1"]
        final = await call(c, "budget_status")
    assert final["experiments_used"] == len(moves) + 1
    assert final["best"]["metrics"]["f1"] == best
    assert best > 0.9
    kept = git(repo, "log", "--format=%s", "main..HEAD").splitlines()
    assert len(kept) == sum(m["expect"] == "keep" for m in moves)
    statuses = [json.loads(line)["status"] for line in (repo / "experiments.jsonl").read_text().splitlines()]
    assert statuses == ["keep", *[m["expect"] for m in moves]]
