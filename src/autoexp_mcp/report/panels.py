"""What each panel of progress.png draws: the progress axes, the crash strip, the Pareto view.

Each function draws on axes it is given and returns the legend's handles and labels; the
legend itself goes under the plot (chart.py), so it never hides a point.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .fmt import better_word, change, num
from .summary import Track, finite, pareto_front

if TYPE_CHECKING:
    from matplotlib.axes import Axes

LEGEND_PT = 8.0  # font size of the legend
MARKER_PITCH_PT = 7.0  # below this many points per experiment, markers shrink to stay apart
GREEN, FRONT = "#2e7d32", "#c62828"
# How each kind of point is drawn. Discards are drawn over the running-best line, keeps over them.
STYLE: dict[str, dict[str, Any]] = {
    "discard": {"s": 24, "color": "#7d7d7d", "edgecolors": "white", "linewidths": 0.4, "zorder": 3.5},
    "off scale": {"s": 30, "color": "#7d7d7d", "zorder": 3.5, "clip_on": False},
    "explore": {"s": 36, "marker": "D", "facecolors": "white", "edgecolors": "#8e24aa", "linewidths": 1.2, "zorder": 4},
    "keep": {"s": 42, "color": GREEN, "edgecolors": "white", "linewidths": 0.6, "zorder": 4.5},
    "baseline": {"s": 140, "marker": "*", "color": "#1565c0", "edgecolors": "white", "linewidths": 0.5, "zorder": 5},
    "crash": {"s": 40, "marker": "x", "color": "#c62828", "linewidths": 1.6, "zorder": 3},
    "timeout": {"s": 40, "marker": "v", "color": "#ef6c00", "zorder": 3},
    "interrupted": {
        "s": 36,
        "marker": "s",
        "facecolors": "none",
        "edgecolors": "#6d4c41",
        "linewidths": 1.2,
        "zorder": 3,
    },
}
LANES = {"crash": 0.78, "timeout": 0.5, "interrupted": 0.22}  # heights on the crash strip (axes fraction)
_ARROW = {"max": "↑", "min": "↓"}

Legend = tuple[list[Any], list[str]]


def marker_scale(experiments: int, width_in: float) -> float:
    """Marker areas shrink when experiments sit closer than MARKER_PITCH_PT, down to 0.3."""
    pitch = width_in * 72 / max(1, experiments)
    return max(0.3, min(1.0, (pitch / MARKER_PITCH_PT) ** 2))


def _ylimits(values: list[float], must: list[float]) -> tuple[float, float]:
    """Limits that show every kept value but let far-off discards fall off the scale."""
    inside = values
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
        iqr = q3 - q1
        if iqr > 0:
            inside = [v for v in values if q1 - 3 * iqr <= v <= q3 + 3 * iqr]
    lo, hi = min(*must, *inside), max(*must, *inside)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    return lo - pad, hi + pad


def _scatter(ax: Axes, kind: str, pts: Sequence[tuple[float, float]], scale: float, **extra: Any) -> Any:
    style = {**STYLE[kind], **extra}
    if kind != "baseline":
        style["s"] = style["s"] * scale
    coll = ax.scatter([p[0] for p in pts], [p[1] for p in pts], **style)
    coll.set_gid(kind)
    return coll


def draw_progress(ax: Axes, t: Track, scale: float) -> tuple[Legend, tuple[tuple[float, float], ...]]:
    """The objective per experiment and the running best; returns the legend and the best
    line's vertices (for the label placement)."""
    m = t.objective
    measured = [(s, s.value) for s in t.steps if s.value is not None]
    values = [v for _, v in measured]
    lo, hi = _ylimits(values, [s.best for s in t.steps if s.best is not None] or values) if values else (0, 1)
    # A little more room on the better side, where the numbers of the keeps go.
    room = (hi - lo) * 0.06
    ax.set_ylim(lo - room * (m.direction == "min"), hi + room * (m.direction == "max"))
    handles: list[Any] = []
    labels: list[str] = []
    b = t.baseline
    if b is not None and b.value is not None:
        ax.axhline(b.value, color=STYLE["baseline"]["color"], linestyle="--", linewidth=0.9, alpha=0.5, zorder=1)
        handles.append(_scatter(ax, "baseline", [(b.record.experiment, b.value)], scale))
        labels.append("baseline")
    for kind in ("keep", "explore", "discard"):
        pts = [(s.record.experiment, v) for s, v in measured if s.record.status == kind and s is not b]
        if pts:
            handles.append(_scatter(ax, kind, [(x, v) for x, v in pts if lo <= v <= hi], scale))
            labels.append(f"{kind} ({len(pts)})")
    # Far-off values are drawn as triangles on the edge rather than stretching the axis.
    below = [(s.record.experiment, lo) for s, v in measured if v < lo]
    above = [(s.record.experiment, hi) for s, v in measured if v > hi]
    for marker, pts in (("v", below), ("^", above)):
        if pts:
            coll = _scatter(ax, "off scale", pts, scale, marker=marker)
    if below or above:
        handles.append(coll)
        labels.append(f"off scale ({len(below) + len(above)})")
    if not measured:
        ax.text(0.5, 0.5, f"no {m.name} measured yet: every run crashed or timed out", transform=ax.transAxes,
                ha="center", va="center", color="#777777", fontsize=10)  # fmt: skip
    run = [(float(s.record.experiment), s.best) for s in t.steps if s.best is not None]
    if run:
        (line,) = ax.step([x for x, _ in run], [y for _, y in run], where="post", color=GREEN, linewidth=1.8,
                          alpha=0.8, zorder=3)  # fmt: skip
        handles.append(line)
        labels.append("best so far")
    title = f"{t.stage + ': ' if t.stage else ''}{m.name} {_ARROW[m.direction]}"
    if b is not None and t.improvement is not None:
        title += f"   {num(b.value)} → {num(t.best_value)}, {change(t)}"
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(f"{m.name} ({better_word(m)})")
    ax.grid(True, alpha=0.25)
    return (handles, labels), _step_vertices(run)


