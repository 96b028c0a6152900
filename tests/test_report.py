"""Reports: figures of the Markdown summary, the status table, the progress chart (real PNGs)."""

from __future__ import annotations

import importlib.util
import json
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
        metrics, _ = report._stage_view(cfg, stage)
        obj = report._objective(metrics)
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


def test_markdown_shows_what_paid_off_by_diff_size_and_wall_time(f1_run: list[Record]) -> None:
    md = report.render_markdown(f1_run, F1)
    assert "| ≤ 2 lines | 2 | 2 | 100% | +0.055 | +0.11 |" in md
    assert "| 3–10 lines | 3 | 1 | 33% | +0.05 | +0.05 |" in md
    assert "| > 10 lines | 3 | 0 | 0% | — | +0 |" in md
    # Median wall time of the eight experiments after the baseline is 62.5 s.
    assert "| ≤ 1m 02s | 4 | 2 | 50% | +0.055 | +0.11 |" in md
    assert "| > 1m 02s | 4 | 1 | 25% | +0.05 | +0.05 |" in md
    assert "Correlation of wall time with gain: r = -0.68 over 6 measured experiments." in md
    assert "- #7 case-insensitive names: +0.06 (+8.70%), diff 1 line, 55s" in md


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
        assert _png_size(chart) == (1680, 600)  # one panel per stage


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
    assert _png_size(paths.chart) == (1200, 600)  # 10 x 5 in at 120 dpi
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
    assert _png_size(out) == (1680, 600)
    md = report.render_markdown(recs, cfg)
    assert "Other metrics, baseline → best: latency_ms 50 → 45." in md
    assert "| # | commit | change | f1 | latency_ms | gain | diff lines |" in md
    assert "| 6 | `c000006` | merge alternations | 0.72 | 45 | +0.07 (+10.77%) | 0 |" in md


def test_chart_draws_dollar_descriptions_and_far_outliers_into_an_output_directory(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = _f1_rows()
    rows[6]["description"] = "price $5 → $3, 100% {literal}"  # not TeX: drawn as typed
    rows[2]["metrics"] = {"f1": -50.0}  # far off scale: drawn at the edge, not stretching the axis
    _log(tmp_path, F1, rows)
    paths = report.write_report(tmp_path, F1, out_dir=tmp_path / "elsewhere")
    assert paths.markdown == tmp_path / "elsewhere" / "report.md"
    assert paths.chart is not None and _png_size(paths.chart) == (1200, 600)


def test_render_chart_refuses_an_empty_ledger(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    with pytest.raises(report.ChartUnavailable, match="no experiments"):
        report.render_chart([], F1, tmp_path / "progress.png")
    assert issubclass(report.ChartUnavailable, AutoexpError)


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
