"""Lanes: several experiments at once on one repository, each in its own worktree."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from autoexp_mcp import lane
from autoexp_mcp.errors import GuardError
from autoexp_mcp.verify import verify
from conftest import MakeRepo, baseline, call, eval_to_end, git, harness_config, play, stdio_params


def test_two_lanes_run_in_their_own_worktrees_and_leave_the_checkout_alone(make_repo: MakeRepo) -> None:
    repo = make_repo(sandbox="none")
    head = git(repo, "rev-parse", "HEAD")
    a = lane.open_lane(repo, "lr", focus="learning rate only")
    b = lane.open_lane(repo, "arch")
    try:
        baseline(a)
        baseline(b)
        assert play(a, "5") == ("done", "keep")
        assert play(b, "3") == ("done", "keep")
        assert play(a, "4") == ("done", "discard")
        assert a.root == repo / ".autoexp" / "lanes" / "lr"
        assert (a.root / "results.tsv").read_text().count("\n") == 4
        assert (b.root / "experiments.jsonl").read_text().count("\n") == 2
        assert "learning rate only" in a.render_prompt()
        assert "learning rate only" not in b.render_prompt()
    finally:
        a.close()
        b.close()
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "branch", "--show-current") == "main"
    assert git(repo, "status", "--porcelain") == ""
    assert (repo / "value.txt").read_text() == "1\n"
    assert git(repo, "show", "autoexp/lr:value.txt") == "5"
    assert git(repo, "show", "autoexp/arch:value.txt") == "3"
    assert not (repo / "results.tsv").exists()
    for info in lane.list_lanes(repo):
        assert verify(info.path, tag=info.tag) == [], info.tag
    assert [i.tag for i in lane.list_lanes(repo)] == ["arch", "lr"]
    assert lane.read_info(repo, "lr").base == head


def test_a_lane_reopens_where_it_stopped_and_keeps_its_focus(make_repo: MakeRepo) -> None:
    repo = make_repo(sandbox="none")
    exp = lane.open_lane(repo, "reg", focus="regularization")
    try:
        baseline(exp)
        play(exp, "7")
    finally:
        exp.close()
    again = lane.open_lane(repo, "reg")
    try:
        assert again.state.experiments == 2
        assert again.state.best is not None and again.state.best.metrics == {"score": 7.0}
        assert again.focus == "regularization"
    finally:
        again.close()


def test_the_same_lane_cannot_be_served_twice_but_another_can(make_repo: MakeRepo) -> None:
    repo = make_repo(sandbox="none")
    a = lane.open_lane(repo, "one")
    try:
        with pytest.raises(Exception, match="another autoexp-mcp server"):
            lane.open_lane(repo, "one")
        b = lane.open_lane(repo, "two")
        b.close()
    finally:
        a.close()


def test_lane_refuses_from_on_an_existing_lane_and_a_bad_tag(make_repo: MakeRepo) -> None:
    repo = make_repo(sandbox="none")
    lane.open_lane(repo, "x").close()
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(GuardError, match="--from only applies to a new lane"):
        lane.open_lane(repo, "x", from_commit=head)
    with pytest.raises(Exception, match="--tag"):
        lane.open_lane(repo, "../evil")


def test_a_lane_does_not_see_another_lanes_commits_as_tampering(make_repo: MakeRepo) -> None:
    repo = make_repo(sandbox="none")
    a = lane.open_lane(repo, "a")
    try:
        baseline(a)
        b = lane.open_lane(repo, "b")  # a new branch and worktree while a's watch is armed
        try:
            baseline(b)
            play(b, "9")
        finally:
            b.close()
        assert play(a, "2") == ("done", "keep")
    finally:
        a.close()


# --- several servers at once, over stdio -------------------------------------------------------

TIMED_HARNESS = """\
import os, sys, time
start = time.time()
line = open("value.txt").read().split()
time.sleep(float(line[0]))
with open({times!r}, "a") as f:
    f.write(f"{{os.environ['AUTOEXP_TAG']}} {{start}} {{time.time()}}\\n")