def _step_vertices(run: Sequence[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    out: list[tuple[float, float]] = []
    for (x0, y0), (x1, y1) in itertools.pairwise(run):
        out += [(x0, y0), (x1, y0), (x1, y1)]
    return tuple(out) or tuple(run)


def draw_strip(ax: Axes, t: Track, scale: float) -> Legend:
    """Crashes, timeouts and interrupted runs at their experiment's x, each kind on a lane of its own."""
    handles, labels = [], []
    for kind, y in LANES.items():
        xs = [s.record.experiment for s in t.steps if s.record.status == kind]
        if xs:
            handles.append(_scatter(ax, kind, [(x, y) for x in xs], scale))
            labels.append(f"{kind} ({len(xs)})")
    ax.set_ylim(0, 1)
    ax.set_yticks(list(LANES.values()), list(LANES), fontsize=8)
    ax.tick_params(axis="y", length=0)
    ax.grid(True, axis="x", alpha=0.25)
    ax.set_facecolor("#fbf7f7")
    return handles, labels


def front_points(t: Track) -> tuple[list[tuple[int, float, float]], list[int]]:
    """(experiment, metric 1, metric 2) of every experiment measured on both, and the indices
    of those on the Pareto front."""
    mx, my = t.metrics[0], t.metrics[1]
    pts = [
        (s.record.experiment, x, y)
        for s in t.steps
        if (x := finite(s.record.metrics.get(mx.name))) is not None
        and (y := finite(s.record.metrics.get(my.name))) is not None
    ]
    return pts, pareto_front([(x, y) for _, x, y in pts], (mx.direction, my.direction))


def draw_pareto(ax: Axes, t: Track) -> tuple[Legend, list[tuple[float, float]]]:
    """Metric 1 against metric 2 with the Pareto front; returns the legend and the front."""
    mx, my = t.metrics[0], t.metrics[1]
    pts, front = front_points(t)
    status = {s.record.experiment: s.record.status for s in t.steps}
    base = t.baseline.record.experiment if t.baseline else None
    handles: list[Any] = []
    labels: list[str] = []
    if base is not None and (sel := [(x, y) for e, x, y in pts if e == base]):
        handles.append(_scatter(ax, "baseline", sel, 1.0))
        labels.append("baseline")
    for kind in ("keep", "explore", "discard"):
        sel = [(x, y) for e, x, y in pts if status[e] == kind and e != base]
        if sel:
            handles.append(_scatter(ax, kind, sel, 1.0))
            labels.append(f"{kind} ({len(sel)})")
    line_pts = [(pts[i][1], pts[i][2]) for i in front]
    (line,) = ax.plot([x for x, _ in line_pts], [y for _, y in line_pts], color=FRONT, linewidth=1.4,
                      marker="o", markersize=4, zorder=4)  # fmt: skip
    line.set_gid("front")
    handles.append(line)
    labels.append(f"Pareto front ({len(front)})")
    ax.set_xlabel(f"{mx.name} ({better_word(mx)})")
    ax.set_ylabel(f"{my.name} ({better_word(my)})")
    ax.set_title(f"{mx.name} {_ARROW[mx.direction]} vs {my.name} {_ARROW[my.direction]} ({t.mode})", fontsize=11)
    ax.grid(True, alpha=0.25)
    return (handles, labels), line_pts


def legend_rows(labels: Sequence[str], width_in: float) -> int:
    """How many rows the legend needs across `width_in` (8 pt text is about 4.8 pt a character)."""
    entry_pt = [len(label) * 4.8 + 3.5 * LEGEND_PT for label in labels]
    return max(1, math.ceil(sum(entry_pt) / (width_in * 72 * 0.9)))


def draw_legend(ax: Axes, legend: Legend, rows: int) -> None:
    ax.set_axis_off()
    ax.set_gid("legend")
    handles, labels = legend
    if handles:
        ax.legend(handles, labels, loc="center", ncols=math.ceil(len(labels) / rows), fontsize=LEGEND_PT,
                  frameon=False, handlelength=1.5, columnspacing=1.5, scatterpoints=1)  # fmt: skip
