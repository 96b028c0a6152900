"""Pure decision rules: (candidate, incumbent, config) -> Decision. No I/O, no clock.

A `Measurement` holds every repeat's value of every metric; rules compare means, and with
`repeats > 1` they require the gain to clear the measured noise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .config import Config, MetricConfig

Status = Literal["keep", "discard", "explore", "crash", "timeout"]


@dataclass(frozen=True)
class Measurement:
    """All values measured for one commit: metric name -> one value per repeat."""

    values: Mapping[str, Sequence[float]]

    @classmethod
    def single(cls, metrics: Mapping[str, float]) -> Measurement:
        return cls({k: (v,) for k, v in metrics.items()})

    def mean(self, name: str) -> float:
        vals = self.values[name]
        return math.fsum(vals) / len(vals)

    def std(self, name: str) -> float:
        vals = self.values[name]
        return statistics.stdev(vals) if len(vals) > 1 else 0.0

    def n(self, name: str) -> int:
        return len(self.values[name])

    def means(self) -> dict[str, float]:
        return {k: self.mean(k) for k in self.values}

    def stds(self) -> dict[str, float]:
        return {k: self.std(k) for k in self.values}


@dataclass(frozen=True)
class Decision:
    status: Status
    rule: str
    reason: str
    margin: float | None = None
    details: dict[str, float] = field(default_factory=dict)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def better(m: MetricConfig, a: float, b: float) -> float:
    """Signed gain of `a` over `b` in the metric's direction (positive = a is better)."""
    return a - b if m.direction == "max" else b - a


def decide(
    candidate: Measurement,
    incumbent: Measurement | None,
    cfg: Config,
    *,
    experiment_index: int,
) -> Decision:
    """Keep, discard or explore `candidate` (experiment number `experiment_index`, 1-based).

    `incumbent` is None only for the baseline, which is always kept.
    """
    if incumbent is None:
        return Decision("keep", "baseline", "baseline: the first measurement is the incumbent")
    return _single(candidate, incumbent, cfg)


def _single(candidate: Measurement, incumbent: Measurement, cfg: Config) -> Decision:
    m = cfg.objective
    c, i = candidate.mean(m.name), incumbent.mean(m.name)
    gain = better(m, c, i)
    arrow = "higher" if m.direction == "max" else "lower"
    need = cfg.policy.min_improvement
    head = f"{m.name} {_fmt(c)} vs incumbent {_fmt(i)} ({arrow} is better), margin {gain:+.6g}"
    if gain > need or (gain == 0 and cfg.policy.keep_ties and need == 0):
        return Decision("keep", "single", f"{head}: improved", gain)
    if gain == 0:
        return Decision("discard", "single", f"{head}: tie, ties are discarded (policy.keep_ties = false)", gain)
    if gain > 0:
        return Decision("discard", "single", f"{head}: gain not above min_improvement {_fmt(need)}", gain)
    return Decision("discard", "single", f"{head}: worse", gain)
