"""Reports: figures of the Markdown summary, the status table, the progress chart (real PNGs)."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoexp_mcp import report
from autoexp_mcp.config import Config, parse_config
from autoexp_mcp.errors import AutoexpError
from autoexp_mcp.ledger import Ledger, Record
from autoexp_mcp.report import placement
from autoexp_mcp.report.panels import LANES
from autoexp_mcp.report.summary import objective, stage_view

SUBPROCESS_TIMEOUT_S = 60

# (status, f1, description, diff_lines, wall_time_s): a run of regex tuning on f1 (higher is better).
F1_RUN: list[tuple[str, float | None, str, int, float]] = [
    ("keep", 0.60, "baseline", 0, 60.0),
    ("keep", 0.65, "add word boundaries", 2, 50.0),
    ("discard", 0.64, "allow optional hyphen", 5, 70.0),
    ("crash", None, "nested lookbehind", 12, 5.0),
    ("keep", 0.70, "anchor dates", 4, 65.0),
    ("explore", 0.69, "try lookahead", 15, 80.0),
    ("keep", 0.75, "case-insensitive names", 1, 55.0),
    ("timeout", None, "catastrophic backtracking", 20, 120.0),
    ("discard", 0.74, "match | pipes and $dollars", 3, 60.0),
]


def _config(metrics: list[tuple[str, str]], **extra: Any) -> Config:
    data: dict[str, Any] = {
        "experiment": {"tag": "regex-f1", "target": "patterns.yaml", "eval": "python evaluate.py"},
        "metric": [{"name": n, "direction": d} for n, d in metrics],
        **extra,
    }
    return parse_config(data)


F1 = _config([("f1", "max")])


def _log(root: Path, cfg: Config, rows: list[dict[str, Any]]) -> list[Record]:
    """Append rows like the server does: consecutive numbers, best-ever commit and metrics."""
    ledger = Ledger(root, [m.name for m in cfg.metric] or [m.name for m in cfg.stage[0].metric])
    best: dict[str | None, tuple[str, dict[str, float | None]]] = {}
    cum = 0.0
    out = []
    for i, row in enumerate(rows, 1):
        stage = row.get("stage")
        metrics, _ = stage_view(cfg, stage)
        obj = objective(metrics)
        value = row["metrics"].get(obj.name)
        prev = best.get(stage)
        if row["status"] == "keep" and value is not None:
            old = prev[1].get(obj.name) if prev else None
            if old is None or (value > old if obj.direction == "max" else value < old):
                best[stage] = (f"c{i:06d}", dict(row["metrics"]))
        cum += row.get("cost_usd", 0.0)
        fields = {
            "experiment": i,
            "commit": f"c{i:06d}",
            "timestamp": f"2026-03-08T02:{i:02d}:00Z",
            "cumulative_cost_usd": cum,
            "best_commit": best[stage][0] if stage in best else None,
            "best_metrics": best[stage][1] if stage in best else None,
            **row,
        }
        out.append(ledger.append(fields))
    return out


def _f1_rows() -> list[dict[str, Any]]:
    return [
        {
            "status": status,
            "metrics": {"f1": f1},
            "description": desc,
            "diff_lines": diff,
            "wall_time_s": wall,
            "cost_usd": 0.25,
            "tokens_used": 1000,
        }
        for status, f1, desc, diff, wall in F1_RUN
    ]


@pytest.fixture
def f1_run(tmp_path: Path) -> list[Record]:
    return _log(tmp_path, F1, _f1_rows())


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- summary ------------------------------------------------------------------------------


def test_summary_counts_statuses_and_finds_baseline_and_best(f1_run: list[Record]) -> None:
    s = report.summarize(f1_run, F1)
    assert s.experiments == 9
    assert s.counts == {"keep": 4, "discard": 2, "crash": 1, "timeout": 1, "explore": 1}
    assert s.wall_time_s == pytest.approx(565.0)
    assert s.cost_usd == pytest.approx(2.25)
    assert s.tokens_used == 9000
    (t,) = s.tracks
    assert t.baseline is not None and t.baseline.value == 0.60
    assert (t.best_value, t.best_experiment, t.best_commit) == (0.75, 7, "c000007")
    assert t.improvement == pytest.approx(0.15)
    assert t.improvement_pct == pytest.approx(25.0)


def test_the_chart_title_counts_the_baseline_apart_as_the_legend_does(f1_run: list[Record]) -> None:
    title = report.chart_title(report.summarize(f1_run, F1), "f1")
    assert title == "autoexp f1: 9 experiments: the baseline, 3 keep, 2 discard, 1 crash, 1 timeout, 1 explore"


def test_keep_gains_are_measured_against_the_incumbent_an_explore_installed(f1_run: list[Record]) -> None:
    (t,) = report.summarize(f1_run, F1).tracks
    kept = [(s.record.experiment, s.record.status, s.gain) for s in t.kept]
    assert [k[:2] for k in kept] == [(1, "keep"), (2, "keep"), (5, "keep"), (6, "explore"), (7, "keep")]
    gains = [g for *_, g in kept]
    assert gains[0] is None
    # 0.75 is compared with the explored 0.69, not with the earlier best 0.70.
    assert gains[1:] == pytest.approx([0.05, 0.05, -0.01, 0.06])


def test_improvement_is_direction_aware_for_a_metric_to_minimise(tmp_path: Path) -> None:
    cfg = _config([("val_bpb", "min")])
    rows = [
        {"status": "keep", "metrics": {"val_bpb": 1.0}, "description": "baseline"},
        {"status": "discard", "metrics": {"val_bpb": 1.2}, "description": "wider"},
        {"status": "keep", "metrics": {"val_bpb": 0.9}, "description": "lr 0.04"},
    ]
    recs = _log(tmp_path, cfg, rows)
    (t,) = report.summarize(recs, cfg).tracks
    assert t.best_value == 0.9
    assert t.delta == pytest.approx(-0.1)
    assert t.improvement_pct == pytest.approx(10.0)
    assert [s.gain for s in t.steps][1:] == pytest.approx([-0.2, 0.1])
    md = report.render_markdown(recs, cfg)
    assert "**val_bpb** (lower is better): 1 → **0.9**, -0.1 (10.00% better)." in md


def test_best_falls_back_to_the_records_when_the_ledger_has_no_best_fields(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, ["f1"])
    recs = [
        ledger.append({"experiment": i, "commit": f"k{i}", "timestamp": "2026-03-08T02:00:00Z", **row})
        for i, row in enumerate(_f1_rows(), 1)
    ]
    (t,) = report.summarize(recs, F1).tracks
    assert (t.best_value, t.best_experiment, t.best_commit) == (0.75, 7, "k7")


# --- Markdown -----------------------------------------------------------------------------


def test_markdown_gives_improvement_counts_time_and_cost(f1_run: list[Record]) -> None:
    md = report.render_markdown(f1_run, F1)
    assert md.startswith("# autoexp report: regex-f1\n")
    assert "| keep | discard | crash | timeout | explore | total |" in md
    assert "| 4 | 2 | 1 | 1 | 1 | 9 |" in md
    assert (
        "**f1** (higher is better): 0.6 → **0.75**, +0.15 (25.00% better). "
        "Baseline: experiment 1; best: experiment 7 (commit `c000007`)." in md
    )
    assert "Wall time 9m 25s in total (1m 03s per experiment on average); cost $2.25 (9,000 tokens)." in md


def test_markdown_lists_kept_changes_in_order_with_their_gains(f1_run: list[Record]) -> None:
    md = report.render_markdown(f1_run, F1)
    rows = [line for line in md.splitlines() if line.startswith("| ") and "`c0000" in line]
    assert rows == [
        "| 1 | `c000001` | baseline | 0.6 | — | 0 |",
        "| 2 | `c000002` | add word boundaries | 0.65 | +0.05 (+8.33%) | 2 |",
        "| 5 | `c000005` | anchor dates | 0.7 | +0.05 (+7.69%) | 4 |",
        "| 6 | `c000006` | *explore:* try lookahead | 0.69 | -0.01 (-1.43%) | 15 |",
        "| 7 | `c000007` | case-insensitive names | 0.75 | +0.06 (+8.70%) | 1 |",
    ]
    assert "Keeps gained +0.16 in total; 1 explore moved the incumbent by -0.01." in md


def test_markdown_shows_what_paid_off_by_diff_size(f1_run: list[Record]) -> None:
    md = report.render_markdown(f1_run, F1)
    assert "| ≤ 2 lines | 2 | 2 | 100% | +0.055 | +0.11 |" in md
    assert "| 3–10 lines | 3 | 1 | 33% | +0.05 | +0.05 |" in md
    assert "| > 10 lines | 3 | 0 | 0% | — | +0 |" in md
    assert "- #7 case-insensitive names: +0.06 (+8.70%), diff 1 line, 55s" in md


def _timed_rows(walls: list[float]) -> list[dict[str, Any]]:
    """A baseline, then keeps and discards in turn with the given wall times."""
    rows: list[dict[str, Any]] = [{"status": "keep", "metrics": {"f1": 0.5}, "description": "baseline"}]
    f1 = 0.5
    for i, wall in enumerate(walls):
        keep = i % 2 == 0
        f1 = f1 + 0.01 * (i + 1) if keep else f1
        value = f1 if keep else f1 - 0.02
        rows.append({"status": "keep" if keep else "discard", "metrics": {"f1": value}, "description": f"step {i}",
                     "wall_time_s": wall})  # fmt: skip
    return rows


def test_wall_time_breakdown_is_left_out_when_every_eval_takes_about_as_long(tmp_path: Path) -> None:
    recs = _log(tmp_path, F1, _timed_rows([30.0, 31.0, 29.5, 30.5, 32.0, 29.0, 30.2, 31.5]))
    md = report.render_markdown(recs, F1)
    assert "| wall time |" not in md
    assert "Correlation of wall time" not in md
    assert (
        "No breakdown by wall time: the slower half took 31s (median) against 30s, less than 1.5× apart, "
        "so the experiments took about the same time." in md
    )


def test_wall_time_breakdown_is_shown_when_slow_experiments_take_much_longer(tmp_path: Path) -> None:
    # Keeps are the fast ones here (even positions), so the split separates keeps from discards.
    recs = _log(tmp_path, F1, _timed_rows([10.0, 60.0, 12.0, 65.0, 11.0, 70.0, 9.0, 62.0]))
    md = report.render_markdown(recs, F1)
    assert "| wall time | runs | kept | keep rate | mean gain per keep | total gain |" in md
    assert "| ≤ 36s | 4 | 4 | 100% | +0.04 | +0.16 |" in md
    assert "| > 36s | 4 | 0 | 0% | — | +0 |" in md
    assert "Correlation of wall time with gain: r = -0.89 over 8 measured experiments." in md
    assert "No breakdown by wall time" not in md


@pytest.mark.parametrize(
    ("fast", "slow", "shown"),
    [(10.0, 15.0, True), (10.0, 14.9, False), (10.0, 10.0, False), (2.0, 120.0, True)],
)
def test_the_wall_time_split_separates_at_one_and_a_half_times(fast: float, slow: float, shown: bool) -> None:
    split = report.TimeSplit(fast, slow, ())
    assert split.separates is shown
    assert report.TIME_SPLIT_RATIO == 1.5


def test_the_readme_states_the_rules_the_report_follows() -> None:
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert f"at least {report.TIME_SPLIT_RATIO:g}× as long as the faster half" in readme
    assert f"The kept changes with the {report.MAX_LABELS} largest gains carry a number" in readme


def test_the_f1_run_is_too_even_in_wall_time_for_a_breakdown(f1_run: list[Record]) -> None:
    # Median of the faster half 52.5 s, of the slower half 75 s: 1.43× apart.
    (t,) = report.summarize(f1_run, F1).tracks
    assert t.time_split is not None
    assert (t.time_split.fast_s, t.time_split.slow_s) == (52.5, 75.0)
    assert t.by_time == ()
    assert "| wall time |" not in report.render_markdown(f1_run, F1)


def test_markdown_escapes_descriptions_in_table_cells(tmp_path: Path) -> None:
    rows = _f1_rows()
    rows[1]["description"] = "a | b <i>"
    md = report.render_markdown(_log(tmp_path, F1, rows), F1)
    assert "| 2 | `c000002` | a \\| b &lt;i> | 0.65 | +0.05 (+8.33%) | 2 |" in md


def test_long_kept_lists_are_capped(tmp_path: Path) -> None:
    rows = [
        {"status": "keep", "metrics": {"f1": 0.5 + i / 100}, "description": f"step {i}", "diff_lines": 1}
        for i in range(30)
    ]
    md = report.render_markdown(_log(tmp_path, F1, rows), F1)
    kept = md.split("## Kept changes")[1].split("## What paid off")[0]
    assert "| … | | 10 more | | | |" in kept
    assert "step 9 |" in kept and "step 20 |" in kept and "step 15 |" not in kept


def test_markdown_for_an_empty_ledger_says_so() -> None:
    md = report.render_markdown([], F1)
    assert "No experiments logged yet" in md


def test_markdown_for_a_baseline_alone(tmp_path: Path) -> None:
    recs = _log(tmp_path, F1, _f1_rows()[:1])
    md = report.render_markdown(recs, F1)
    assert "1 experiment, 2026-03-08 02:01 → 2026-03-08 02:01 UTC." in md
    assert "**f1** (higher is better): 0.6 → **0.6**, no improvement over the baseline." in md
    assert "No experiments after the baseline yet." in md


def test_pipeline_report_has_a_section_per_stage(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "experiment": {"tag": "pipe", "target": "prep.py", "eval": "python eval.py"},
            "stage": [
                {"name": "prep", "target": "prep.py", "metric": [{"name": "quality", "direction": "max"}]},
                {"name": "train", "target": "train.py", "metric": [{"name": "val_loss", "direction": "min"}]},
            ],
        }
    )
    rows = [
        {"stage": "prep", "status": "keep", "metrics": {"quality": 0.5}, "description": "baseline"},
        {"stage": "prep", "status": "keep", "metrics": {"quality": 0.6}, "description": "dedupe"},
        {"stage": "train", "status": "keep", "metrics": {"val_loss": 2.0}, "description": "baseline"},
        {"stage": "train", "status": "discard", "metrics": {"val_loss": 2.1}, "description": "bigger lr"},
        {"stage": "train", "status": "keep", "metrics": {"val_loss": 1.5}, "description": "warmup"},
    ]
    recs = _log(tmp_path, cfg, rows)
    md = report.render_markdown(recs, cfg)
    assert "## Stage 1: prep (quality)" in md and "## Stage 2: train (val_loss)" in md
    assert "**quality** (higher is better): 0.5 → **0.6**, +0.1 (20.00% better)." in md
    assert "**val_loss** (lower is better): 2 → **1.5**, -0.5 (25.00% better)." in md
    assert "3 experiments: 2 keep, 1 discard, 0 crash, 0 timeout, 0 explore" in md
    assert "Pipeline prep (`prep.py`) → train (`train.py`) on branch `autoexp/pipe`, 5 experiments" in md
    status = report.status_table(recs, cfg.for_stage(1), phase="IDLE", budget_line="5 of 20 experiments")
    assert "stage   train (2 of 2)" in status
    assert "best    val_loss 1.5 at #5 c000005 (lower is better); baseline 2: -0.5 (25.00% better)" in status
    if importlib.util.find_spec("matplotlib") is not None:
        chart = report.render_chart(recs, cfg, tmp_path / "progress.png")
        assert _png_size(chart)[0] == 1680  # one panel per stage, side by side: 14 in at 120 dpi


# --- status table -------------------------------------------------------------------------


def test_status_table_shows_phase_best_counts_budget_and_aligned_last_rows(f1_run: list[Record]) -> None:
    out = report.status_table(f1_run, F1, phase="IDLE", budget_line="9 of 100 experiments", last=3)
    lines = out.splitlines()
    assert lines[:5] == [
        "phase   IDLE",
        "best    f1 0.75 at #7 c000007 (higher is better); baseline 0.6: +0.15 (25.00% better)",
        "runs    9: 4 keep, 2 discard, 1 crash, 1 timeout, 1 explore",
        "time    9m 25s, cost $2.25 (9,000 tokens)",
        "budget  9 of 100 experiments",
    ]
    assert lines[6] == "last 3 of 9 experiments:"
    table = lines[7:]
    assert table[0].split() == ["#", "status", "commit", "f1", "gain", "diff", "time", "description"]
    assert [row.split()[:5] for row in table[1:]] == [
        ["7", "keep", "c000007", "0.75", "+0.06"],
        ["8", "timeout", "c000008", "—", "—"],
        ["9", "discard", "c000009", "0.74", "-0.01"],
    ]
    # Right-aligned numbers: the f1 column ends at the same offset in every row.
    ends = {row.index("0.75") + 4 for row in table if "0.75" in row} | {table[3].index("0.74") + 4}
    assert len(ends) == 1


def test_status_table_before_the_baseline(tmp_path: Path) -> None:
    out = report.status_table([], F1, phase="IDLE", budget_line="0 of 100 experiments")
    assert "best    no experiments yet" in out
    assert "runs    0:" in out


# --- Pareto front -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directions", "front"),
    [
        (("max", "max"), [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)]),
        (("min", "min"), [(0.5, 0.5)]),
        (("max", "min"), [(0.5, 0.5), (3.0, 1.0)]),
        (("min", "max"), [(0.5, 0.5), (1.0, 3.0)]),
    ],
)
def test_pareto_front_is_direction_aware(directions: tuple[str, str], front: list[tuple[float, float]]) -> None:
    points = [(1.0, 3.0), (2.0, 2.0), (3.0, 1.0), (1.5, 1.5), (0.5, 0.5)]
    got = report.pareto_front(points, directions)  # type: ignore[arg-type]
    assert [points[i] for i in got] == front


@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=40),
    st.sampled_from(["max", "min"]),
    st.sampled_from(["max", "min"]),
)
def test_pareto_front_holds_exactly_the_non_dominated_points(raw: list[tuple[int, int]], dx: str, dy: str) -> None:
    points = [(float(x), float(y)) for x, y in raw]
    sx, sy = (1 if dx == "max" else -1), (1 if dy == "max" else -1)

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return sx * a[0] >= sx * b[0] and sy * a[1] >= sy * b[1] and a != b

    front = report.pareto_front(points, (dx, dy))  # type: ignore[arg-type]
    on_front = {points[i] for i in front}
    assert len(on_front) == len(front)  # one index per distinct point
    assert on_front == {p for p in points if not any(dominates(q, p) for q in points)}
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


# --- chart and files ----------------------------------------------------------------------


def test_write_report_writes_markdown_and_a_progress_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _log(tmp_path, F1, _f1_rows())
    paths = report.write_report(tmp_path, F1)
    assert paths.markdown == tmp_path / ".autoexp" / "report" / "report.md"
    assert paths.chart == tmp_path / ".autoexp" / "report" / "progress.png"
    assert paths.note is None
    width, height = _png_size(paths.chart)
    assert width == 1200 and height > width / 2  # 10 in wide; the strip and the key add to the height
    md = paths.markdown.read_text(encoding="utf-8")
    assert "![progress](progress.png)" in md
    assert "| 4 | 2 | 1 | 1 | 1 | 9 |" in md
    assert sorted(p.name for p in paths.markdown.parent.iterdir()) == ["progress.png", "report.md"]


def test_two_metric_pareto_run_gets_a_second_panel_and_other_metrics(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    cfg = _config([("f1", "max"), ("latency_ms", "min")], policy={"mode": "pareto"})
    rows = [
        ("keep", 0.60, 50.0, "baseline"),
        ("keep", 0.70, 55.0, "more patterns"),
        ("discard", 0.55, 60.0, "fewer patterns"),
        ("keep", 0.65, 40.0, "compile once"),
        ("crash", None, None, "broken regex"),
        ("keep", 0.72, 45.0, "merge alternations"),
    ]
    recs = _log(
        tmp_path,
        cfg,
        [{"status": s, "metrics": {"f1": f, "latency_ms": lat}, "description": d} for s, f, lat, d in rows],
    )
    front = report.pareto_front([(0.60, 50.0), (0.70, 55.0), (0.55, 60.0), (0.65, 40.0), (0.72, 45.0)], ("max", "min"))
    assert front == [3, 4]
    out = report.render_chart(recs, cfg, tmp_path / "out" / "chart.png")
    assert _png_size(out)[0] == 1680
    md = report.render_markdown(recs, cfg)
    assert "Other metrics, baseline → best: latency_ms 50 → 45." in md
    assert "| # | commit | change | f1 | latency_ms | gain | diff lines |" in md
    assert "| 6 | `c000006` | merge alternations | 0.72 | 45 | +0.07 (+10.77%) | 0 |" in md


def test_chart_draws_dollar_descriptions_and_far_outliers_into_an_output_directory(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = _f1_rows()
    rows[6]["description"] = "price $5 → $3, 100% {literal}"  # not TeX: drawn as typed
    rows[2]["metrics"] = {"f1": -50.0}  # far off scale: drawn at the edge, not stretching the axis
    recs = _log(tmp_path, F1, rows)
    paths = report.write_report(tmp_path, F1, out_dir=tmp_path / "elsewhere")
    assert paths.markdown == tmp_path / "elsewhere" / "report.md"
    assert paths.chart is not None and _png_size(paths.chart)[0] == 1200
    fig = report.build_figure(recs, F1)
    key = " ".join(t.get_text() for t in _axes(fig, gid="key").texts)
    assert "price $5 → $3, 100% {literal}" in key
    main = _axes(fig, label="progress")
    (far,) = [c for c in main.collections if c.get_gid() == "off scale"]
    assert [x for x, _ in far.get_offsets()] == [3]
    assert main.get_ylim()[0] > -1.0  # the axis was not stretched down to -50


def test_render_chart_refuses_an_empty_ledger(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(report.ChartUnavailable, match="no experiments"):
        report.render_chart([], F1, tmp_path / "progress.png")
    assert issubclass(report.ChartUnavailable, AutoexpError)


# --- the chart's structure ----------------------------------------------------------------
#
# The figure is built by report.build_figure and inspected after drawing: what is on which axes,
# where each text lands in pixels. Scenarios cover a short run, a long one, long descriptions,
# a metric to minimise, many crashes, a three-stage pipeline and a two-metric Pareto run.

KNAPSACK = [
    "sort items by value/weight density before the greedy pass",
    "memoize the DP table per capacity bucket instead of recomputing",
    "prune branches whose optimistic bound is below the incumbent",
    "use a vectorised inner loop for the knapsack recurrence",
    "cache the sorted order across calls",
    "switch to branch and bound with an LP relaxation bound",
]


def _run_rows(
    n: int,
    direction: str = "max",
    *,
    crash_every: int = 0,
    timeout_every: int = 0,
    describe: Any = lambda i: KNAPSACK[i % len(KNAPSACK)],
    metric: str = "f1",
    noise: float = 0.0,
) -> list[dict[str, Any]]:
    """A deterministic run: every third experiment a keep, crashes and timeouts at fixed
    intervals, discards tied with the incumbent or just above it, wall times alike. With
    `noise`, discards scatter that far on both sides of the incumbent (seeded: the same each time)."""
    rnd = random.Random(n)
    sign = 1 if direction == "max" else -1
    value = 1.0
    rows: list[dict[str, Any]] = [{"status": "keep", "metrics": {metric: value}, "description": "baseline"}]
    for i in range(1, n):
        desc, wall = describe(i), 30.0 + i % 3
        if crash_every and i % crash_every == 0:
            rows.append({"status": "crash", "metrics": {metric: None}, "description": desc, "wall_time_s": 2.0})
        elif timeout_every and i % timeout_every == 0:
            rows.append({"status": "timeout", "metrics": {metric: None}, "description": desc, "wall_time_s": 90.0})
        elif i % 3 == 0:
            value = round(value + sign * 0.01 * (1 + i % 4), 4)
            rows.append({"status": "keep", "metrics": {metric: value}, "description": desc, "wall_time_s": wall})
        else:
            worse = sign * 0.004 * (1 + i % 5)
            if i % 7 == 1:
                worse = 0.0  # a tie with the incumbent
            elif i % 3 == 1 and i % 2 == 0:
                worse = -sign * 0.003  # better, but within the noise: right next to the keep before it
            if noise:
                worse = sign * rnd.uniform(-noise, 2 * noise)
            rows.append({"status": "discard", "metrics": {metric: round(value - worse, 4)}, "description": desc,
                         "wall_time_s": wall})  # fmt: skip
    return rows


def _pipeline_rows() -> list[dict[str, Any]]:
    rows = []
    for j, stage in enumerate(("prep", "train", "serve")):
        rows += [{**r, "stage": stage} for r in _run_rows(15 + 5 * j, crash_every=6, metric="score")]
    return rows


PIPELINE3 = parse_config(
    {
        "experiment": {"tag": "three-stages", "target": "prep.py", "eval": "python eval.py"},
        "stage": [
            {"name": n, "target": f"{n}.py", "metric": [{"name": "score", "direction": "max"}]}
            for n in ("prep", "train", "serve")
        ],
    }
)
PARETO = _config([("f1", "max"), ("latency_ms", "min")], policy={"mode": "pareto"})
SCENARIOS: dict[str, tuple[Config, Any]] = {
    "13 experiments": (F1, lambda: _run_rows(13, crash_every=5)),
    "100 experiments": (F1, lambda: _run_rows(100, crash_every=11, timeout_every=17, noise=0.05)),
    "long descriptions": (F1, lambda: _run_rows(20, describe=lambda i: f"#{i + 1}: " + "tune the regex " * 25)),
    "minimise": (_config([("f1", "min")]), lambda: _run_rows(25, "min", crash_every=8)),
    "many crashes": (F1, lambda: _run_rows(40, crash_every=2, timeout_every=5)),
    "three stages": (PIPELINE3, _pipeline_rows),
    "pareto": (
        PARETO,
        lambda: [
            {**r, "metrics": {**r["metrics"], "latency_ms": None if r["status"] == "crash" else 50.0 - i % 9}}
            for i, r in enumerate(_run_rows(20, crash_every=7))
        ],
    ),
}


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, list[Record]]]:
    """Each scenario's figure, drawn once, with the records it was built from."""
    pytest.importorskip("matplotlib")
    out = {}
    for name, (cfg, rows) in SCENARIOS.items():
        recs = _log(tmp_path_factory.mktemp("ledger"), cfg, rows())
        fig = report.build_figure(recs, cfg)
        fig.savefig(io.BytesIO(), format="png", dpi=report.CHART_DPI)  # as render_chart does
        out[name] = (fig, recs)
    return out


