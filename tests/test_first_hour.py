"""Wrong results and traps a new user met in the loop itself: a CRLF target, drift figures that
let a candidate skip the hold-out, the wall clock started by a probe, a broken baseline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autoexp_mcp.errors import GuardError
from autoexp_mcp.loop import Experiment
from conftest import MakeRepo, baseline, baseline_and_close, first_eval, git, harness_config, play


def cli(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """The installed command on `repo`, as a user runs it."""
    from conftest import installed_command, server_env

    argv = [installed_command(), *args, "--repo", str(repo)]
    out = subprocess.run(argv, capture_output=True, text=True, env=server_env(), timeout=60)
    assert not ok or out.returncode == 0, out.stdout + out.stderr
    return out


def jsonl(repo: Path) -> list[dict]:
    return [json.loads(line) for line in (repo / "experiments.jsonl").read_text().splitlines()]


def test_a_crlf_target_is_measured_as_committed_and_leaves_the_tree_clean(make_repo: MakeRepo) -> None:
    harness = "data = open('value.txt', 'rb').read()\nprint(f'score: {float(data.split()[0])}')\n"
    harness += "assert data.endswith(b'\\r\\n'), 'the eval measures the committed bytes'\n"
    repo = make_repo(files={"evaluate.py": harness})
    (repo / "value.txt").write_bytes(b"1\r\n")
    git(repo, "commit", "-qam", "crlf target")
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content="2\r\n")
        exp.commit("two, crlf")
        view = exp.run_eval(30)
        assert view.status == "done", view.tail
        assert exp.decide().status == "keep"
        exp.log_result()
    finally:
        exp.close()
    assert (repo / "value.txt").read_bytes() == b"2\r\n"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


DRIFT_HARNESS = textwrap.dedent(
    """\
    import os
    value = float(open("value.txt").read())
    # The incumbent (10) measures 10.4 when measured again: within the 0.5 tolerance, no drift.
    drifted = value == 10 and int(os.environ["AUTOEXP_RUN"]) > 1
    print(f"score: {value + 0.4 if drifted else value}")
    """
)
HOLDOUT = "value = float(open('value.txt').read())\nprint(f'score: {100 - value}')\n"


def test_a_re_measured_incumbent_within_the_noise_never_lets_a_candidate_skip_the_holdout(
    make_repo: MakeRepo,
) -> None:
    extra = f'\n[policy]\ndrift_every = 1\n\n[holdout]\neval = "{sys.executable} holdout.py"\n'
    cfg = harness_config(extra=extra).replace('direction = "max"', 'direction = "max"\ntolerance = 0.5')
    repo = make_repo("10", config=cfg, files={"evaluate.py": DRIFT_HARNESS, "holdout.py": HOLDOUT})
    exp = Experiment(repo)
    try:
        baseline(exp)
        # 10.6 beats the recorded 10 by more than the tolerance, and the re-measured 10.4 by less.
        exp.write_target(content="10.6\n")
        exp.commit("a gain that does not generalise")
        exp.run_eval(30)
        d = exp.decide()
        exp.log_result()
    finally:
        exp.close()
    assert "no drift" in d.reason
    assert (d.status, d.rule) == ("discard", "holdout"), "compared with the recorded 10: the hold-out ran and failed"
    assert jsonl(repo)[-1]["holdout"]["passed"] is False


def test_the_wall_clock_budget_starts_with_the_baseline_run_not_the_first_start(make_repo: MakeRepo) -> None:
    repo = make_repo()
    exp = Experiment(repo)  # e.g. an Inspector probe that lists the tools and leaves
    exp.close()
    opened = time.time()
    exp = Experiment(repo)
    try:
        assert exp.state.started_at < opened
        exp.run_eval(30)
        assert exp.state.started_at >= opened
        started = exp.state.started_at
        exp.decide()
        exp.log_result()
        play(exp, "2")
        assert exp.state.started_at == started, "set once, by the first run"
    finally:
        exp.close()


# --- a broken baseline, and config changes between runs ---------------------------------------


def test_a_baseline_that_cannot_be_measured_stops_at_once_and_is_measured_again_after_a_fix(
    make_repo: MakeRepo,
) -> None:
    repo = make_repo(config=harness_config().replace('name = "score"', 'name = "scroe"'))  # a typo
    exp = Experiment(repo)
    try:
        view = exp.run_eval(30)
        assert view.status == "crash"
        exp.decide()
        logged = exp.log_result()
        assert logged.next == "stop" and logged.budget.stop
        assert "baseline could not be measured" in logged.budget.reason and "commit the fix" in logged.budget.reason
        with pytest.raises(Exception, match="baseline could not be measured"):
            exp.run_eval(30)
    finally:
        exp.close()
    exp = Experiment(repo)  # restarted without a fix: still stopped, still saying why
    try:
        assert exp.budget_status().stop
    finally:
        exp.close()
    (repo / "autoexp.toml").write_text((repo / "autoexp.toml").read_text().replace('"scroe"', '"score"'))
    git(repo, "commit", "-qam", "fix the metric name")
    exp = Experiment(repo)
    try:
        assert not exp.budget_status().stop
        assert exp.run_eval(30).status == "done"
        assert exp.decide().status == "keep"
        exp.log_result()
        assert exp.state.incumbent is not None and exp.state.incumbent.commit == git(repo, "rev-parse", "HEAD")
    finally:
        exp.close()
    assert [r["status"] for r in jsonl(repo)] == ["crash", "keep"]


def test_a_budget_change_committed_between_runs_is_adopted_said_and_logged(make_repo: MakeRepo) -> None:
    repo = make_repo()
    exp = Experiment(repo)
    try:
        baseline(exp)
        play(exp, "2")
    finally:
        exp.close()
    (repo / "autoexp.toml").write_text(
        (repo / "autoexp.toml").read_text().replace("max_experiments = 50", "max_experiments = 3")
    )
    git(repo, "commit", "-qam", "a smaller budget")
    exp = Experiment(repo)
    try:
        status = exp.budget_status()
        assert status.experiments_left == 1
        play(exp, "1")  # worse: reverted, and the config change stays
    finally:
        exp.close()
    assert "max_experiments = 3" in git(repo, "show", "HEAD:autoexp.toml")
    assert jsonl(repo)[-1]["config_change"] == "budget.max_experiments: 50 → 3"
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""


def test_a_config_change_that_makes_results_incomparable_is_refused_with_the_way_out(make_repo: MakeRepo) -> None:
    repo = make_repo()
    baseline_and_close(repo)
    (repo / "autoexp.toml").write_text(
        (repo / "autoexp.toml").read_text().replace('direction = "max"', 'direction = "min"')
    )
    git(repo, "commit", "-qam", "flip the direction")
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(GuardError, match=r"metric\.0\.direction.*incomparable.*--from"):
        Experiment(repo)
    assert git(repo, "rev-parse", "HEAD") == head, "the user's commit is never reset silently"


# --- the CLI in a pipeline's later stage -------------------------------------------------------


def test_status_and_prompt_in_a_later_stage_speak_of_that_stage(tmp_path: Path) -> None:
    from conftest import pipeline_repo

    repo = pipeline_repo(tmp_path / "repo", stage2_budget=3)
    exp = Experiment(repo)
    try:
        baseline(exp)
        play(exp, "2")  # stage 1's budget of 2 is spent: stage 2 starts
        baseline(exp)  # stage 2's baseline: 1 of its 3 experiments
        assert exp.budget_status().stage == "train"
    finally:
        exp.close()

    status = json.loads(cli(repo, "status", "--json").stdout)
    assert status["budget"]["stop"] is False
    assert status["budget"]["experiments_used"] == 1 and status["budget"]["experiments_left"] == 2
    prompt = cli(repo, "prompt").stdout
    assert "stage2.txt" in prompt and "Pipeline stage**: 2 of 2 (train)" in prompt
    assert "loss" in prompt


ENV_CHECK = textwrap.dedent(
    """\
    import os
    for name in ("AUTOEXP_TAG", "AUTOEXP_TARGET", "AUTOEXP_EXPERIMENT", "AUTOEXP_COMMIT", "AUTOEXP_RUN"):
        assert os.environ.get(name), name
    assert os.environ["AUTOEXP_TAG"] == "t" and os.environ["AUTOEXP_TARGET"] == "value.txt"
    assert len(os.environ["AUTOEXP_COMMIT"]) == 40
    print("score: 1")
    """
)


def test_check_runs_the_eval_with_the_environment_the_server_gives_it(make_repo: MakeRepo) -> None:
    repo = make_repo(files={"evaluate.py": ENV_CHECK})
    cli(repo, "check")
    assert first_eval(repo).status == "done"


def test_check_says_what_serve_would_refuse(make_repo: MakeRepo) -> None:
    repo = make_repo()
    (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text() + "\n# an uncommitted edit\n")
    out = cli(repo, "check", ok=False)
    assert out.returncode == 1
    assert "FAIL:    the working tree has uncommitted changes to tracked files: evaluate.py" in out.stdout
    assert "serve` will refuse to start" in out.stdout
    with pytest.raises(Exception, match="uncommitted changes to tracked files: evaluate.py"):
        Experiment(repo)
