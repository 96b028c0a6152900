"""Where to put the chart's number labels so that none covers a point, a line or another label.

Pure geometry in display units (pixels, y up), so it is tested without drawing: each label
tries a fixed list of spots around its point, nearest first and on the preferred side first,
and takes the first spot that lies inside the axes and touches nothing placed so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Box = tuple[float, float, float, float]  # x0, y0, x1, y1
Size = tuple[float, float]  # width, height

# Directions tried around a point, as (dx, dy) unit steps: straight off the point first.
_DIRECTIONS = ((0, 1), (-1, 1), (1, 1), (-1, 0), (1, 0), (0, -1), (-1, -1), (1, -1))
_RINGS = (1.0, 2.0, 3.2)  # distances tried, in multiples of the nearest spot's distance
FAR_RING = 1  # spots from this ring on are far from their point: draw a leader line


@dataclass(frozen=True)
class Spot:
    """A placed label: its centre's offset from the point, its box, how far out and how clean."""

    offset: tuple[float, float]
    box: Box
    ring: int
    overlap: float  # area shared with obstacles and other labels (0 when clean)

    @property
    def far(self) -> bool:
        return self.ring >= FAR_RING


def overlap(a: Box, b: Box) -> float:
    """The area two boxes share (0 when they only touch or are apart)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _apart(a: Box, b: Box) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def contains(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _offsets(size: Size, radius: float, gap: float, up: bool) -> list[tuple[int, float, float]]:
    w, h = size
    out = []
    for ring, scale in enumerate(_RINGS):
        dirs = _DIRECTIONS if up else tuple((dx, -dy) for dx, dy in _DIRECTIONS)
        for dx, dy in dirs:
            # The nearest spot leaves `gap` between the label's edge and the marker's edge.
            ox = dx * (radius + gap + w / 2) * scale
            oy = dy * (radius + gap + h / 2) * scale
            out.append((ring, ox, oy))
    return out


def place(
    anchors: Sequence[tuple[float, float]],
    sizes: Sequence[Size],
    obstacles: Sequence[Box],
    bounds: Box,
    *,
    radius: float,
    gap: float,
    up: bool = True,
) -> list[Spot | None]:
    """One spot per label, in the order given (put the most important first).

    `radius` is the half-size of the labelled markers, `up` puts labels above their points
    first. A label takes the first clean spot; when none is clean, the spot inside `bounds`
    that overlaps least; None when no spot fits inside `bounds` at all.
    """
    placed: list[Box] = []
    out: list[Spot | None] = []
    for (ax, ay), (w, h) in zip(anchors, sizes, strict=True):
        # Only what the farthest spot could touch is worth testing.
        rx = _RINGS[-1] * (radius + gap + w / 2) + w / 2
        ry = _RINGS[-1] * (radius + gap + h / 2) + h / 2
        reach = (ax - rx, ay - ry, ax + rx, ay + ry)
        near = [
            b
            for b in (*obstacles, *placed)
            if b[0] < reach[2] and reach[0] < b[2] and b[1] < reach[3] and reach[1] < b[3]
        ]
        best: Spot | None = None
        for ring, ox, oy in _offsets((w, h), radius, gap, up):
            cx, cy = ax + ox, ay + oy
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            if not contains(bounds, box):
                continue
            area = sum(overlap(box, b) for b in near)
            if best is None or area < best.overlap:
                best = Spot((ox, oy), box, ring, area)
            if area == 0:
                break
        out.append(best)
        if best is not None:
            placed.append(best.box)
    return out
