"""progress.png: the objective per experiment, the running best, crashes on their own strip.

Every experiment gets a marker: measured ones on the main axes (far-off values as triangles on
its edge), crashes and timeouts on a strip under it at their experiment's x, never at a metric
height. The kept changes with the largest gains carry small numbers, placed where they cover no
point, line or other number (placement.py); the key under the plot spells out what each number
changed. The legend sits under the plot too, so it hides nothing.

matplotlib is optional: it is imported inside the functions, so the rest works without it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config
from ..errors import AutoexpError
from ..guard import atomic_write_file
from ..ledger import UNMEASURED_STATUSES, Record
from . import labels, panels
from .fmt import counts_line, plural
from .summary import TWO_METRIC_MODES, Summary, Track, summarize

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

CHART_INSTALL = "pip install 'autoexp-mcp[chart]'"
CHART_DPI = 120
MAX_LABELS = labels.MAX_LABELS
# Sizes in inches: figure width by panels per row, then the height of each part of a panel.
WIDTHS_IN = {1: 10.0, 2: 14.0, 3: 17.0}
MAIN_IN, STRIP_IN, LEGEND_ROW_IN = 4.2, 0.55, 0.3
DECOR_IN, TITLE_IN = 0.75, 0.45  # a row's titles and tick labels; the figure's title
PLOT_SHARE = 0.85  # of a panel's width inside its axes (the rest: tick labels, margins)


class ChartUnavailable(AutoexpError):
    """The progress chart cannot be drawn (matplotlib missing, or nothing to plot yet)."""


def chart_title(s: Summary, tag: str) -> str:
    """The chart's title. It counts the baselines apart, as the legend draws them apart: a
    baseline is logged as a keep, but it is no change that was kept."""
    counts = dict(s.counts)
    bases = sum(1 for t in s.tracks if t.baseline is not None and t.baseline.record.status == "keep")
    counts["keep"] = counts.get("keep", 0) - bases
    lead = "" if not bases else "the baseline, " if bases == 1 else f"{bases} baselines, "
    return f"autoexp {tag}: {plural(s.experiments, 'experiment')}: {lead}{counts_line(counts)}"


def _unmeasured(t: Track) -> bool:
    return any(s.record.status in UNMEASURED_STATUSES for s in t.steps)


@dataclass
class _Panel:
    """One panel: a track drawn as progress, or its two metrics against each other."""

    track: Track
    pareto: bool
    column: int
    rows: dict[str, int]  # grid row of each part: main, strip, legend, key
    key_lines: int  # lines of the key in this panel's row
    ax: Axes | None = None
    line: tuple[tuple[float, float], ...] = ()  # the running best, or the Pareto front
    key: Axes | None = None
    key_rows: labels.KeyRows = ()


def _plan(s: Summary) -> tuple[list[_Panel], list[float], int]:
    """Which panel goes where, and the grid's row heights in inches (legend rows set later)."""
    tracks = list(s.tracks)
    pareto = len(tracks) == 1 and len(tracks[0].metrics) >= 2 and tracks[0].mode in TWO_METRIC_MODES
    kinds = [(t, False) for t in tracks] + ([(tracks[0], True)] if pareto else [])
    cols = min(len(kinds), 3)
    heights: list[float] = []
    out: list[_Panel] = []
    for start in range(0, len(kinds), cols):
        row = kinds[start : start + cols]
        index = {"main": len(heights)}
        heights.append(MAIN_IN)
        if any(not p and _unmeasured(t) for t, p in row):
            index["strip"] = len(heights)
            heights.append(STRIP_IN)
        index["legend"] = len(heights)
        heights.append(LEGEND_ROW_IN)
        lines = max((labels.key_lines(t) for t, p in row if not p), default=0)
        if lines:
            index["key"] = len(heights)
            heights.append(lines * labels.KEY_LINE_PT / 72)
        out += [_Panel(t, p, c, index, lines) for c, (t, p) in enumerate(row)]
    return out, heights, cols


