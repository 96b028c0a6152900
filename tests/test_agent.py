"""The built-in agent: numbers found and edited in place in JSON, YAML, TOML and key = value
text; the strategy file; coordinate and random moves; and whole runs through a real server
(in memory for the quick tests, over stdio with `autoexp-mcp agent` for the slow ones),
where it may write nothing but the target, must stop at the budget and must get through
crashes, timeouts and refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import anyio
import pytest

from autoexp_mcp.agent import (
    AgentError,
    Search,
    Strategy,
    drive,
    find_numbers,
    format_of,
    load_strategy,
    reading,
    replace,
    yamlish,
)
from autoexp_mcp.agent.numbers import Number, render
from autoexp_mcp.config import MetricConfig, load_config
from autoexp_mcp.demo import make_example_repo
from autoexp_mcp.errors import ConfigError
from autoexp_mcp.ledger import Record
from autoexp_mcp.loop import Experiment
from autoexp_mcp.report.compare import comparison_table, curve
from autoexp_mcp.server import build_server
from conftest import git, init_repo, installed_command, server_env

RUN_TIMEOUT_S = 120.0  # a whole agent run of the tests below takes a few seconds


@pytest.fixture(autouse=True)
def _python_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The example configs run `python evaluate.py`: that must be this interpreter.
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def keys_and_literals(text: str, fmt: str) -> list[tuple[str, str]]:
    return [(n.key, n.literal) for n in find_numbers(text, fmt)]


# --- numbers in text -------------------------------------------------------------------------


def test_json_numbers_have_dotted_keys_and_keep_their_kind() -> None:
    text = '{"a": 1, "b": {"c": 0.5, "d": [2, 3e2]}, "s": "7", "t": true, "n": null}\n'
    assert keys_and_literals(text, "json") == [("a", "1"), ("b.c", "0.5"), ("b.d[0]", "2"), ("b.d[1]", "3e2")]
    a, c = find_numbers(text, "json")[:2]
    assert a.integer and not c.integer


def test_yaml_numbers_skip_strings_comments_and_block_scalars() -> None:
    text = textwrap.dedent(
        """\
        # a comment: 5
        lr: 0.001   # learning rate
        name: "12"
        model:
          depth: 4
          sizes: [8, 16]
        notes: |
          width: 9
        items:
          - w: 2
        """
    )
    assert keys_and_literals(text, "yaml") == [
        ("lr", "0.001"),
        ("model.depth", "4"),
        ("model.sizes[0]", "8"),
        ("model.sizes[1]", "16"),
        ("items[0].w", "2"),
    ]


def test_toml_and_kv_numbers_with_tables_sections_and_inline_tables() -> None:
    toml = 'title = "x"\nlr = 0.3 # c\n[model]\ndepth = 3\nttl = { a = 1, b = 2.5 }\nday = 1979-05-27\n'
    assert keys_and_literals(toml, "toml") == [
        ("lr", "0.3"),
        ("model.depth", "3"),
        ("model.ttl.a", "1"),
        ("model.ttl.b", "2.5"),
    ]
    kv = "# level = 9\nalgorithm = zlib\nlevel = 1\n[extra]\nwidth=4 ; bytes\n"
    assert keys_and_literals(kv, "kv") == [("level", "1"), ("extra.width", "4")]


def test_replace_changes_one_literal_and_keeps_the_rest_of_the_text() -> None:
    text = "# tuned by hand\nlevel = 1   # zlib level\nwbits = 15\n"
    level = find_numbers(text, "kv")[0]
    assert replace(text, [(level, 6)]) == "# tuned by hand\nlevel = 6   # zlib level\nwbits = 15\n"
    yaml = "a: 0.5  # half\nb: 2\n"
    a, b = find_numbers(yaml, "yaml")
    assert replace(yaml, [(a, 0.625), (b, 3)]) == "a: 0.625  # half\nb: 3\n"


@pytest.mark.parametrize(
    ("value", "integer", "literal"),
    [(6.0, True, "6"), (0.375, False, "0.375"), (2.0, False, "2.0"), (1e-5, False, "1.0e-5"), (1.5e7, False, "1.5e+7")],
)
def test_render_writes_a_literal_of_the_same_kind(value: float, integer: bool, literal: str) -> None:
    assert render(value, integer) == literal
    # Every format reads it back as the same number and kind.
    assert json.loads(literal) == value and tomllib.loads(f"x = {literal}")["x"] == value
    assert yamlish.load(f"x: {literal}")["x"] == value
    assert isinstance(json.loads(literal), int) == integer


def test_format_is_told_by_the_file_name() -> None:
    assert [format_of(n) for n in ("a.json", "b.YAML", "c.yml", "d.toml", "compress.conf", "x.ini")] == [
        "json",
        "yaml",
        "yaml",
        "toml",
        "kv",
        "kv",
    ]


def test_invalid_json_target_is_a_format_error_naming_the_format() -> None:
    from autoexp_mcp.agent.numbers import TargetFormatError

    with pytest.raises(TargetFormatError, match="not valid JSON"):
        find_numbers('{"a": 1,}', "json")


# --- the strategy ----------------------------------------------------------------------------


def test_strategy_file_in_yaml_sets_keys_bounds_and_search(tmp_path: Path) -> None:
    f = tmp_path / "agent_strategy.yaml"
    f.write_text("search: random\nseed: 3\nstep: 0.1\nperturb: 2\nkeys: [max_*, lr]\nbounds:\n  lr: [0.001, 2]\n")
    s = load_strategy(f)
    assert (s.search, s.seed, s.step, s.perturb) == ("random", 3, 0.1, 2)
    assert s.wants("max_depth") and s.wants("lr") and not s.wants("l2")
    assert s.bounds_of("lr") == (0.001, 2.0) and s.bounds_of("l2") == (None, None)
    assert load_strategy(f, seed=9).seed == 9
    assert load_strategy("random").search == "random" and load_strategy(None).search == "coordinate"


def test_strategy_file_with_an_unknown_setting_names_it_and_the_settings(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("search: coordinate\nexplore_rate: 0.2\n")
    with pytest.raises(ConfigError, match=r"explore_rate.*the settings are: search, seed"):
        load_strategy(f)
    with pytest.raises(ConfigError, match="no such file, and not a search name"):
        load_strategy(tmp_path / "missing.yaml")


def numbers(**values: float) -> list[Number]:
    text = json.dumps(values)
    return find_numbers(text, "json")


def test_coordinate_search_tries_up_then_down_then_halves_the_step() -> None:
    s = Search(Strategy(step=0.5, grow=1.0))
    nums = numbers(x=1.0)
    up = s.propose(nums)
    assert up is not None and up.changes[0].new == 1.5
    s.feedback(up, "discard")
    down = s.propose(nums)
    assert down is not None and down.changes[0].new == pytest.approx(0.6667)
    s.feedback(down, "discard")
    smaller = s.propose(nums)
    assert smaller is not None and smaller.changes[0].new == 1.25, "both ways failed: half the step"


def test_a_kept_move_is_pushed_further_with_a_grown_step() -> None:
    s = Search(Strategy(step=0.5, grow=2.0))
    first = s.propose(numbers(x=1.0))
    assert first is not None
    s.feedback(first, "keep")
    again = s.propose(numbers(x=1.5))
    assert again is not None and again.changes[0].new == 3.0 and again.changes[0].direction == 1


def test_integers_move_by_at_least_one_stay_positive_and_respect_bounds() -> None:
    s = Search(Strategy(step=0.1, bounds={"d": (1, 6)}))
    up = s.propose(numbers(d=6))
    assert up is not None and up.changes[0].new == 5, "at the upper bound only down is possible"
    s2 = Search(Strategy(step=0.1))
    move = s2.propose(numbers(n=1))
    assert move is not None and move.changes[0].new == 2
    s2.feedback(move, "discard")
    nothing_down = s2.propose(numbers(n=1))
    assert nothing_down is None or nothing_down.changes[0].new != 0, "an unbounded positive value stays positive"


def test_a_crash_marks_a_limit_that_later_moves_stop_short_of() -> None:
    s = Search(Strategy(step=1.0, grow=1.0))
    up = s.propose(numbers(level=6))
    assert up is not None and up.changes[0].new == 12
    s.feedback(up, "crash")
    down = s.propose(numbers(level=6))
    assert down is not None and down.changes[0].new == 3
    s.feedback(down, "discard")
    careful = s.propose(numbers(level=6))
    assert careful is not None and 6 < careful.changes[0].new < 12


def test_random_search_is_repeatable_for_a_seed_and_perturbs_that_many_values() -> None:
    nums = numbers(a=1.0, b=2.0, c=3.0, d=4.0)

    def moves(seed: int) -> list[str]:
        s = Search(Strategy(search="random", seed=seed, perturb=2))
        return [m.describe() for m in (s.propose(nums) for _ in range(5)) if m is not None]

    assert moves(1) == moves(1)
    assert moves(1) != moves(2)
    s = Search(Strategy(search="random", perturb=2))
    m = s.propose(nums)
    assert m is not None and len(m.changes) == 2 and m.kind == "random"


def test_reading_takes_budget_fields_from_a_nested_budget() -> None:
    r = reading(
        {"row": {"status": "keep"}, "budget": {"stop": True, "reason": "max", "experiments_left": 0}, "next": "stop"}
    )
    assert (r.stop, r.reason, r.experiments_left, r.next) == (True, "max", 0, "stop")
    assert reading({"status": "done", "metrics": {"a": 1.0}}).metrics == {"a": 1.0}


# --- whole runs --------------------------------------------------------------------------------


def target_only_changed(repo: Path, target: str) -> None:
    """Every commit on the experiment branch touches the target and nothing else, and the work
    tree holds nothing the agent wrote (the ledger and .autoexp/ are the server's)."""
    branch = git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    assert branch.startswith("autoexp/")
    touched = {p for p in git(repo, "log", "--format=", "--name-only", f"main..{branch}").splitlines() if p}
    assert touched <= {target}
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""


def run_in_memory(repo: Path, strategy: Strategy, **kw: object) -> tuple[object, list[str]]:
    lines: list[str] = []
    exp = Experiment(repo)
    try:

        async def go() -> object:
            with anyio.fail_after(RUN_TIMEOUT_S):
                return await drive(build_server(exp), strategy, echo=lines.append, **kw)  # type: ignore[arg-type]

        return anyio.run(go), lines
    finally:
        exp.close()


def test_agent_improves_hparams_and_writes_only_the_target(tmp_path: Path) -> None:
    repo = make_example_repo("hparams", tmp_path / "hparams")
    report, lines = run_in_memory(repo, Strategy(), max_experiments=10)
    assert report.experiments == 10  # type: ignore[attr-defined]
    assert report.best["val_accuracy"] > 0.716, lines  # type: ignore[attr-defined]
    target_only_changed(repo, "hparams.json")
    descriptions = [json.loads(r)["description"] for r in (repo / "experiments.jsonl").read_text().splitlines()]
    assert descriptions[0] == "baseline"
    assert all(d.startswith("coordinate: ") and "→" in d for d in descriptions[1:]), descriptions


HARNESS = textwrap.dedent(
    """\
    import json, sys, time
    cfg = json.load(open("params.json"))
    x, t = cfg["x"], cfg["t"]
    if x > 20:
        sys.exit("x too large")
    if t > 2:
        time.sleep(30)
    print(f"score: {-(x - 12) ** 2 - t}")
    """
)


def harness_repo(tmp_path: Path, *, params: str = '{"x": 4, "t": 1}\n', extra: str = "") -> Path:
    config = textwrap.dedent(
        f"""\
        [experiment]
        tag = "t"
        target = "params.json"
        eval = "{sys.executable} evaluate.py"
        timeout = 1.0

        [[metric]]
        name = "score"
        direction = "max"

        [budget]
        max_experiments = 12
        abort_on_consecutive_crashes = 3

        [sandbox]
        mode = "none"
        """
    )
    return init_repo(tmp_path / "repo", {"params.json": params, "evaluate.py": HARNESS, "autoexp.toml": config + extra})


def test_agent_gets_through_crashes_and_timeouts_and_stops_at_the_budget(tmp_path: Path) -> None:
    repo = harness_repo(tmp_path)
    report, lines = run_in_memory(repo, Strategy(step=2.0, grow=1.0))
    counts = report.counts  # type: ignore[attr-defined]
    assert report.experiments == 12, lines  # type: ignore[attr-defined]
    assert "max_experiments" in report.stopped  # type: ignore[attr-defined]
    assert counts.get("crash", 0) >= 1 and counts.get("timeout", 0) >= 1, lines
    assert report.best["score"] > -65, lines  # type: ignore[attr-defined]  # the baseline: x 4, t 1
    target_only_changed(repo, "params.json")


def test_agent_moves_on_after_a_refused_write(tmp_path: Path) -> None:
    # The target may not grow: "x": 9 -> 14 is one byte too many, and the server refuses it.
    repo = harness_repo(tmp_path, params='{"x": 9, "t": 1}', extra="")
    cfg = (repo / "autoexp.toml").read_text()
    (repo / "autoexp.toml").write_text(cfg.replace("timeout = 1.0", "timeout = 1.0\nmax_target_bytes = 16"))
    git(repo, "commit", "-qam", "limit the target's size")
    report, lines = run_in_memory(repo, Strategy(step=0.5, grow=1.0, keys=("x",)), max_experiments=3)
    assert report.refusals >= 1, lines  # type: ignore[attr-defined]
    assert any("over the limit" in line for line in lines), lines
    assert report.experiments == 3  # type: ignore[attr-defined]


def test_agent_stops_with_the_servers_reason_after_refusals_in_a_row(tmp_path: Path) -> None:
    # An untracked file matching `protect` changed after the snapshot: every commit is refused
    # until a person fixes it, so the agent must stop and say why instead of spinning.
    repo = harness_repo(tmp_path, extra="")
    cfg = (repo / "autoexp.toml").read_text()
    (repo / "autoexp.toml").write_text(cfg.replace("timeout = 1.0", 'timeout = 1.0\nprotect = ["data/*.csv"]'))
    (repo / "data").mkdir()
    (repo / "data" / "d.csv").write_text("1\n")
    (repo / ".gitignore").write_text("data/\n")
    git(repo, "add", ".gitignore", "autoexp.toml")
    git(repo, "commit", "-qm", "protect data")
    exp = Experiment(repo)
    lines: list[str] = []
    try:

        async def go() -> None:
            from mcp import Client

            from autoexp_mcp.agent import Agent

            async with Client(build_server(exp)) as c:
                agent = Agent(c, Strategy(), echo=lines.append)
                await agent._step("run_eval")  # the baseline
                (repo / "data" / "d.csv").write_text("2\n")
                with pytest.raises(
                    AgentError, match=r"refused 3 times in a row.*protect|refused 3 times in a row.*d\.csv"
                ):
                    await agent.run()

        anyio.run(go)
    finally:
        exp.close()


# --- through `autoexp-mcp agent` over stdio (slow) ----------------------------------------


def run_cli(repo: Path, *args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    env = {**server_env(), "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    return subprocess.run(
        [installed_command(), "agent", "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.parametrize("example", ["hparams", "cache", "compression"])
def test_agent_command_improves_the_example_within_20_experiments(example: str, tmp_path: Path) -> None:
    repo = make_example_repo(example, tmp_path / example)
    cfg = load_config(repo)
    out = run_cli(repo, "--experiments", "20", "--seed", "0")
    assert out.returncode == 0, out.stderr + out.stdout
    records = [json.loads(r) for r in (repo / "experiments.jsonl").read_text().splitlines()]
    assert 2 <= len(records) <= 20
    name, direction = cfg.objective.name, cfg.objective.direction
    base = records[0]["metrics"][name]
    kept = [r["metrics"][name] for r in records[1:] if r["status"] == "keep"]
    assert kept, out.stdout
    best = max(kept) if direction == "max" else min(kept)
    assert (best > base) if direction == "max" else (best < base), out.stdout
    assert "best:" in out.stdout and f"{name}=" in out.stdout
    target_only_changed(repo, cfg.experiment.target)


@pytest.mark.slow
def test_agent_command_is_repeatable_for_a_seed(tmp_path: Path) -> None:
    def statuses(where: str) -> list[tuple[str, str]]:
        repo = make_example_repo("hparams", tmp_path / where)
        out = run_cli(repo, "--strategy", "random", "--seed", "5", "--experiments", "8")
        assert out.returncode == 0, out.stderr
        rows = [json.loads(r) for r in (repo / "experiments.jsonl").read_text().splitlines()]
        return [(r["status"], r["description"]) for r in rows]

    assert statuses("a") == statuses("b")


@pytest.mark.slow
def test_agent_command_stops_when_the_budget_says_stop(tmp_path: Path) -> None:
    repo = make_example_repo("hparams", tmp_path / "hparams")
    text = (repo / "autoexp.toml").read_text().replace("max_experiments = 50", "max_experiments = 4")
    (repo / "autoexp.toml").write_text(text)
    git(repo, "commit", "-qam", "a small budget")
    out = run_cli(repo)
    assert out.returncode == 0, out.stderr
    assert len((repo / "experiments.jsonl").read_text().splitlines()) == 4
    assert "stopped: max_experiments" in out.stdout
    again = run_cli(repo)  # a second start does nothing: the budget is spent
    assert again.returncode == 0 and "0 experiments" in again.stdout
    assert len((repo / "experiments.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_agent_command_says_why_when_the_server_cannot_open_the_repository(tmp_path: Path) -> None:
    repo = make_example_repo("hparams", tmp_path / "hparams")
    (repo / "hparams.json").write_text("{}\n")  # a dirty tree: the server refuses to start a tag
    out = run_cli(repo, timeout=60)
    assert out.returncode != 0
    assert "cannot run the experiment" in out.stderr and "Traceback" not in out.stderr


# --- the baseline to compare with: report --against ------------------------------------------


def record(n: int, status: str, value: float | None, *, ts: str, wall: float = 1.0) -> Record:
    return Record(
        experiment=n,
        commit=f"c{n}",
        timestamp=ts,
        status=status,
        metrics={"score": value},
        description=f"move {n}",
        wall_time_s=wall,
    )


def test_comparison_curve_counts_only_kept_values_and_wall_time_since_the_start() -> None:
    cfg_metric = MetricConfig(name="score", direction="max")
    recs = [
        record(1, "keep", 1.0, ts="2026-01-01T00:00:00Z", wall=2.0),
        record(2, "discard", 9.0, ts="2026-01-01T00:00:10Z"),
        record(3, "crash", None, ts="2026-01-01T00:00:11Z"),
        record(4, "keep", 3.0, ts="2026-01-01T00:00:30Z"),
    ]
    c = curve("run", recs, cfg_metric)
    assert c.best == (1.0, 1.0, 1.0, 3.0), "a discarded 9.0 is no best"
    assert c.elapsed_s == (2.0, 12.0, 13.0, 32.0)
    assert c.reached_at() == 4 and c.best_after(3) == 1.0
    other = curve("other", [record(1, "keep", 2.0, ts="2026-01-01T00:00:00Z")], cfg_metric)
    table = comparison_table([c, other], cfg_metric)
    assert "| run | 4 | 1 | 3 | 1 | 4 |" in table
    assert "At the same budget (1 experiments), **other** is ahead on score (higher is better) by +1." in table


def test_report_against_another_tag_puts_both_runs_on_one_chart_and_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoexp_mcp import cli

    repo = make_example_repo("hparams", tmp_path / "hparams")
    run_in_memory(repo, Strategy(), max_experiments=6)
    git(repo, "checkout", "-q", "main")
    (repo / "autoexp.toml").write_text((repo / "autoexp.toml").read_text().replace('tag = "hparams"', 'tag = "rnd"'))
    git(repo, "commit", "-qam", "a second tag for the random search")
    run_in_memory(repo, Strategy(search="random", seed=2), max_experiments=4)
    capsys.readouterr()
    assert cli.main(["report", "--repo", str(repo), "--against", "hparams"]) == 0
    out = capsys.readouterr().out
    assert "| rnd | 4 |" in out and "| hparams | 6 |" in out and "best after 4" in out
    assert "At the same budget (4 experiments)" in out
    md = repo / ".autoexp" / "report" / "compare-hparams.md"
    png = md.with_suffix(".png")
    assert md.read_text().count("| hparams | 6 |") == 1 and png.read_bytes()[:4] == b"\x89PNG"
    lane = repo / ".autoexp" / "lanes" / "side"  # a lane's worktree keeps its ledger at its top
    lane.mkdir(parents=True)
    (lane / "experiments.jsonl").write_bytes(
        (repo / ".autoexp" / "archive" / "hparams" / "experiments.jsonl").read_bytes()
    )
    assert cli.main(["report", "--repo", str(repo), "--against", "side"]) == 0
    assert "| lane side | 6 |" in capsys.readouterr().out
    assert cli.main(["report", "--repo", str(repo), "--against", "nosuch"]) != 0
    assert "archived tags here: hparams" in capsys.readouterr().err


def test_the_readme_strategy_file_is_one_the_agent_reads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## A baseline without a model") :]
    block = section[section.index("```yaml\n") + 8 : section.index("```", section.index("```yaml\n") + 8)]
    f = tmp_path / "agent_strategy.yaml"
    f.write_text(block)
    s = load_strategy(f)
    assert s.keys == ("max_depth", "learning_rate", "ttl_s.*") and (s.step, s.grow, s.shrink) == (0.25, 2.0, 0.5)
    assert s.wants("ttl_s.api") and s.bounds_of("max_depth") == (1, 6)
    assert set(Strategy.model_fields) <= set(yamlish.load(block)), "the README shows every setting"