print(f"score: {{float(line[1])}}")
"""


def timed_repo(make_repo: MakeRepo, tmp_path: Path, slots: int, sleep_s: float) -> tuple[Path, Path]:
    times = tmp_path / "times.txt"
    cfg = harness_config(sandbox="none", timeout=30, wait=30) + f"\n[resources]\nslots = {slots}\n"
    repo = make_repo(value=f"{sleep_s} 1", config=cfg, files={"evaluate.py": TIMED_HARNESS.format(times=str(times))})
    return repo, times


def lane_params(repo: Path, tag: str) -> StdioServerParameters:
    params = stdio_params(repo)
    return params.model_copy(update={"args": [*params.args, "--tag", tag]})


async def drive_lane(repo: Path, tag: str, values: list[str]) -> None:
    """A baseline and one experiment per value, through a real stdio server of lane `tag`."""
    async with Client(lane_params(repo, tag)) as c:
        await eval_to_end(c, timeout=60)
        await call(c, "decide")
        await call(c, "log_result")
        for v in values:
            await call(c, "write_target", content=v + "\n")
            await call(c, "commit", description=f"try {v}")
            await eval_to_end(c, timeout=60)
            await call(c, "decide")
            await call(c, "log_result")


def intervals(times: Path) -> list[tuple[str, float, float]]:
    rows = [ln.split() for ln in times.read_text().splitlines()]
    return sorted((tag, float(a), float(b)) for tag, a, b in rows)


def most_at_once(spans: list[tuple[str, float, float]]) -> int:
    events = sorted([(a, 1) for _, a, _ in spans] + [(b, -1) for _, _, b in spans])
    now = top = 0
    for _, step in events:
        now += step
        top = max(top, now)
    return top


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize(("lanes", "slots"), [(2, 1), (3, 1), (3, 2)])
async def test_concurrent_lanes_never_run_more_evals_than_slots(
    make_repo: MakeRepo, tmp_path: Path, lanes: int, slots: int
) -> None:
    repo, times = timed_repo(make_repo, tmp_path, slots, 0.6)
    tags = [f"lane{i}" for i in range(lanes)]
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            for i, tag in enumerate(tags):
                tg.start_soon(drive_lane, repo, tag, [f"0.6 {i + 2}", f"0.6 {i + 3}"])
    spans = intervals(times)
    assert len(spans) == 3 * lanes
    assert most_at_once(spans) == slots  # never more; and the slots were used
    for tag in tags:
        rows = [json.loads(ln) for ln in (repo / ".autoexp/lanes" / tag / "experiments.jsonl").read_text().splitlines()]
        assert [r["status"] for r in rows] == ["keep", "keep", "keep"]
        assert all(r["slot"].startswith("slot ") and r["wall_time_s"] < 1.5 for r in rows)
        assert verify(repo / ".autoexp/lanes" / tag, tag=tag) == []
    ledgers = [repo / ".autoexp/lanes" / tag / "experiments.jsonl" for tag in tags]
    waited = [json.loads(ln)["slot_wait_s"] for p in ledgers for ln in p.read_text().splitlines()]
    if slots < lanes:
        assert max(waited) > 0.3  # waiting is reported apart from the eval's own time
    assert git(repo, "status", "--porcelain") == "" and git(repo, "branch", "--show-current") == "main"


@pytest.mark.slow
@pytest.mark.anyio
async def test_killing_one_lanes_server_leaves_the_others_going(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo, _ = timed_repo(make_repo, tmp_path, 2, 0.3)

    async def doomed() -> None:
        with contextlib.suppress(Exception):
            async with Client(lane_params(repo, "doomed")) as c:
                await eval_to_end(c, timeout=60)
                await call(c, "decide")
                await call(c, "log_result")
                await call(c, "write_target", content="30 9\n")
                await call(c, "commit", description="a long run")
                await call(c, "run_eval", wait_seconds=0)
                pid = int((repo / ".autoexp/lanes/doomed/.autoexp/lock").read_text())
                os.kill(pid, signal.SIGKILL)
                await call(c, "budget_status", timeout=10)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(doomed)
            tg.start_soon(drive_lane, repo, "a", ["0.3 2", "0.3 3"])
            tg.start_soon(drive_lane, repo, "b", ["0.3 4"])
    assert lane.open_lane(repo, "a").close() is None
    again = lane.open_lane(repo, "doomed")  # the next server logs the cut run
    try:
        assert again.ledger.last_record().status == "interrupted"  # type: ignore[union-attr]
    finally:
        again.close()
    for tag, n in (("a", 3), ("b", 2), ("doomed", 2)):
        assert len((repo / ".autoexp/lanes" / tag / "experiments.jsonl").read_text().splitlines()) == n
        assert verify(repo / ".autoexp/lanes" / tag, tag=tag) == []


def test_a_run_waits_for_a_busy_slot_and_gets_its_device(tmp_path: Path) -> None:
    from autoexp_mcp.config import ResourcesConfig
    from autoexp_mcp.slots import SlotPool

    pool = SlotPool(tmp_path / "slots", ResourcesConfig(gpus=("3",)))
    other = SlotPool(tmp_path / "slots", ResourcesConfig(gpus=("3",)))
    with pool.hold() as first:
        assert first.env == {"CUDA_VISIBLE_DEVICES": "3"} and first.name == "gpu 3"
        assert other.busy() == 1
        with pytest.raises(Exception, match="cancelled while it waited for an eval slot"), other.hold(lambda: True):
            pass
    with other.hold() as second:
        assert second.index == 0 and second.waited_s < 1


def test_sandboxed_lanes_run_and_an_eval_cannot_write_another_lane(make_repo: MakeRepo) -> None:
    repo = make_repo()  # the default sandbox: bubblewrap where it runs
    a = lane.open_lane(repo, "a")
    b = lane.open_lane(repo, "b")
    try:
        baseline(a)
        baseline(b)
        assert play(a, "5") == ("done", "keep")
        status, decision = play(b, "touch ../a/value.txt")
        assert (status, decision) == ("crash", "crash") if a.iso.active else decision in ("keep", "discard", "crash")
        assert (a.root / "value.txt").read_text() == "5\n" or not a.iso.active
    finally:
        a.close()
        b.close()