def _draw(fig: Figure, gs: GridSpec, p: _Panel, width_in: float) -> panels.Legend:
    from matplotlib.ticker import MaxNLocator

    t, rows, c = p.track, p.rows, p.column
    if p.pareto:
        # The Pareto panel also takes the strip's row, so its x label does not push the strip down.
        p.ax = fig.add_subplot(gs[rows["main"] : rows.get("strip", rows["main"]) + 1, c])
        p.ax.set_label("pareto")
        legend, front = panels.draw_pareto(p.ax, t)
        p.line = tuple(front)
        return legend
    p.ax = ax = fig.add_subplot(gs[rows["main"], c])
    ax.set_label("progress")
    first, last = t.steps[0].record.experiment, t.steps[-1].record.experiment
    scale = panels.marker_scale(last - first + 1, width_in * PLOT_SHARE)
    legend, p.line = panels.draw_progress(ax, t, scale)
    pad = max(0.7, (last - first) * 0.03)
    ax.set_xlim(first - pad, last + pad)
    if last - first < 10:
        ax.set_xticks(range(first, last + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bottom = ax
    if _unmeasured(t):
        bottom = fig.add_subplot(gs[rows["strip"], c], sharex=ax)
        bottom.set_label("crashes")
        handles, names = panels.draw_strip(bottom, t, scale)
        legend = (legend[0] + handles, legend[1] + names)
        ax.tick_params(labelbottom=False)
    bottom.set_xlabel("experiment")
    if labels.key_lines(t):
        p.key = fig.add_subplot(gs[rows["key"], c])
        p.key_rows = labels.draw_key(p.key, t, p.key_lines)
    return legend


def _layout(s: Summary) -> tuple[Figure, list[_Panel]]:
    from matplotlib.figure import Figure

    plan, heights, cols = _plan(s)
    width = WIDTHS_IN[cols]
    col_in = width / cols
    widths = [3, 2] if cols == 2 and plan[-1].pareto else [1] * cols
    fig = Figure(figsize=(width, 1.0), dpi=CHART_DPI, layout="constrained")
    gs = fig.add_gridspec(len(heights), cols, height_ratios=heights, width_ratios=widths)
    for p in plan:
        legend = _draw(fig, gs, p, col_in * widths[p.column] / (sum(widths) / cols))
        rows = panels.legend_rows(legend[1], col_in)
        panels.draw_legend(fig.add_subplot(gs[p.rows["legend"], p.column]), legend, rows)
        heights[p.rows["legend"]] = max(heights[p.rows["legend"]], rows * LEGEND_ROW_IN)
    gs.set_height_ratios(heights)
    fig.set_size_inches(width, TITLE_IN + sum(heights) + DECOR_IN * len({p.rows["main"] for p in plan}))
    return fig, plan


def build_figure(records: Sequence[Record], cfg: Config) -> Figure:
    """The progress chart as a laid-out matplotlib Figure (`render_chart` saves it as a PNG).

    Axes carry labels ("progress", "crashes", "pareto") and gids ("legend", "key"); markers
    carry their kind as gid ("keep", "discard", "crash", …), the numbers "keep-label"."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as e:
        raise ChartUnavailable(f"matplotlib is not installed ({e}). Install it with: {CHART_INSTALL}") from None
    s = summarize(records, cfg)
    if not s.tracks:
        raise ChartUnavailable("no experiments logged yet: nothing to plot")
    fig, plan = _layout(s)
    title = fig.suptitle(chart_title(s, cfg.experiment.tag), fontsize=12)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw_without_rendering()
    # From here on the axes stay where the layout put them, so what is measured in pixels now
    # is where it lands in the saved image.
    fig.set_layout_engine("none")
    labels.fit(title, fig.bbox.width - 8, renderer)
    for p in plan:
        assert p.ax is not None
        labels.fit(p.ax.title, p.ax.get_window_extent(renderer).width, renderer)
        if p.pareto:
            labels.label_front(p.ax, *panels.front_points(p.track), renderer)
        else:
            labels.place_numbers(p.ax, p.track, p.line, renderer)
        if p.key is not None:
            labels.align_key(p.key, p.key_rows, renderer)
    return fig


def render_chart(records: Sequence[Record], cfg: Config, out: Path) -> Path:
    """Draw progress.png: the objective per experiment with the running best, crashes and
    timeouts on a strip below (and, for two-metric policies, metric 1 vs metric 2 with the
    Pareto front). Returns `out`."""
    fig = build_figure(records, cfg)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=CHART_DPI)
    atomic_write_file(out, png.getvalue())
    return out
