"""combine: lanes' best changes merged greedily, each kept only if it still improves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoexp_mcp import lane
from autoexp_mcp.combine import combine
from autoexp_mcp.errors import GuardError
from autoexp_mcp.verify import verify
from conftest import MakeRepo, baseline, git, harness_config

# value.txt holds "key number" lines; "-" lines keep the keys apart so that changes of
# different keys merge cleanly. d helps alone, but hurts once a is set: it does not compose.
KEYED_HARNESS = """\
v = {}
for line in open("value.txt"):
    k, x = line.split()
    v[k] = float(x)
d_term = 0.5 * v["d"] if v["a"] == 0 else -v["d"]
print(f"score: {v['a'] + v['b'] + d_term}")
"""
BASE = "a 0\n- 0\nb 0\n- 0\nd 0\n"


def lane_with(repo: Path, tag: str, text: str) -> None:
    exp = lane.open_lane(repo, tag)
    try:
        baseline(exp)
        exp.write_target(content=text)
        exp.commit(f"{tag}'s change")
        assert exp.run_eval(30).status == "done"
        assert exp.decide().status == "keep"
        exp.log_result()
    finally:
        exp.close()


def test_combine_keeps_composing_changes_and_records_a_conflict_and_a_non_composing_one(make_repo: MakeRepo) -> None:
    cfg = harness_config(sandbox="none")
    repo = make_repo(value=BASE.rstrip("\n"), config=cfg, files={"evaluate.py": KEYED_HARNESS})
    lane_with(repo, "a", BASE.replace("a 0", "a 1.5"))  # +1.5
    lane_with(repo, "b", BASE.replace("b 0", "b 2"))  # +2
    lane_with(repo, "c", BASE.replace("b 0", "b 1"))  # +1, the same line as b's: a conflict
    lane_with(repo, "d", BASE.replace("d 0", "d 1"))  # +0.5 alone, -1 with a
    result = combine(repo, ["a", "b", "c", "d"], into="all")
    steps = {s.tag: s for s in result.steps}
    assert [s.tag for s in result.steps] == ["b", "a", "c", "d"]  # largest own gain first
    assert (steps["b"].status, steps["a"].status) == ("kept", "kept")
    assert steps["c"].status == "conflict" and "conflicts" in steps["c"].reason
    assert steps["d"].status == "discarded" and "not combined" in steps["d"].reason
    assert result.best == {"score": 3.5}
    text = git(repo, "show", "autoexp/all:value.txt")
    assert "a 1.5" in text and "b 2" in text and "d 0" in text
    rows = [json.loads(ln) for ln in (repo / ".autoexp/lanes/all/experiments.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["keep", "keep", "keep", "discard"]  # base, b, a, d
    summary = json.loads((repo / ".autoexp/lanes/all/.autoexp/combine.json").read_text())
    assert [s["status"] for s in summary["steps"]] == ["kept", "kept", "conflict", "discarded"]
    assert verify(repo / ".autoexp/lanes/all", tag="all") == []
    assert git(repo, "status", "--porcelain") == "" and git(repo, "branch", "--show-current") == "main"


def test_combine_refuses_an_existing_lane_and_an_unknown_one(make_repo: MakeRepo) -> None:
    repo = make_repo(sandbox="none")
    lane.open_lane(repo, "x").close()
    with pytest.raises(GuardError, match="already exists"):
        combine(repo, ["x"], into="x")
    with pytest.raises(GuardError, match="no lane nope"):
        combine(repo, ["nope"], into="y")


def test_cli_combine_and_status_all_show_every_lane(make_repo: MakeRepo, capsys: pytest.CaptureFixture[str]) -> None:
    from autoexp_mcp.cli import main

    cfg = harness_config(sandbox="none")
    repo = make_repo(value=BASE.rstrip("\n"), config=cfg, files={"evaluate.py": KEYED_HARNESS})
    lane_with(repo, "a", BASE.replace("a 0", "a 1.5"))
    lane_with(repo, "b", BASE.replace("b 0", "b 2"))
    assert main(["combine", "--repo", str(repo), "--tags", "a,b", "--into", "ab"]) == 0
    out = capsys.readouterr().out
    assert "b                        kept" in out and "best score=3.5" in out
    assert main(["status", "--all", "--repo", str(repo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["a", "ab", "b"]
    assert "score=3.5" in lines[2] and lines[2].split()[3] == "3" and "idle, no server" in lines[2]
    assert main(["verify", "--repo", str(repo)]) == 0
    assert capsys.readouterr().out.count("ok: lane") == 3
