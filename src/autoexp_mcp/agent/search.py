"""Moves over the numbers of a target: coordinate search and random perturbation. Pure: the
driver hands in the incumbent's numbers and the outcome of each move.

Coordinate search (compass search) tries one value at a time: up by its step, and down when
up fails; when both fail, the value's step is multiplied by `shrink` and the next value gets
its turn. A kept move is pushed further the same way, its step multiplied by `grow`. Random
search perturbs `perturb` values at once by about `step`, each up or down.

Steps are relative: a fraction of the bounds' width where the strategy gives bounds, else a
factor on the value (x(1+step) up, /(1+step) down), so a positive value stays positive. A
move that crashed or timed out marks the value it reached as out of reach for that key, and
later moves stop short of it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from .numbers import Number, rounded
from .strategy import Strategy

FAILED = ("discard", "crash", "timeout", "refused")
AFTER_CRASH_REACH = 0.25  # right after a crash, a move toward a crashed value goes this share of the way
MAX_STEP = 10.0  # relative: a grown step never jumps further than this
RANDOM_STEP_SPREAD = 0.5  # sigma of the log-normal factor on a random move's step


@dataclass(frozen=True)
class Change:
    key: str
    old: float
    new: float
    integer: bool
    direction: int  # +1 up, -1 down


@dataclass(frozen=True)
class Move:
    kind: str  # "coordinate" or "random"
    changes: tuple[Change, ...]
    why: str

    def describe(self) -> str:
        def lit(v: float, integer: bool) -> str:
            return str(round(v)) if integer else f"{v:.4g}"

        parts = ", ".join(f"{c.key} {lit(c.old, c.integer)} → {lit(c.new, c.integer)}" for c in self.changes)
        return f"{self.kind}: {parts} ({self.why})"


@dataclass
class _Coord:
    step: float
    direction: int = 1  # the way to try first
    failed: set[int] = field(default_factory=set)  # ways that failed at this step
    limits: dict[int, float] = field(default_factory=dict)  # way -> first value out of reach


class Search:
    def __init__(self, strategy: Strategy) -> None:
        self.s = strategy
        self.rng = random.Random(strategy.seed)
        self.coords: dict[str, _Coord] = {}
        self.cursor = 0  # the key whose turn it is (coordinate)
        self.last_crashed = False  # the last measured move crashed or timed out

    # --- the values a key may take ----------------------------------------------------------

    def target(self, n: Number, direction: int, step: float) -> float | None:
        """Where `n` lands moved one `step` the `direction` way, or None when it cannot move."""
        lo, hi = self.s.bounds_of(n.key)
        v = n.value
        if lo is not None and hi is not None:
            new = v + direction * step * (hi - lo)
        elif v != 0:
            factor = 1 + step
            new = v * factor if (direction > 0) == (v > 0) else v / factor
        else:
            new = direction * step
        if n.integer and round(new) == round(v):
            new = v + direction  # the smallest move an integer can make
        limit = self.coords[n.key].limits.get(direction) if n.key in self.coords else None
        if limit is not None:
            if (new - limit) * direction >= 0:
                new = (v + limit) / 2  # halfway to where it broke
            careful = v + (limit - v) * AFTER_CRASH_REACH
            if self.last_crashed and (new - careful) * direction > 0:
                new = careful  # crashes in a row stop the run: closer to the last value known to work
        if lo is not None:
            new = max(lo, new)
        if hi is not None:
            new = min(hi, new)
        if lo is None and hi is None and v != 0 and (new > 0) != (v > 0):
            return None  # an unbounded value keeps its sign
        new = rounded(new, n.integer)
        if new == v or (limit is not None and (new - limit) * direction >= 0):
            return None
        return new

    # --- proposals ----------------------------------------------------------------------------

    def propose(self, numbers: list[Number]) -> Move | None:
        """The next move from the incumbent's `numbers` (only those the strategy wants), or None
        when no value can move any more."""
        mine = [n for n in numbers if self.s.wants(n.key)]
        for n in mine:
            self.coords.setdefault(n.key, _Coord(self.s.step))
        if not mine:
            return None
        if self.s.search == "random" or (self.s.explore > 0 and self.rng.random() < self.s.explore):
            return self._random(mine)
        # Right after a crash, a move toward a value that crashed waits while another move exists:
        # crashes in a row stop the whole run.
        return (
            (self.last_crashed and self._coordinate(mine, avoid_limits=True))
            or self._coordinate(mine, avoid_limits=False)
            or self._random(mine)
        )

    def _coordinate(self, mine: list[Number], *, avoid_limits: bool) -> Move | None:
        for _ in range(len(mine) * 8):  # enough turns for every value to shrink out of reach
            n = mine[self.cursor % len(mine)]
            c = self.coords[n.key]
            if c.step < self.s.min_step:
                if all(self.coords[m.key].step < self.s.min_step for m in mine):
                    return None
                self.cursor += 1
                continue
            deferred = False
            for way in (c.direction, -c.direction):
                if way in c.failed:
                    continue
                if avoid_limits and way in c.limits:
                    deferred = True
                    continue
                new = self.target(n, way, c.step)
                if new is None:
                    c.failed.add(way)
                    continue
                word = "up" if way > 0 else "down"
                why = f"{word} by step {c.step:.3g}"
                if way != c.direction:
                    why += f", {'down' if way > 0 else 'up'} failed"
                return Move("coordinate", (Change(n.key, n.value, new, n.integer, way),), why)
            if deferred:
                self.cursor += 1
                continue
            c.step *= self.s.shrink
            c.failed.clear()
            self.cursor += 1
        return None

    def _random(self, mine: list[Number]) -> Move | None:
        for _ in range(20):  # draws until one moves something
            picked = self.rng.sample(mine, min(self.s.perturb, len(mine)))
            changes = []
            for n in picked:
                way = self.rng.choice((1, -1))
                step = self.s.step * math.exp(self.rng.gauss(0.0, RANDOM_STEP_SPREAD))
                new = self.target(n, way, step)
                if new is not None:
                    changes.append(Change(n.key, n.value, new, n.integer, way))
            if changes:
                return Move(
                    "random", tuple(changes), f"perturb {len(changes)} of {len(mine)} values by ~{self.s.step:g}"
                )
        return None

    # --- what happened ------------------------------------------------------------------------

    def feedback(self, move: Move, outcome: str, *, measured: bool = True) -> None:
        """Learn from the decision on `move`: keep, explore, discard, crash, timeout or refused
        (`measured` False: the outcome of the same version earlier, no experiment spent now)."""
        if measured and outcome != "refused":
            self.last_crashed = outcome in ("crash", "timeout")
        if move.kind == "random":
            if outcome in ("crash", "timeout", "refused") and len(move.changes) == 1:
                self._mark_limit(move.changes[0])
            return
        ch = move.changes[0]
        c = self.coords[ch.key]
        if outcome in ("keep", "explore"):
            c.direction = ch.direction  # push on the same way, further
            c.step = min(c.step * self.s.grow, MAX_STEP)
            c.failed.clear()
            return
        if outcome in ("crash", "timeout", "refused"):
            self._mark_limit(ch)
        c.failed.add(ch.direction)
        if {1, -1} <= c.failed:
            c.step *= self.s.shrink
            c.failed.clear()
            self.cursor += 1

    def _mark_limit(self, ch: Change) -> None:
        c = self.coords[ch.key]
        old = c.limits.get(ch.direction)
        if old is None or (ch.new - old) * ch.direction < 0:
            c.limits[ch.direction] = ch.new
