"""The chart's words: numbers on the kept points, the key that spells them out, titles that fit.

All of it runs once the layout is fixed (chart.build_figure), because it measures text in
pixels: numbers go where placement.py finds room, key descriptions are cut to the key's width.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import placement
from .fmt import gain
from .panels import FRONT, GREEN
from .summary import Step, Track

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.backend_bases import RendererBase
    from matplotlib.text import Text

MAX_LABELS = 12  # kept changes numbered on the chart (the largest gains)
KEY_LINE_PT = 14.0  # one line of the key under the plot
LABEL_PT, KEY_PT, FRONT_PT = 7.5, 8.0, 7.0  # font sizes
LABEL_PAD = 0.25  # padding of the number's box, in font sizes
BOX = {"boxstyle": f"round,pad={LABEL_PAD}", "facecolor": "white", "edgecolor": GREEN, "linewidth": 0.8}
GAP_PT = 1.5  # between a label and the marker it names

KeyRows = tuple[tuple["Text", ...], ...]


def numbered_keeps(t: Track, limit: int = MAX_LABELS) -> tuple[Step, ...]:
    """The keeps (baseline aside) with the `limit` largest gains, in experiment order."""
    top = sorted(kept_changes(t), key=lambda s: -(s.gain or 0.0))[:limit]
    return tuple(sorted(top, key=lambda s: s.record.experiment))


def kept_changes(t: Track) -> list[Step]:
    return [s for s in t.kept if s.record.status == "keep" and s is not t.baseline and s.gain is not None]


def key_lines(t: Track) -> int:
    """Lines of the key: one per numbered keep, and a heading when not every keep is numbered."""
    n = len(numbered_keeps(t))
    return n + (0 < n < len(kept_changes(t)))


def draw_key(ax: Axes, t: Track, lines: int) -> KeyRows:
    """The numbered kept changes, one per line from the top; `align_key` sets the columns."""
    ax.set_axis_off()
    ax.set_gid("key")
    numbered, total = numbered_keeps(t), len(kept_changes(t))
    rows: list[tuple[Text, ...]] = []
    if len(numbered) < total:
        head = f"the {len(numbered)} kept changes with the largest gains, of {total} (all are in report.md):"
        rows.append((ax.text(0, 1 - 0.5 / lines, head, fontsize=KEY_PT, va="center", color="#555555"),))
    for k, s in enumerate(numbered, 1):
        y = 1 - (len(rows) + 0.5) / lines
        cells = (f"#{s.record.experiment}", gain(s.gain, s.gain_pct), s.record.description)
        number = ax.text(0, y, str(k), fontsize=LABEL_PT, color=GREEN, ha="center", va="center", bbox=BOX)
        rows.append((number, *(ax.text(0, y, c, fontsize=KEY_PT, va="center", parse_math=False) for c in cells)))
    for text in itertools.chain.from_iterable(rows):
        text.set_in_layout(False)  # cut to the key's width once the layout is done
    return tuple(rows)


def fit(text: Text, max_px: float, renderer: RendererBase) -> None:
    """Shorten `text` with an ellipsis until it is at most `max_px` wide."""
    full = text.get_text()
    if text.get_window_extent(renderer).width <= max_px:
        return
    lo, hi = 0, len(full)
    while lo < hi:  # the longest prefix that fits
        mid = (lo + hi + 1) // 2
        text.set_text(full[:mid].rstrip() + "…")
        if text.get_window_extent(renderer).width <= max_px:
            lo = mid
        else:
            hi = mid - 1
    text.set_text(full[:lo].rstrip() + "…")


def align_key(ax: Axes, rows: KeyRows, renderer: RendererBase) -> None:
    """Columns of the key: number, experiment, gain, description (cut to the key's width)."""
    box = ax.get_window_extent(renderer)
    px = _px(ax)
    entries = [row for row in rows if len(row) == 4]
    if not entries:
        return
    widths = [max(row[i].get_window_extent(renderer).width for row in entries) for i in range(3)]
    number_w = widths[0] + 2 * LABEL_PAD * LABEL_PT * px
    lefts = [box.x0 + number_w / 2 + px, box.x0 + number_w + 8 * px]
    lefts += [lefts[1] + widths[1] + 6 * px]
    lefts += [lefts[2] + widths[2] + 12 * px]
    inv = ax.transAxes.inverted()
    for row in rows:
        if len(row) == 1:
            fit(row[0], box.width, renderer)
            continue
        for text, x in zip(row, lefts, strict=True):
            text.set_x(inv.transform((x, box.y0))[0])
        fit(row[3], box.x1 - lefts[3], renderer)


def _px(ax: Axes) -> float:
    """Display pixels per point."""
    fig = ax.get_figure()
    return fig.dpi / 72 if fig is not None else 1.0


def _obstacles(ax: Axes, line: Sequence[tuple[float, float]], px: float) -> list[placement.Box]:
    """Boxes of every marker and of the line's segments, in display pixels."""
    boxes: list[placement.Box] = []
    for coll in ax.collections:
        offsets = coll.get_offset_transform().transform(coll.get_offsets())
        sizes = coll.get_sizes()  # type: ignore[attr-defined]
        for i, (x, y) in enumerate(offsets):
            r = math.sqrt(sizes[i % len(sizes)]) / 2 * px + px
            boxes.append((x - r, y - r, x + r, y + r))
    half = 1.5 * px
    pts = [(float(x), float(y)) for x, y in ax.transData.transform(line)] if line else []
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        boxes.append((min(x0, x1) - half, min(y0, y1) - half, max(x0, x1) + half, max(y0, y1) + half))
    return boxes


def _sizes(
    ax: Axes, texts: Sequence[str], pt: float, pad_px: float, renderer: RendererBase
) -> list[tuple[float, float]]:
    probe = ax.text(0, 0, "", fontsize=pt)
    out = []
    for text in texts:
        probe.set_text(text)
        ext = probe.get_window_extent(renderer)
        out.append((ext.width + 2 * pad_px, ext.height + 2 * pad_px))
    probe.remove()
    return out


def _inner(ax: Axes, renderer: RendererBase, margin_px: float) -> placement.Box:
    b = ax.get_window_extent(renderer)
    return (b.x0 + margin_px, b.y0 + margin_px, b.x1 - margin_px, b.y1 - margin_px)


def place_numbers(ax: Axes, t: Track, line: Sequence[tuple[float, float]], renderer: RendererBase) -> None:
    """Number the kept changes of the key on their points, where nothing else is drawn."""
    numbered = numbered_keeps(t)
    if not numbered:
        return
    px = _px(ax)
    points = [(float(s.record.experiment), s.value or 0.0) for s in numbered]
    anchors = [(float(x), float(y)) for x, y in ax.transData.transform(points)]
    sizes = _sizes(ax, [str(k) for k in range(1, len(points) + 1)], LABEL_PT, LABEL_PAD * LABEL_PT * px, renderer)
    keep = next(c for c in ax.collections if c.get_gid() == "keep")
    radius = math.sqrt(keep.get_sizes()[0]) / 2 * px  # type: ignore[attr-defined]
    order = sorted(range(len(points)), key=lambda i: -(numbered[i].gain or 0.0))  # largest gains choose first
    spots = placement.place(
        [anchors[i] for i in order],
        [sizes[i] for i in order],
        _obstacles(ax, line, px),
        _inner(ax, renderer, 2 * px),
        radius=radius,
        gap=GAP_PT * px,
        up=t.objective.direction == "max",
    )
    leader = {"arrowstyle": "-", "color": GREEN, "linewidth": 0.6, "shrinkA": 0, "shrinkB": radius / px}
    for i, spot in zip(order, spots, strict=True):
        if spot is None:
            continue
        ann = ax.annotate(str(i + 1), points[i], xytext=(spot.offset[0] / px, spot.offset[1] / px),
                          textcoords="offset points", ha="center", va="center", fontsize=LABEL_PT, color=GREEN,
                          bbox=BOX, arrowprops=leader if spot.far else None, zorder=6)  # fmt: skip
        ann.set_gid("keep-label")
        ann.set_in_layout(False)


def label_front(
    ax: Axes, pts: Sequence[tuple[int, float, float]], front: Sequence[int], renderer: RendererBase
) -> None:
    """#experiment next to the Pareto front's points, each only where it fits cleanly."""
    front = front[:MAX_LABELS]
    if not front:
        return
    px = _px(ax)
    line = [(pts[i][1], pts[i][2]) for i in front]
    texts = [f"#{pts[i][0]}" for i in front]
    spots = placement.place(
        [(float(x), float(y)) for x, y in ax.transData.transform(line)],
        _sizes(ax, texts, FRONT_PT, px, renderer),
        _obstacles(ax, line, px),
        _inner(ax, renderer, 2 * px),
        radius=3 * px,
        gap=GAP_PT * px,
    )
    for text, xy, spot in zip(texts, line, spots, strict=True):
        if spot is None or spot.overlap > 0 or spot.far:
            continue  # an unlabelled point of the front is better than a label over another point
        ann = ax.annotate(text, xy, xytext=(spot.offset[0] / px, spot.offset[1] / px), textcoords="offset points",
                          ha="center", va="center", fontsize=FRONT_PT, color=FRONT)  # fmt: skip
        ann.set_gid("front-label")
        ann.set_in_layout(False)
