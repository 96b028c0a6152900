"""The one-call `experiment` tool: a whole run through it alone (over stdio), the server deciding
and logging a run no call waits for, refusals that leave nothing behind, the same ledger as the
five step tools, races with the step tools, restarts after a kill at every point of a call, and
the size of what the agent reads."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from autoexp_mcp.errors import AutoexpError, OrderError
from autoexp_mcp.loop import Experiment
from autoexp_mcp.oneshot import OneCall, Request
from autoexp_mcp.server import Opener, build_server
from autoexp_mcp.state import Phase
from autoexp_mcp.verify import verify
from conftest import MakeRepo, call, call_error, cmdline_pids, git, harness_config, stdio_params

WAIT_S = 30.0
LISTING_GOAL_BYTES = 6000  # 5,974 for the eight tools; `combine` is listed only by a coordinator
RESULT_GOAL_BYTES = 500  # a kept or discarded experiment's answer


def records(repo: Path) -> list[dict[str, Any]]:
    path = repo / "experiments.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


async def until_logged(repo: Path, n: int) -> None:
    """Wait, with no call in flight, until the ledger holds `n` rows."""
    with anyio.fail_after(WAIT_S):
        while len(records(repo)) < n:
            await anyio.sleep(0.02)


# --- a whole run through `experiment` alone ------------------------------------------------------


POLICY = "\n[policy]\nrepeats = 2\nexplore_every = 6\n"


@pytest.mark.anyio
async def test_a_whole_run_through_experiment_alone_over_stdio(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1", timeout=1, wait=10, crashes=5, extra=POLICY)
    start = head(repo)
    async with Client(stdio_params(repo)) as c:

        async def experiment(value: str, **args: Any) -> dict[str, Any]:
            return await call(c, "experiment", content=value + "\n", description=f"try {value}", tokens_used=7, **args)

        # The first call measures the baseline first, then the edit: one row each.
        out = await experiment("3", notes="three")
        assert out == {
            "status": "keep",
            "experiment": 2,
            "commit": head(repo)[:7],
            "metrics": {"score": 3.0},
            "std": {"score": 0.0},
            "margin": 2.0,
            "reason": out["reason"],
            "new_best": True,
            "budget": "48 experiments left",
            "next": "experiment",
        }
        assert "score 3±0 (n=2) vs incumbent 1±0 (n=2)" in out["reason"]
        assert [r["status"] for r in records(repo)] == ["keep", "keep"]
        assert records(repo)[0]["description"] == "baseline" and records(repo)[0]["repeats"] == {"score": [1.0, 1.0]}

        kept = head(repo)
        out = await experiment("2")
        assert (out["status"], out["margin"], "new_best" in out) == ("discard", -1.0, False)
        assert head(repo) == kept and (repo / "value.txt").read_text() == "3\n"
        out = await experiment("crash")
        assert out["status"] == "crash" and "Traceback: boom" in out["tail"] and "metrics" not in out
        out = await experiment("sleep 30 9")
        assert out["status"] == "timeout" and "timeout of 1s" in out["reason"]
        out = await experiment("nometric")
        assert out["status"] == "crash" and "no usable metric" in out["reason"]
        out = await experiment("2")  # experiment 7, index 6: an exploration step, kept though worse
        assert out["status"] == "explore" and "new_best" not in out and head(repo)[:7] == out["commit"]

        # A long eval: the call answers "running"; the server decides and logs it with no call waiting.
        out = await experiment("sleep 0.4 4", wait_seconds=0.05, notes="slow four")
        assert (out["status"], out["next"], out["experiment"]) == ("running", "run_eval", 8)
        assert "the server decides and logs it" in out["reason"]
        await until_logged(repo, 8)
        assert records(repo)[-1]["status"] == "keep" and records(repo)[-1]["notes"] == "slow four"
        # ... and the next call reports it: the margin against the explored incumbent (2), a new best.
        out = await call(c, "run_eval")
        assert (out["status"], out["metrics"], out["margin"], out["new_best"]) == ("keep", {"score": 4.0}, 2.0, True)
        assert out == await call(c, "run_eval"), "asking again gives the same outcome"
        status = await call(c, "budget_status")
        assert status["last"].startswith("#8 keep: ") and status["next"] == "experiment"
        assert status["best"] == {"commit": out["commit"], "metrics": {"score": 4.0}}

    rows = records(repo)
    assert [r["status"] for r in rows] == ["keep", "keep", "discard", "crash", "timeout", "crash", "explore", "keep"]
    assert [r["tokens_used"] for r in rows] == [0] + [7] * 7
    assert rows[1]["notes"] == "three" and rows[2]["description"] == "try 2"
    assert git(repo, "log", "--format=%s", f"{start}..HEAD").splitlines() == [
        "autoexp #8: try sleep 0.4 4",
        "autoexp #7: try 2",
        "autoexp #2: try 3",
    ]
    assert len((repo / "results.tsv").read_text().splitlines()) == 9
    assert verify(repo) == []


@pytest.mark.anyio
async def test_the_baseline_outlasting_the_wait_is_logged_and_the_edit_follows_on_the_next_call(
    make_repo: MakeRepo,
) -> None:
    repo = make_repo(value="sleep 0.4 1")
    async with Client(build_server(Experiment(repo))) as c:
        out = await call(c, "experiment", content="5\n", description="five", wait_seconds=0.05)
        assert (out["status"], out["experiment"], out["baseline"], out["next"]) == ("running", 1, True, "experiment")
        assert "Your edit is not applied yet" in out["reason"]
        assert (repo / "value.txt").read_text() == "sleep 0.4 1\n", "the baseline runs on the untouched target"
        await until_logged(repo, 1)
        out = await call(c, "experiment", content="5\n", description="five")
        assert (out["status"], out["experiment"], out["metrics"]) == ("keep", 2, {"score": 5.0})
    assert [r["description"] for r in records(repo)] == ["baseline", "five"]


@pytest.mark.anyio
async def test_a_call_while_the_baseline_runs_waits_for_it_then_runs_the_edit(make_repo: MakeRepo) -> None:
    repo = make_repo(value="sleep 0.3 1")
    async with Client(build_server(Experiment(repo))) as c:
        first = await call(c, "experiment", content="5\n", description="five", wait_seconds=0)
        assert first["status"] == "running"
        out = await call(c, "experiment", content="5\n", description="five")
        assert (out["status"], out["experiment"]) == ("keep", 2)
    assert len(records(repo)) == 2


# --- refusals leave nothing behind -------------------------------------------------------------


def snapshot(repo: Path) -> tuple[str, str, bytes, str]:
    state = json.loads((repo / ".autoexp" / "state.json").read_text())
    return head(repo), (repo / "value.txt").read_text(), (repo / "experiments.jsonl").read_bytes(), state["phase"]


@pytest.mark.anyio
async def test_refused_experiments_leave_nothing_behind(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1")
    async with Client(build_server(Experiment(repo))) as c:
        await call(c, "experiment", content="2\n", description="two")
        before = snapshot(repo)
        refusals = [
            ({"edits": [{"old": "nope", "new": "3"}]}, "does not occur"),
            ({"content": "2\n"}, "exactly as the incumbent has it"),
            ({"content": "3\n", "description": " \n\t"}, "description is empty"),
            ({"content": "3\x00\n"}, "NUL byte"),
            ({"content": "3\n", "cost_usd": 1e9}, "cost_usd must be"),
            ({"content": "3\n", "edits": [{"old": "2", "new": "3"}]}, "exactly one of"),
        ]
        for args, says in refusals:
            text = await call_error(c, "experiment", **{"description": "refused", **args})
            assert says in text, (args, text)
            assert snapshot(repo) == before, args
        # A harness changed behind the server's back: the commit is refused, the edit taken back.
        (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text() + "# tampered\n")
        text = await call_error(c, "experiment", content="3\n", description="three")
        assert "evaluate.py" in text and "Nothing was committed" in text
        assert snapshot(repo) == before and not git(repo, "status", "--porcelain")
        assert (await call(c, "experiment", content="3\n", description="three"))["status"] == "keep"
    assert [r["experiment"] for r in records(repo)] == [1, 2, 3]


@pytest.mark.anyio
async def test_a_spent_budget_refuses_the_experiment_and_leaves_nothing_behind(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1", max_experiments=2)
    async with Client(build_server(Experiment(repo))) as c:
        out = await call(c, "experiment", content="2\n", description="two")
        assert out["budget"].startswith("stop: max_experiments reached") and out["next"] == "stop"
        before = snapshot(repo)
        text = await call_error(c, "experiment", content="3\n", description="three")
        assert "the budget is spent: max_experiments reached (2 of 2)" in text
        assert snapshot(repo) == before


@pytest.mark.anyio
async def test_a_budget_spent_by_the_baseline_says_the_edit_was_not_tried(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1", max_experiments=1)
    async with Client(build_server(Experiment(repo))) as c:
        out = await call(c, "experiment", content="2\n", description="two")
        assert (out["status"], out["experiment"], out["baseline"], out["next"]) == ("keep", 1, True, "stop")
        assert out["reason"].endswith("Your edit was not tried.")
    assert (repo / "value.txt").read_text() == "1\n" and len(records(repo)) == 1


@pytest.mark.anyio
async def test_a_failed_baseline_is_the_answer_and_stops_the_loop(make_repo: MakeRepo) -> None:
    repo = make_repo(value="crash")
    async with Client(build_server(Experiment(repo))) as c:
        out = await call(c, "experiment", content="2\n", description="two")
        assert (out["status"], out["experiment"], out["next"]) == ("crash", 1, "stop")
        assert "Traceback: boom" in out["tail"] and "baseline could not be measured" in out["budget"]
    assert (repo / "value.txt").read_text() == "crash\n"


# --- the same ledger as the five step tools ----------------------------------------------------

MOVES = ["3", "2", "crash", "nan", "nometric", "5"]
SAME = ("experiment", "status", "metrics", "description", "notes", "diff_lines", "tokens_used", "cost_usd")
SAME += ("rule", "reason", "best_metrics", "cumulative_cost_usd", "stage", "tag", "repeats", "std")


@pytest.mark.anyio
async def test_experiment_writes_the_ledger_the_five_step_tools_write(make_repo: MakeRepo) -> None:
    steps_repo, one_repo = make_repo(value="1", timeout=1, crashes=5), make_repo(value="1", timeout=1, crashes=5)
    async with Client(build_server(Experiment(steps_repo))) as c:
        await call(c, "run_eval")
        await call(c, "decide")
        await call(c, "log_result")
        for value in MOVES:
            await call(c, "write_target", content=value + "\n")
            await call(c, "commit", description=f"try {value}")
            assert (await call(c, "run_eval"))["status"] != "running"
            await call(c, "decide")
            await call(c, "log_result", notes=f"n {value}", tokens_used=11, cost_usd=0.5)
    async with Client(build_server(Experiment(one_repo))) as c:
        for value in MOVES:
            args = {"notes": f"n {value}", "tokens_used": 11, "cost_usd": 0.5}
            await call(c, "experiment", content=value + "\n", description=f"try {value}", **args)
    steps, one = records(steps_repo), records(one_repo)
    assert [{k: r.get(k) for k in SAME} for r in one] == [{k: r.get(k) for k in SAME} for r in steps]
    assert (one_repo / "value.txt").read_text() == (steps_repo / "value.txt").read_text() == "5\n"
    assert [line.split("\t")[1:] for line in (one_repo / "results.tsv").read_text().splitlines()] == [
        line.split("\t")[1:] for line in (steps_repo / "results.tsv").read_text().splitlines()
    ]


# --- the step tools and the server's own decide-and-log ----------------------------------------


@pytest.mark.anyio
async def test_step_tools_cannot_decide_or_log_a_one_call_run_and_nothing_is_logged_twice(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1")
    async with Client(build_server(Experiment(repo))) as c:
        await call(c, "experiment", content="2\n", description="two")
        out = await call(c, "experiment", content="sleep 0.5 3\n", description="slow", wait_seconds=0)
        assert out["status"] == "running"
        seen: Counter[str] = Counter()

        async def racer(tool: str) -> None:
            with anyio.fail_after(WAIT_S):
                while len(records(repo)) < 3:
                    res = await c.call_tool(tool, {"wait_seconds": 0.05} if tool == "run_eval" else {})
                    text = res.content[0].text  # type: ignore[union-attr]
                    seen["error" if res.is_error else "ok"] += 1
                    if res.is_error:  # a racer that came after the row is told to start the next one
                        assert "(next: run_eval)" in text or "(next: write_target)" in text, text
                    await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            for tool in ("decide", "log_result", "run_eval", "decide", "log_result"):
                tg.start_soon(racer, tool)
        final = await call(c, "run_eval")
        assert (final["status"], final["experiment"]) == ("keep", 3)
    assert [r["experiment"] for r in records(repo)] == [1, 2, 3]
    assert seen["error"] > 0 and seen["ok"] > 0


def test_the_run_thread_and_racing_threads_log_a_one_call_run_once(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1")
    exp = Experiment(repo)
    one = OneCall(exp)
    errors: list[BaseException] = []
    try:
        for value in ["9", "2", "1.5", "crash", "3", "0.5"]:  # the first call measures the baseline only
            step = one.begin(Request(f"try {value}", content=f"sleep 0.05 {value}\n" if value[0] != "c" else "crash\n"))
            stop = threading.Event()

            def decide() -> None:
                with exp.lock:  # as the decide tool does
                    one.refuse_step("decide")
                    exp.decide()

            def log_result() -> None:
                with exp.lock:
                    one.refuse_step("log_result")
                    exp.log_result(notes="racer")

            def race(stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    for op in (one.result, decide, log_result, one.settled):
                        try:
                            op()
                        except AutoexpError:
                            pass
                        except BaseException as e:  # anything else is a bug
                            errors.append(e)
                            return

            threads = [threading.Thread(target=race) for _ in range(4)]
            for t in threads:
                t.start()
            assert step.job.done.wait(WAIT_S)
            stop.set()
            for t in threads:
                t.join(WAIT_S)
            assert one.result() is not None and exp.state.phase == Phase.IDLE
        assert not errors, errors
        rows = records(repo)
        assert [r["experiment"] for r in rows] == list(range(1, 7))
        assert all(r["notes"] == "" for r in rows), "logged by the server, never by a racer"
    finally:
        exp.close()


@pytest.mark.anyio
async def test_a_step_run_is_left_to_the_agent_to_decide_and_log(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1")
    async with Client(build_server(Experiment(repo))) as c:
        await call(c, "experiment", content="2\n", description="two")
        await call(c, "write_target", content="sleep 0.2 3\n")
        await call(c, "commit", description="slow three")
        ev = await call(c, "run_eval", wait_seconds=10)
        assert (ev["status"], ev["next"]) == ("done", "decide")
        assert len(records(repo)) == 2, "the server did not log a step run"
        assert (await call(c, "decide"))["status"] == "keep"
        assert (await call(c, "log_result"))["next"] == "write_target"
        assert (await call(c, "budget_status"))["next"] == "write_target"


# --- restarts: a one-call run left measured or decided is finished by the next server -----------


@pytest.mark.parametrize("left", ["evaluated", "decided"])
def test_a_restart_finishes_a_one_call_run_left_measured_or_decided(make_repo: MakeRepo, left: str) -> None:
    repo = make_repo(value="1")
    exp = Experiment(repo)
    one = OneCall(exp)
    try:
        step = one.begin(Request("baseline first", content="2\n"))
        assert step.job.done.wait(WAIT_S)
        exp.on_run_end = None  # as if killed the moment the run's result was saved
        step = one.begin(Request("try 2", content="2\n", notes="two", tokens_used=5))
        assert step.job.done.wait(WAIT_S)
        assert exp.state.phase == Phase.EVALUATED and exp.next_tool() == "run_eval"
        with pytest.raises(OrderError):
            one.refuse_step("decide")
        if left == "decided":
            exp.decide()  # killed after the decision, before the row
    finally:
        exp.close()
    assert len(records(repo)) == 1
    opener = Opener(lambda: Experiment(repo))
    try:
        opener.get()
        rows = records(repo)
        assert [(r["experiment"], r["status"], r["notes"], r["tokens_used"]) for r in rows[1:]] == [
            (2, "keep", "two", 5)
        ]
        assert opener.one_call().result() is not None and head(repo).startswith(rows[1]["commit"])
    finally:
        opener.close()
    assert verify(repo) == []


# --- what the agent reads ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_listing_and_an_experiment_answer_are_small(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1")
    async with Client(build_server(Experiment(repo))) as c:
        tools = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in (await c.list_tools()).tools]
        listing = json.dumps(tools, separators=(",", ":"))
        assert len(listing) <= LISTING_GOAL_BYTES, len(listing)
        assert '"title"' not in json.dumps([t["outputSchema"] for t in tools]) and '"null"' not in listing
        with anyio.fail_after(WAIT_S):
            res = await c.call_tool("experiment", {"content": "2\n", "description": "two"})
        text = res.content[0].text  # type: ignore[union-attr]
        assert len(text.encode()) <= RESULT_GOAL_BYTES and "\n" not in text and ": " not in text.split('"reason"')[0]
        assert json.loads(text) == res.structured_content


@pytest.mark.anyio
async def test_experiment_reports_progress_while_it_waits(make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("autoexp_mcp.server.PROGRESS_EVERY_S", 0.05)
    repo = make_repo(value="1")
    progress: list[float] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(p)

    async with Client(build_server(Experiment(repo))) as c:
        await call(c, "experiment", content="2\n", description="two")
        with anyio.fail_after(WAIT_S):
            res = await c.call_tool(
                "experiment", {"content": "sleep 0.4 3\n", "description": "slow"}, progress_callback=on_progress
            )
        assert res.structured_content is not None and res.structured_content["status"] == "keep"
    assert progress


# --- kill -9 anywhere inside an `experiment` call ----------------------------------------------


def disk_phase(repo: Path) -> str:
    state = json.loads((repo / ".autoexp" / "state.json").read_text())
    return str(state["phase"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_anywhere_inside_experiment_calls_restarts_consistent(make_repo: MakeRepo) -> None:
    from test_fault_injection import StdioServer, wait_until

    marker = f"autoexp-oneshot-fi-{os.getpid()}"
    config = harness_config(timeout=20, wait=20, max_experiments=200, crashes=100).replace(
        "evaluate.py", f"evaluate.py {marker}", 1
    )
    repo = make_repo(value="1", config=config)
    log = repo.parent / "server-stderr.log"
    rnd = random.Random(int(os.environ.get("AUTOEXP_FI_SEED", "7")))
    harness = (repo / "evaluate.py").read_bytes()
    phases: Counter[str] = Counter()
    server = StdioServer(repo, log)
    values = ["{n}", "0.5", "crash", "sleep 0.3 {n}", "nometric"]
    try:
        server.call("experiment", content="2\n", description="warm up", tokens_used=3)  # the baseline too
        t0 = time.monotonic()
        server.call("experiment", content="3\n", description="time one call", tokens_used=3)
        call_s = time.monotonic() - t0
        for k in range(40):
            st = json.loads((repo / ".autoexp" / "state.json").read_text())
            value = values[k % len(values)].format(n=st["experiments"] + 10)
            nxt = server.call("budget_status")["next"]
            if nxt == "run_eval":  # a run left committed by the previous kill: finish it first
                while server.call("run_eval", wait_seconds=20)["status"] == "running":
                    pass
            # A third of the kills at a random point of the call, a third mid-eval, a third after the
            # answer: every phase is hit whatever the machine's speed.
            if k % 3 == 1:
                value = f"sleep 0.5 {st['experiments'] + 10}"
            rid = server.send_call("experiment", content=value + "\n", description=f"k{k} {value}", tokens_used=3)
            if k % 3 == 0:
                time.sleep(rnd.uniform(0, call_s * 1.5 + (0.3 if value.startswith("sleep") else 0)))
            elif k % 3 == 1:
                wait_until(lambda: disk_phase(repo) == "running", 20, "the eval to start")
            else:
                server.response(rid, 60)
            server.kill()
            phases[disk_phase(repo)] += 1
            server = StdioServer(repo, log)
            status = server.call("budget_status")
            rows = records(repo)
            assert [r["experiment"] for r in rows] == list(range(1, len(rows) + 1)), "rows lost or logged twice"
            st = json.loads((repo / ".autoexp" / "state.json").read_text())
            assert status["experiments_used"] == st["experiments"] == len(rows)
            incumbent = st["incumbent"]["commit"]
            if st["phase"] in ("idle", "edited", "decided"):
                assert head(repo) == incumbent, st["phase"]
            else:
                assert head(repo) == st["pending"]["commit"], st["phase"]
            assert (repo / "evaluate.py").read_bytes() == harness
            assert all(r["tokens_used"] == 3 for r in rows[1:]), "every row carries the spend it was given"
            wait_until(lambda: not cmdline_pids(marker), 10, "the killed server's eval to be stopped")
        server.call("experiment", content="99\n", description="after the kills", tokens_used=3)
    finally:
        server.close()
    print(f"\nphases on disk at the kills: {dict(phases)}")
    assert phases["running"] >= 5 and phases["idle"] >= 5, phases
    assert sum(phases.values()) == 40
    assert records(repo)[-1]["description"] == "after the kills"
    assert verify(repo) == []