def _axes(fig: Any, *, label: str | None = None, gid: str | None = None) -> Any:
    found = [
        ax for ax in fig.axes if (label is None or ax.get_label() == label) and (gid is None or ax.get_gid() == gid)
    ]
    assert len(found) == 1, [(ax.get_label(), ax.get_gid()) for ax in fig.axes]
    return found[0]


def _renderer(fig: Any) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return FigureCanvasAgg(fig).get_renderer() if not hasattr(fig.canvas, "get_renderer") else fig.canvas.get_renderer()


def _texts(fig: Any) -> list[Any]:
    """Every text the saved image shows: titles, axis and tick labels in view, legends, annotations."""
    out = list(fig.texts)
    for ax in fig.axes:
        out += [*ax.texts, ax.title]
        if ax.axison:
            out += [ax.xaxis.label, ax.yaxis.label]
            for axis in (ax.xaxis, ax.yaxis):
                # The first len(locs) ticks are the drawn ones; those outside the view are skipped.
                lo, hi = sorted(axis.get_view_interval())
                ticks = axis.get_major_ticks(len(axis.get_majorticklocs()))
                out += [t.label1 for t in ticks if lo <= t.get_loc() <= hi]
        if ax.get_legend() is not None:
            out += ax.get_legend().get_texts()
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def _extent(artist: Any, renderer: Any) -> tuple[float, float, float, float]:
    """The pixel box of a text, its rounded box included when it has one."""
    box = artist.get_window_extent(renderer)
    patch = artist.get_bbox_patch() if hasattr(artist, "get_bbox_patch") else None
    if patch is not None:
        box = type(box).union([box, patch.get_window_extent(renderer)])
    return (box.x0, box.y0, box.x1, box.y1)


