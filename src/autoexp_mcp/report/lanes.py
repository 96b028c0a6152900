"""lanes.md and lanes.png: every lane of a repository side by side, combinations marked.

Each lane (a worktree under .autoexp/lanes/) is drawn as its best objective so far over its
own experiments, all on one axis, from the same curves `report --against` draws (compare.py).
A lane made by `combine` (it holds .autoexp/combine.json) is drawn in black, thicker and
dashed, and the table says which lanes it combined and what happened to each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, MetricConfig
from ..errors import ConfigError
from ..guard import atomic_write_file
from ..ledger import EXPERIMENTS_JSONL
from .chart import ChartUnavailable
from .compare import Curve, _read_jsonl, best_label, curve, new_figure, plot_best, save_png
from .fmt import cell, num, plural, signed
from .summary import finite

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LANES_MD = "lanes.md"
LANES_PNG = "lanes.png"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
COMBINED_STYLE: dict[str, Any] = {"color": "black", "linewidth": 2.6, "linestyle": "--", "zorder": 5}
LEGEND_COLS = 4  # entries per legend row under the plot


@dataclass(frozen=True)
class LaneRun:
    tag: str
    focus: str | None
    curve: Curve
    combine: dict[str, Any] | None  # combine.json of a combined lane


@dataclass(frozen=True)
class LanesReport:
    markdown: Path
    chart: Path | None
    note: str | None  # why there is no chart
    table: str


def load_lanes(root: Path, m: MetricConfig) -> list[LaneRun]:
    """Every lane of the repository at `root` (its main checkout) with a ledger, by tag."""
    from ..combine import SUMMARY_FILE
    from ..lane import list_lanes
    from ..state import STATE_DIR

    out = []
    for info in list_lanes(root):
        ledger = info.path / EXPERIMENTS_JSONL
        records = _read_jsonl(ledger) if ledger.is_file() else []
        summary = info.path / STATE_DIR / SUMMARY_FILE
        combined = json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else None
        out.append(LaneRun(info.tag, info.focus, curve(info.tag, records, m), combined))
    return sorted(out, key=lambda r: (r.combine is not None, r.tag))  # combinations last


def _combined_of(run: LaneRun) -> str:
    steps = (run.combine or {}).get("steps", [])
    return "combination of " + ", ".join(str(s.get("tag")) for s in steps)


def _gain(c: Curve, m: MetricConfig) -> str:
    base = finite(c.records[0].metrics.get(m.name)) if c.records else None
    best = c.best[-1] if c.best else None
    if base is None or best is None:
        return "—"
    better = (best - base) if m.direction == "max" else (base - best)
    pct = f" ({abs(better) / abs(base) * 100:.2f}% {'better' if better >= 0 else 'worse'})" if base else ""
    return f"{signed(best - base)}{pct}"


def lanes_table(runs: Sequence[LaneRun], m: MetricConfig) -> str:
    """One row per lane, combinations last (baseline: its first experiment; best: its best kept), then what each
    combination did with each lane's change."""
    rows = ["| lane | focus | experiments | baseline | best | gain |", "|---|---|---:|---:|---:|---:|"]
    for r in runs:
        c = r.curve
        base = finite(c.records[0].metrics.get(m.name)) if c.records else None
        focus = f"**{_combined_of(r)}**" if r.combine is not None else cell(r.focus or "—", 60)
        rows.append(
            f"| {cell(r.tag, 30)} | {focus} | {len(c.records)} | {num(base)} | {num(c.best[-1] if c.best else None)} "
            f"| {_gain(c, m)} |"
        )
    for r in (r for r in runs if r.combine is not None):
        rows += ["", f"Combination **{cell(r.tag, 30)}**:", "", "| lane | status | its own gain | why |",
                 "|---|---|---:|---|"]  # fmt: skip
        for s in r.combine.get("steps", []) if r.combine else []:
            rows.append(
                f"| {cell(str(s.get('tag')), 30)} | {cell(str(s.get('status')), 12)} | {signed(s.get('gain'))} "
                f"| {cell(str(s.get('reason', '')), 120)} |"
            )
    return "\n".join(rows)


def build_lanes_figure(runs: Sequence[LaneRun], m: MetricConfig, title: str) -> Figure:
    """One axis: each lane's best so far over its experiments. Lines carry the lane's tag as
    their label and gid "lane" or "combined"."""
    fig = new_figure(10.0, 5.2)  # first: without matplotlib, ChartUnavailable with the install hint
    from matplotlib.ticker import MaxNLocator

    if not any(v is not None for r in runs for v in r.curve.best):
        raise ChartUnavailable(f"no lane has a kept {m.name} yet: nothing to plot")
    ax = fig.subplots()
    ax.set_label("lanes")
    colors = iter(PALETTE * (len(runs) // len(PALETTE) + 1))
    for r in runs:
        style = COMBINED_STYLE if r.combine is not None else {"color": next(colors)}
        line = plot_best(ax, r.curve, range(1, len(r.curve.best) + 1), **style)
        line.set_gid("combined" if r.combine is not None else "lane")
        final = r.curve.best[-1] if r.curve.best else None
        line.set_label(f"{r.tag}{' (combined)' if r.combine is not None else ''}: {num(final)}")
    ax.set_xlabel("experiment (of each lane)")
    ax.set_ylabel(best_label(m))
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, names = ax.get_legend_handles_labels()
    legend = fig.legend(handles, names, loc="outside lower center", ncols=min(LEGEND_COLS, len(names)), fontsize=9,
                        frameon=False)  # fmt: skip
    legend.set_gid("legend")
    fig.suptitle(title, fontsize=12)
    return fig


def write_lanes_report(root: Path, cfg: Config, out_dir: Path | None = None) -> LanesReport:
    """lanes.md and lanes.png (default in <root>/.autoexp/report/) for the lanes of the
    repository whose main checkout is `root`."""
    m = cfg.objective
    runs = [r for r in load_lanes(root, m) if r.curve.records]
    if not runs:
        raise ConfigError(
            f"no lane of {root} has logged an experiment yet: start one with `autoexp-mcp serve --tag NAME`"
        )
    out = Path(out_dir) if out_dir is not None else root / ".autoexp" / "report"
    combined = sum(1 for r in runs if r.combine is not None)
    title = f"autoexp lanes: best {m.name} so far, {plural(len(runs) - combined, 'lane')}"
    title += f" and {plural(combined, 'combination')}" if combined else ""
    chart: Path | None = None
    note: str | None = None
    try:
        chart = save_png(build_lanes_figure(runs, m, title), out / LANES_PNG)
    except ChartUnavailable as e:
        note = str(e)
        (out / LANES_PNG).unlink(missing_ok=True)  # an older chart would no longer match the table
    table = lanes_table(runs, m)
    md = [f"# {title}", "", table, ""]
    md += [f"![lanes]({LANES_PNG})", ""] if chart else [f"*No chart: {note}*", ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / LANES_MD
    atomic_write_file(path, "\n".join(md).encode("utf-8"))
    return LanesReport(path, chart, note, table)
