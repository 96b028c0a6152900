"""The Experiment (loop.py) driven directly: order, outcomes, budget, git, ledger, restarts."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from autoexp_mcp.errors import BudgetExhausted, DirtyTreeError, GuardError, OrderError
from autoexp_mcp.loop import Experiment
from autoexp_mcp.state import Phase, load_state
from conftest import MakeRepo, baseline, git, harness_config, play


def tsv_rows(repo: Path) -> list[list[str]]:
    lines = (repo / "results.tsv").read_text().splitlines()
    return [line.split("\t") for line in lines[1:]]


def jsonl(repo: Path) -> list[dict]:
    return [json.loads(line) for line in (repo / "experiments.jsonl").read_text().splitlines()]


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


def test_scripted_agent_covers_every_outcome(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1", timeout=1.5, crashes=5)
    exp = Experiment(repo)
    try:
        assert git(repo, "branch", "--show-current") == "autoexp/t"
        start = head(repo)

        # Baseline: run_eval on the untouched tree, kept.
        assert exp.budget_status().next == "run_eval"
        view = exp.run_eval(30)
        assert (view.status, view.baseline, view.metrics) == ("done", True, {"score": 1.0})
        d = exp.decide()
        assert (d.status, d.rule) == ("keep", "baseline")
        row = exp.log_result(notes="the start").row
        assert (row.experiment, row.status, row.description) == (1, "keep", "baseline")
        assert head(repo) == start
        assert exp.budget_status().experiments_used == 1

        expected = [
            ("3", "done", "keep", 3.0),
            ("2", "done", "discard", 3.0),
            ("crash", "crash", "crash", 3.0),
            ("sleep 30 9", "timeout", "timeout", 3.0),
            ("nometric", "crash", "crash", 3.0),
            ("nan", "crash", "crash", 3.0),
            ("5", "done", "keep", 5.0),
            ("5.0", "done", "discard", 5.0),  # a tie is discarded
            ("4", "done", "discard", 5.0),
            ("7", "done", "keep", 7.0),
        ]
        for i, (value, eval_status, decision, best) in enumerate(expected, start=2):
            before = head(repo)
            exp.write_target(content=value + "\n")
            c = exp.commit(f"try {value}")
            assert c.experiment == i
            assert head(repo).startswith(c.commit) and head(repo) != before
            # Only the target changed in the experiment commit.
            assert git(repo, "diff", "--name-only", before, "HEAD") == "value.txt"
            view = exp.run_eval(30)
            assert view.status == eval_status, (value, view)
            d = exp.decide()
            assert d.status == decision, (value, d)
            if decision == "keep":
                assert head(repo).startswith(c.commit)
                assert (repo / "value.txt").read_text() == value + "\n"
            else:
                assert head(repo) == before, "a discarded or crashed experiment is reverted"
                assert (repo / "value.txt").read_text() != value + "\n"
            log = exp.log_result(tokens_used=1000, cost_usd=0.01)
            assert log.row.experiment == i and log.row.status == decision
            assert log.budget.experiments_used == i
            assert log.budget.best is not None and log.budget.best.metrics["score"] == best
            rows = tsv_rows(repo)
            assert len(rows) == i
            assert rows[-1][0] == c.commit and rows[-1][2] == decision and rows[-1][3] == f"try {value}"
            assert not git(repo, "status", "--porcelain"), "ledger and state stay invisible to git"

        records = jsonl(repo)
        assert [r["experiment"] for r in records] == list(range(1, 12))
        assert records[4]["status"] == "timeout" and "timeout" in records[4]["reason"]
        assert "no usable metric" in records[5]["reason"] and "score" in records[5]["reason"]
        assert "not a finite number" in records[6]["reason"]
        assert records[3]["metrics"] == {"score": None}
        assert records[-1]["cumulative_cost_usd"] == pytest.approx(0.10)
        assert all(r["prev_hash"] == p["hash"] for p, r in itertools.pairwise(records))
        assert tsv_rows(repo)[3][1] == "", "a crash row's metric field is empty, not a zero"
        # The branch holds exactly the kept commits on top of the start.
        kept = git(repo, "log", "--format=%s", f"{start}..HEAD").splitlines()
        assert kept == ["autoexp #11: try 7", "autoexp #8: try 5", "autoexp #2: try 3"]
        status = exp.budget_status()
        assert status.experiments_used == 11 and status.experiments_left == 39
        assert status.cost_usd == pytest.approx(0.10)
    finally:
        exp.close()


def test_tools_refuse_out_of_order_and_name_the_next(experiment: Experiment) -> None:
    exp = experiment
    for call, nxt in [
        (lambda: exp.write_target(content="2\n"), "run_eval"),
        (lambda: exp.commit("x"), "run_eval"),
        (exp.decide, "run_eval"),
        (exp.log_result, "run_eval"),
    ]:
        with pytest.raises(OrderError) as e:
            call()
        assert e.value.next_tool == nxt
    exp.run_eval(30)
    for call in (lambda: exp.write_target(content="2\n"), lambda: exp.commit("x"), exp.log_result):
        with pytest.raises(OrderError) as e:
            call()
        assert e.value.next_tool == "decide"
    exp.decide()
    with pytest.raises(OrderError, match="Call log_result next"):
        exp.run_eval(1)
    exp.log_result()
    with pytest.raises(OrderError, match="Call write_target next"):
        exp.commit("nothing written")
    exp.write_target(content="2\n")
    with pytest.raises(OrderError, match="Call commit next"):
        exp.decide()
    # read_target and budget_status are allowed in every phase.
    assert exp.read_target().content == "2\n"
    assert exp.budget_status().phase == "edited"


def test_commit_refuses_an_unchanged_target_and_an_empty_description(experiment: Experiment) -> None:
    exp = experiment
    baseline(exp)
    exp.write_target(content="1\n")
    with pytest.raises(GuardError, match="identical to the incumbent"):
        exp.commit("same")
    exp.write_target(content="2\n")
    with pytest.raises(GuardError, match="description is empty"):
        exp.commit(" \t\n")


def test_edits_must_match_exactly_once_and_leave_the_file_alone_otherwise(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo(value="10 # ten ten"))
    try:
        baseline(exp)
        with pytest.raises(GuardError, match="occurs 2 times"):
            exp.write_target(edits=[("ten", "nine")])
        with pytest.raises(GuardError, match="does not occur"):
            exp.write_target(edits=[("eleven", "nine")])
        assert exp.read_target().content == "10 # ten ten\n"
        res = exp.write_target(edits=[("10 #", "12 #"), ("ten ten", "twelve")])
        assert exp.read_target().content == "12 # twelve\n"
        assert res.diff_lines == 2
    finally:
        exp.close()


def test_budget_exhaustion_stops_new_experiments(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo(max_experiments=3))
    try:
        baseline(exp)
        play(exp, "2")
        status = exp.budget_status()
        assert (status.stop, status.experiments_left) == (False, 1)
        play(exp, "3")
        status = exp.budget_status()
        assert status.stop and "max_experiments" in status.reason and status.next == "stop"
        with pytest.raises(BudgetExhausted, match="max_experiments reached"):
            exp.write_target(content="4\n")
        assert exp.read_target().content == "3\n", "a refused write changes nothing"
    finally:
        exp.close()


def test_consecutive_crashes_stop_the_loop_and_a_success_resets_the_count(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo(crashes=2))
    try:
        baseline(exp)
        play(exp, "crash")
        assert exp.budget_status().consecutive_crashes == 1
        play(exp, "4")
        assert exp.budget_status().consecutive_crashes == 0
        play(exp, "crash")
        play(exp, "nometric")
        status = exp.budget_status()
        assert status.stop and "2 crashes in a row" in status.reason
    finally:
        exp.close()


def test_a_long_eval_takes_three_run_eval_calls_on_the_same_run(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo(value="sleep 1.2 4"))
    try:
        first = exp.run_eval(0.4)
        assert first.status == "running" and first.next == "run_eval"
        second = exp.run_eval(0.4)
        assert second.status == "running" and second.run == first.run
        assert second.elapsed_s >= first.elapsed_s
        third = exp.run_eval(10)
        assert third.status == "done" and third.run == first.run and third.metrics == {"score": 4.0}
        # Calling again after it finished returns the same result; it never starts a new run.
        again = exp.run_eval(1)
        assert again.run == first.run and again.next == "decide"
        assert len(list((exp.dir / "runs").glob("*.log"))) == 1
    finally:
        exp.close()


def test_start_refuses_a_dirty_tree_and_lists_the_files(make_repo: MakeRepo) -> None:
    repo = make_repo()
    (repo / "evaluate.py").write_text("print('score: 100')\n")
    with pytest.raises(DirtyTreeError, match="evaluate.py"):
        Experiment(repo)
    assert git(repo, "branch", "--show-current") == "main"
    # Untracked files are not dirt: they may be data.
    git(repo, "checkout", "--", "evaluate.py")
    (repo / "notes.txt").write_text("mine")
    Experiment(repo).close()


def test_a_restart_resumes_the_branch_and_the_ledger(make_repo: MakeRepo) -> None:
    repo = make_repo()
    exp = Experiment(repo)
    baseline(exp)
    play(exp, "3")
    exp.close()
    git(repo, "checkout", "-q", "main")
    exp = Experiment(repo)
    try:
        assert git(repo, "branch", "--show-current") == "autoexp/t"
        assert exp.budget_status().experiments_used == 2
        assert exp.read_target().content == "3\n"
        assert play(exp, "4") == ("done", "keep")
        assert [r["experiment"] for r in jsonl(repo)] == [1, 2, 3]
    finally:
        exp.close()


@pytest.mark.parametrize("stop_at", ["edited", "committed", "running", "evaluated", "decided"])
def test_a_restart_at_any_phase_loses_nothing_and_logs_nothing_twice(make_repo: MakeRepo, stop_at: str) -> None:
    repo = make_repo(value="1")
    exp = Experiment(repo)
    baseline(exp)
    exp.write_target(content="sleep 0.5 6\n")
    if stop_at != "edited":
        exp.commit("six, slowly")
    if stop_at == "running":
        assert exp.run_eval(0.05).status == "running"
    elif stop_at in ("evaluated", "decided"):
        exp.run_eval(30)
    if stop_at == "decided":
        exp.decide()
    exp.close()  # the server goes away (a running eval is killed with it)

    exp = Experiment(repo)
    try:
        st = load_state(repo)
        if stop_at == "running":  # the run stopped with the server: logged, counted, reverted
            assert st is not None and st.phase == Phase.IDLE
            assert [(r["experiment"], r["status"]) for r in jsonl(repo)] == [(1, "keep"), (2, "interrupted")]
            assert exp.read_target().content == "1\n"
            assert exp.budget_status().consecutive_crashes == 1
            return
        assert st is not None and st.phase == Phase(stop_at)
        assert exp.read_target().content == "sleep 0.5 6\n"
        if stop_at == "edited":
            exp.commit("six, slowly")
        if stop_at in ("edited", "committed"):
            view = exp.run_eval(30)
            assert view.status == "done" and view.metrics == {"score": 6.0}
        if stop_at != "decided":
            exp.decide()
        exp.log_result()
        records = jsonl(repo)
        assert [r["experiment"] for r in records] == [1, 2]
        assert records[-1]["status"] == "keep" and records[-1]["metrics"] == {"score": 6.0}
    finally:
        exp.close()


def test_a_crash_between_ledger_append_and_state_write_is_not_logged_twice(make_repo: MakeRepo) -> None:
    repo = make_repo()
    exp = Experiment(repo)
    exp.run_eval(30)
    exp.decide()
    state_before = (repo / ".autoexp" / "state.json").read_bytes()
    exp.log_result()
    exp.close()
    # Put back the state as it was before log_result: the row is in, the state does not know.
    (repo / ".autoexp" / "state.json").write_bytes(state_before)
    exp = Experiment(repo)
    try:
        assert exp.budget_status().phase == "idle"
        assert exp.budget_status().experiments_used == 1
        assert len(jsonl(repo)) == 1
    finally:
        exp.close()


def test_a_commit_made_but_not_recorded_comes_back_as_an_uncommitted_edit(make_repo: MakeRepo) -> None:
    repo = make_repo()
    exp = Experiment(repo)
    baseline(exp)
    exp.write_target(content="8\n")
    exp.close()
    git(repo, "commit", "-q", "-am", "made by hand")  # as if killed after git commit
    exp = Experiment(repo)
    try:
        assert exp.budget_status().phase == "edited"
        assert exp.read_target().content == "8\n"
        assert git(repo, "log", "-1", "--format=%s") == "initial"
        exp.commit("eight")
        assert exp.run_eval(30).metrics == {"score": 8.0}
    finally:
        exp.close()


def test_a_baseline_crash_stops_until_a_fix_is_committed(make_repo: MakeRepo) -> None:
    repo = make_repo(value="crash")
    exp = Experiment(repo)
    try:
        assert exp.run_eval(30).status == "crash"
        d = exp.decide()
        assert d.status == "crash" and not d.reverted
        log = exp.log_result()
        assert log.next == "stop" and "baseline could not be measured" in log.budget.reason
        with pytest.raises(OrderError, match="baseline has not been measured"):
            exp.write_target(content="1\n")
    finally:
        exp.close()
    (repo / "value.txt").write_text("1\n")
    git(repo, "commit", "-qam", "a target that runs")
    exp = Experiment(repo)
    try:
        assert exp.budget_status().next == "run_eval"
        assert exp.run_eval(30).metrics == {"score": 1.0}
    finally:
        exp.close()


def test_a_new_tag_archives_the_previous_ledger(make_repo: MakeRepo) -> None:
    repo = make_repo()
    exp = Experiment(repo)
    baseline(exp)
    exp.close()
    cfg = (repo / "autoexp.toml").read_text().replace('tag = "t"', 'tag = "t2"')
    git(repo, "checkout", "-q", "main")
    (repo / "autoexp.toml").write_text(cfg)
    git(repo, "commit", "-qam", "new tag")
    exp = Experiment(repo)
    try:
        assert not (repo / "results.tsv").exists()
        assert (repo / ".autoexp" / "archive" / "t" / "results.tsv").exists()
        assert git(repo, "branch", "--show-current") == "autoexp/t2"
    finally:
        exp.close()


def test_starting_from_a_previous_best_commit(make_repo: MakeRepo) -> None:
    repo = make_repo(config=harness_config())
    exp = Experiment(repo)
    baseline(exp)
    play(exp, "5")
    best = git(repo, "rev-parse", "HEAD")
    exp.close()
    git(repo, "checkout", "-q", "main")
    (repo / "autoexp.toml").write_text((repo / "autoexp.toml").read_text().replace('tag = "t"', 'tag = "next"'))
    git(repo, "commit", "-qam", "next tag")
    exp = Experiment(repo, from_commit=best)
    try:
        assert exp.read_target().content == "5\n"
        # The old best carries the old config; the new tag's config is committed on top of it.
        assert git(repo, "rev-parse", "HEAD~1") == best
        assert 'tag = "next"' in (repo / "autoexp.toml").read_text()
        assert git(repo, "status", "--porcelain") == ""
    finally:
        exp.close()