def _overlap(a: tuple[float, ...], b: tuple[float, ...], tolerance: float = 0.5) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tolerance and min(a[3], b[3]) - max(a[1], b[1]) > tolerance


def _labels(ax: Any) -> list[Any]:
    return [t for t in ax.texts if t.get_gid() == "keep-label"]


def _markers(ax: Any) -> dict[str, list[tuple[float, float]]]:
    """Data positions of the markers on `ax`, by kind."""
    return {c.get_gid(): [(float(x), float(y)) for x, y in c.get_offsets()] for c in ax.collections}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_text_extends_outside_the_figure(figures: dict[str, Any], name: str) -> None:
    fig, _ = figures[name]
    renderer = _renderer(fig)
    for text in _texts(fig):
        x0, y0, x1, y1 = _extent(text, renderer)
        assert x0 >= -0.5 and y0 >= -0.5 and x1 <= fig.bbox.x1 + 0.5 and y1 <= fig.bbox.y1 + 0.5, text.get_text()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_two_texts_overlap(figures: dict[str, Any], name: str) -> None:
    fig, _ = figures[name]
    renderer = _renderer(fig)
    boxes = [(t.get_text(), _extent(t, renderer)) for t in _texts(fig)]
    clashes = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1 :] if _overlap(ba, bb)]
    assert clashes == []


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_experiment_has_a_marker_and_no_label_covers_one(figures: dict[str, Any], name: str) -> None:
    fig, recs = figures[name]
    renderer = _renderer(fig)
    progress = [ax for ax in fig.axes if ax.get_label() == "progress"]
    strips = [ax for ax in fig.axes if ax.get_label() == "crashes"]
    drawn = {(kind, x) for ax in progress + strips for kind, pts in _markers(ax).items() for x, _ in pts}
    for r in recs:
        kinds = {r.status, "off scale"} | ({"baseline"} if r.status == "keep" else set())
        assert any((k, r.experiment) in drawn for k in kinds), f"no marker for #{r.experiment} ({r.status})"
    for ax in progress:
        frame = ax.get_window_extent(renderer)
        for coll in ax.collections:
            radius = math.sqrt(max(coll.get_sizes())) / 2 * fig.dpi / 72
            for x, y in coll.get_offset_transform().transform(coll.get_offsets()):
                assert frame.x0 - radius <= x <= frame.x1 + radius and frame.y0 - radius <= y <= frame.y1 + radius
                dot = (x - radius - 1, y - radius - 1, x + radius + 1, y + radius + 1)  # touching counts
                covered = [t.get_text() for t in _labels(ax) if _overlap(_extent(t, renderer), dot, 0.0)]
                assert covered == [], f"label {covered} covers a {coll.get_gid()} marker"


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_numbers_on_the_chart_name_the_keys_lines(figures: dict[str, Any], name: str) -> None:
    fig, _ = figures[name]
    for ax in [ax for ax in fig.axes if ax.get_label() == "progress"]:
        key = next(
            k for k in fig.axes if k.get_gid() == "key" and k.get_subplotspec().colspan == ax.get_subplotspec().colspan
        )
        lines = {}
        for t in key.texts:
            lines.setdefault(round(t.get_position()[1], 6), []).append(t.get_text())
        entries = {row[0]: row[1] for row in lines.values() if len(row) == 4}
        on_chart = {t.get_text(): t.xy[0] for t in _labels(ax)}
        assert on_chart and on_chart.keys() == entries.keys()
        assert all(entries[n] == f"#{x:.0f}" for n, x in on_chart.items())


def test_crashes_and_timeouts_sit_on_their_own_strip_at_their_experiment(figures: dict[str, Any]) -> None:
    fig, recs = figures["100 experiments"]
    strip, main = _axes(fig, label="crashes"), _axes(fig, label="progress")
    markers = _markers(strip)
    assert [x for x, _ in markers["crash"]] == [r.experiment for r in recs if r.status == "crash"]
    assert [x for x, _ in markers["timeout"]] == [r.experiment for r in recs if r.status == "timeout"]
    # A lane per kind, in the strip's own units: no height on the metric's scale.
    assert {y for _, y in markers["crash"]} == {LANES["crash"]}
    assert {y for _, y in markers["timeout"]} == {LANES["timeout"]}
    assert [t.get_text() for t in strip.get_yticklabels()] == ["crash", "timeout", "interrupted"]
    assert not {"crash", "timeout"} & set(_markers(main))
    assert strip.get_shared_x_axes().joined(strip, main)
    renderer = _renderer(fig)
    assert strip.get_window_extent(renderer).y1 <= main.get_window_extent(renderer).y0  # under the main axes


def test_a_run_without_crashes_has_no_strip(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fig = report.build_figure(_log(tmp_path, F1, _run_rows(12)), F1)
    assert [ax.get_label() for ax in fig.axes if ax.get_label() in {"progress", "crashes"}] == ["progress"]
    assert _axes(fig, label="progress").get_xlabel() == "experiment"


def test_discards_are_opaque_and_drawn_over_the_best_line(figures: dict[str, Any]) -> None:
    fig, recs = figures["13 experiments"]
    main = _axes(fig, label="progress")
    (discards,) = [c for c in main.collections if c.get_gid() == "discard"]
    (best,) = main.get_lines()[1:]  # after the baseline's dashed line
    assert discards.get_alpha() in (None, 1.0)
    assert min(discards.get_sizes()) >= 20  # points²: about 4.5 pt across
    # A discard tied with the incumbent lies on the best line; it must stay visible on top of it.
    tied = [r.experiment for r in recs if r.status == "discard" and r.experiment % 7 == 1]
    assert tied and discards.get_zorder() > best.get_zorder()


def test_only_the_largest_gains_are_numbered_and_the_key_says_so(figures: dict[str, Any]) -> None:
    fig, recs = figures["100 experiments"]
    (t,) = report.summarize(recs, F1).tracks
    keeps = [s for s in t.kept if s.record.status == "keep" and s is not t.baseline]
    assert len(keeps) > report.MAX_LABELS
    main, key = _axes(fig, label="progress"), _axes(fig, gid="key")
    top = sorted(keeps, key=lambda s: -(s.gain or 0.0))[: report.MAX_LABELS]
    assert sorted(t.xy[0] for t in _labels(main)) == sorted(s.record.experiment for s in top)
    assert (
        key.texts[0].get_text()
        == f"the 12 kept changes with the largest gains, of {len(keeps)} (all are in report.md):"
    )


def test_a_long_description_is_cut_to_the_keys_width_not_to_a_fixed_length(figures: dict[str, Any]) -> None:
    fig, _ = figures["long descriptions"]
    renderer = _renderer(fig)
    key = _axes(fig, gid="key")
    right = key.get_window_extent(renderer).x1
    descriptions = [t for t in key.texts if "tune the regex" in t.get_text()]
    assert descriptions
    for t in descriptions:
        assert t.get_text().endswith("…") and len(t.get_text()) > 80
        assert right - 40 < _extent(t, renderer)[2] <= right  # it fills the width, and stops there


def test_labels_sit_on_the_better_side_when_there_is_room(figures: dict[str, Any]) -> None:
    for name, above in (("13 experiments", True), ("minimise", False)):
        fig, _ = figures[name]
        main = _axes(fig, label="progress")
        near = [t for t in _labels(main) if abs(t.xyann[0]) < 1]  # straight above or below its point
        assert near and all(bool(t.xyann[1] > 0) == above for t in near), name


def test_the_legend_sits_under_the_plot_and_hides_nothing(figures: dict[str, Any]) -> None:
    fig, _ = figures["13 experiments"]
    renderer = _renderer(fig)
    main, legend = _axes(fig, label="progress"), _axes(fig, gid="legend")
    assert main.get_legend() is None
    assert legend.get_legend().get_window_extent(renderer).y1 <= main.get_window_extent(renderer).y0
    texts = [t.get_text() for t in legend.get_legend().get_texts()]
    assert texts == ["baseline", "keep (4)", "discard (6)", "best so far", "crash (2)"]


def test_the_pareto_panel_labels_its_front_without_covering_points(figures: dict[str, Any]) -> None:
    fig, _ = figures["pareto"]
    renderer = _renderer(fig)
    ax = _axes(fig, label="pareto")
    labels = [t for t in ax.texts if t.get_gid() == "front-label"]
    assert labels and all(t.get_text().startswith("#") for t in labels)
    for coll in ax.collections:
        for x, y in coll.get_offset_transform().transform(coll.get_offsets()):
            assert not any(_overlap(_extent(t, renderer), (x - 2, y - 2, x + 2, y + 2)) for t in labels)


def test_a_run_of_crashes_only_draws_the_strip_and_says_nothing_was_measured(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [{"status": "crash", "metrics": {"f1": None}, "description": f"boom {i}"} for i in range(5)]
    fig = report.build_figure(_log(tmp_path, F1, rows), F1)
    assert [x for x, _ in _markers(_axes(fig, label="crashes"))["crash"]] == [1, 2, 3, 4, 5]
    main = _axes(fig, label="progress")
    assert [t.get_text() for t in main.texts] == ["no f1 measured yet: every run crashed or timed out"]
    assert not [ax for ax in fig.axes if ax.get_gid() == "key"]


def test_the_report_reads_records_with_fields_it_does_not_know(tmp_path: Path) -> None:
    # Newer ledgers carry more fields (a MAC, the sandbox used) and crash rows may have no metric
    # at all; older ones have neither. Both are summarised and drawn.
    ledger = Ledger(tmp_path, ["f1"])
    rows = _f1_rows()
    rows[3]["metrics"] = {}
    rows[7]["metrics"] = {"f1": None}
    for i, row in enumerate(rows, 1):
        extra = {"mac": f"{i:064x}", "sandbox": {"kind": "bwrap", "network": False}} if i > 4 else {}
        ledger.append({"experiment": i, "commit": f"k{i}", "timestamp": "2026-03-08T02:00:00Z", **row, **extra})
    recs = report.load_records(tmp_path, F1)
    assert len(recs) == 9
    md = report.render_markdown(recs, F1)
    assert "| 4 | 2 | 1 | 1 | 1 | 9 |" in md and "0.6 → **0.75**" in md
    if importlib.util.find_spec("matplotlib") is not None:
        paths = report.write_report(tmp_path, F1)
        assert paths.chart is not None and _png_size(paths.chart)[0] == 1200


# --- label placement (pure geometry) --------------------------------------------------------


def test_a_label_goes_straight_above_its_point_when_nothing_is_there() -> None:
    (spot,) = placement.place([(50.0, 50.0)], [(10.0, 8.0)], [], (0, 0, 100, 100), radius=3, gap=1)
    assert spot is not None and spot.offset == (0.0, 8.0) and spot.overlap == 0 and not spot.far
    (below,) = placement.place([(50.0, 50.0)], [(10.0, 8.0)], [], (0, 0, 100, 100), radius=3, gap=1, up=False)
    assert below is not None and below.offset == (0.0, -8.0)


def test_a_label_moves_aside_when_its_spot_is_taken_and_stays_inside_the_bounds() -> None:
    taken = (45.0, 53.0, 55.0, 62.0)  # right above the point
    (spot,) = placement.place([(50.0, 50.0)], [(10.0, 8.0)], [taken], (0, 0, 100, 100), radius=3, gap=1)
    assert spot is not None and spot.overlap == 0 and placement.overlap(spot.box, taken) == 0
    (edge,) = placement.place([(50.0, 97.0)], [(10.0, 8.0)], [], (0, 0, 100, 100), radius=3, gap=1)
    assert edge is not None and edge.box[3] <= 100  # no room above the top: it goes aside or below
    assert placement.place([(5.0, 5.0)], [(50.0, 50.0)], [], (0, 0, 20, 20), radius=3, gap=1) == [None]


@given(
    st.lists(st.tuples(st.floats(0, 200), st.floats(0, 100)), min_size=1, max_size=12),
    st.lists(st.tuples(st.floats(0, 200), st.floats(0, 100)), max_size=30),
)
def test_placed_labels_stay_inside_and_clean_ones_touch_nothing(
    anchors: list[tuple[float, float]], dots: list[tuple[float, float]]
) -> None:
    bounds = (0.0, 0.0, 200.0, 100.0)
    obstacles = [(x - 3, y - 3, x + 3, y + 3) for x, y in dots]
    spots = placement.place(anchors, [(9.0, 9.0)] * len(anchors), obstacles, bounds, radius=3, gap=1)
    placed = []
    for spot in spots:
        if spot is None:
            continue
        assert placement.contains(bounds, spot.box)
        touched = sum(placement.overlap(spot.box, b) for b in obstacles + placed)
        assert touched == pytest.approx(spot.overlap)
        placed.append(spot.box)


_NO_MATPLOTLIB = """
import importlib.abc, json, sys
from pathlib import Path

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r} (blocked)")
        return None

sys.meta_path.insert(0, Block())
from autoexp_mcp import report
from autoexp_mcp.config import parse_config

repo, cfg = Path(sys.argv[1]), parse_config(json.loads(sys.argv[2]))
try:
    report.render_chart([], cfg, repo / "x.png")
except report.ChartUnavailable as e:
    print("render_chart:", e)
paths = report.write_report(repo, cfg)
print(json.dumps({"chart": paths.chart and str(paths.chart), "note": paths.note}))
"""


def test_without_matplotlib_the_report_is_written_with_the_install_hint(tmp_path: Path) -> None:
    _log(tmp_path, F1, _f1_rows())
    stale = tmp_path / ".autoexp" / "report" / "progress.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an older chart")
    cfg_json = json.dumps(F1.model_dump(mode="json", exclude_none=True))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_MATPLOTLIB, str(tmp_path), cfg_json],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    first, last = proc.stdout.strip().splitlines()
    assert first.startswith("render_chart: matplotlib is not installed")
    assert json.loads(last)["chart"] is None
    md = (tmp_path / ".autoexp" / "report" / "report.md").read_text(encoding="utf-8")
    assert "> No chart: matplotlib is not installed" in md
    assert "pip install 'autoexp-mcp[chart]'" in md
    assert "![progress]" not in md
    assert "| 4 | 2 | 1 | 1 | 1 | 9 |" in md
    assert not stale.exists()
