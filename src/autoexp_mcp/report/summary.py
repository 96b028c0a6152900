"""The summary of a run: counts, baseline, best, gains, and what paid off. Pure: no I/O.

Gains are direction-aware throughout: positive means better, whatever the metric's direction.
A keep's gain is measured against the incumbent it replaced (the last keep or explore before it).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Config, Direction, MetricConfig
from ..ledger import KEPT_STATUSES, Record
from .fmt import fmt_duration

STATUSES = ("keep", "discard", "crash", "timeout", "explore")  # always counted; others (interrupted) when seen
TWO_METRIC_MODES = ("pareto", "primary_secondary", "lexicographic", "weighted")
# Diff-size buckets (inclusive upper bounds, lines): one-liners, small edits, rewrites.
DIFF_BUCKETS = ((2, "≤ 2 lines"), (10, "3–10 lines"), (None, "> 10 lines"))
# The wall-time breakdown splits the experiments at the median wall time. It is shown only when
# the slower half's median is at least this many times the faster half's: below that every eval
# took about the same time, and the split would sort noise.
TIME_SPLIT_RATIO = 1.5


@dataclass(frozen=True)
class Step:
    """One experiment seen against the incumbent it was compared with."""

    record: Record
    value: float | None  # the objective, None when not measured (crash, timeout)
    incumbent: float | None  # the objective of the incumbent before this experiment
    gain: float | None  # direction-aware: positive = better than the incumbent
    best: float | None  # best-ever objective after this experiment

    @property
    def gain_pct(self) -> float | None:
        if self.gain is None or not self.incumbent:
            return None
        return self.gain / abs(self.incumbent) * 100.0


@dataclass(frozen=True)
class Bucket:
    """Experiments (baseline excluded) grouped by diff size or wall time."""

    label: str
    runs: int
    kept: int
    mean_gain: float | None  # mean gain of the keeps in the bucket
    total_gain: float  # sum of the keeps' gains: this bucket's share of the improvement

    @property
    def keep_rate(self) -> float:
        return self.kept / self.runs if self.runs else 0.0


@dataclass(frozen=True)
class TimeSplit:
    """The experiments after the baseline split at the median wall time."""

    fast_s: float  # median wall time of the faster half
    slow_s: float | None  # of the slower half; None when every experiment took the median time
    buckets: tuple[Bucket, ...]

    @property
    def separates(self) -> bool:
        """True when the halves differ by TIME_SPLIT_RATIO or more: a breakdown worth showing."""
        return self.slow_s is not None and self.slow_s >= TIME_SPLIT_RATIO * self.fast_s


@dataclass(frozen=True)
class Track:
    """The progress of one objective: the whole run, or one pipeline stage."""

    stage: str | None
    metrics: tuple[MetricConfig, ...]
    mode: str
    steps: tuple[Step, ...]
    counts: dict[str, int]
    baseline: Step | None
    best_value: float | None
    best_commit: str | None
    best_experiment: int | None
    best_metrics: dict[str, float | None]
    wall_time_s: float
    cost_usd: float
    by_diff: tuple[Bucket, ...]
    time_split: TimeSplit | None  # None with fewer than two timed experiments
    time_gain_r: float | None  # Pearson r of wall time vs gain over measured experiments
    time_gain_n: int

    @property
    def objective(self) -> MetricConfig:
        return objective(self.metrics)

    @property
    def by_time(self) -> tuple[Bucket, ...]:
        """The wall-time buckets, empty unless they separate fast from slow experiments."""
        return self.time_split.buckets if self.time_split and self.time_split.separates else ()

    @property
    def experiments(self) -> int:
        return len(self.steps)

    @property
    def delta(self) -> float | None:
        """Raw change of the objective, best minus baseline, in the metric's units."""
        if self.best_value is None or self.baseline is None or self.baseline.value is None:
            return None
        return self.best_value - self.baseline.value

    @property
    def improvement(self) -> float | None:
        """Direction-aware change of best over baseline (positive = better)."""
        d = self.delta
        return None if d is None else (d if self.objective.direction == "max" else -d)

    @property
    def improvement_pct(self) -> float | None:
        imp = self.improvement
        if imp is None or self.baseline is None or not self.baseline.value:
            return None
        return imp / abs(self.baseline.value) * 100.0

    @property
    def kept(self) -> tuple[Step, ...]:
        """The baseline, then every keep and explore in order."""
        return tuple(s for s in self.steps if s.record.status in KEPT_STATUSES and s.value is not None)

    @property
    def attempts(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s is not self.baseline)


@dataclass(frozen=True)
class Summary:
    experiments: int
    counts: dict[str, int]
    wall_time_s: float
    cost_usd: float
    tokens_used: int
    started: str | None
    finished: str | None
    tracks: tuple[Track, ...]
    current_stage: str | None

    @property
    def current(self) -> Track | None:
        """The track of the last experiment (the running stage of a pipeline)."""
        for t in self.tracks:
            if t.stage == self.current_stage:
                return t
        return None


def finite(v: Any) -> float | None:
    """`v` as a float when it is a finite number; None for missing, NaN, infinite or non-numbers."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def objective(metrics: Sequence[MetricConfig]) -> MetricConfig:
    return next((m for m in metrics if not m.is_constraint), metrics[0])


def _better(direction: Direction, a: float, b: float) -> float:
    return a - b if direction == "max" else b - a


def stage_view(cfg: Config, stage: str | None) -> tuple[tuple[MetricConfig, ...], str]:
    """The metrics and the policy mode that judged the experiments of `stage`."""
    for st in cfg.stage:
        if st.name == stage:
            return st.metric, (st.policy or cfg.policy).mode
    if cfg.metric:
        return cfg.metric, cfg.policy.mode
    first = cfg.stage[0]
    return first.metric, (first.policy or cfg.policy).mode


def _counts(records: Iterable[Record]) -> dict[str, int]:
    out = dict.fromkeys(STATUSES, 0)
    for r in records:
        out[r.status] = out.get(r.status, 0) + 1
    return out


def _steps(records: Sequence[Record], m: MetricConfig) -> list[Step]:
    steps: list[Step] = []
    incumbent: float | None = None
    best: float | None = None
    for rec in records:
        value = finite(rec.metrics.get(m.name))
        before = incumbent
        gain = _better(m.direction, value, before) if value is not None and before is not None else None
        if rec.status in KEPT_STATUSES and value is not None:
            incumbent = value
            if best is None or _better(m.direction, value, best) > 0:
                best = value
        # The server's own best-ever, when it logged one, wins over the recomputed one.
        logged = finite((rec.best_metrics or {}).get(m.name))
        if logged is not None:
            best = logged
        steps.append(Step(rec, value, before, gain, best))
    return steps


def _buckets(groups: Sequence[tuple[str, Sequence[Step]]]) -> tuple[Bucket, ...]:
    out = []
    for label, steps in groups:
        if not steps:
            continue
        gains = [s.gain for s in steps if s.record.status == "keep" and s.gain is not None]
        kept = sum(1 for s in steps if s.record.status == "keep")
        mean = math.fsum(gains) / len(gains) if gains else None
        out.append(Bucket(label, len(steps), kept, mean, math.fsum(gains)))
    return tuple(out)


def _diff_buckets(attempts: Sequence[Step]) -> tuple[Bucket, ...]:
    groups: list[tuple[str, list[Step]]] = [(label, []) for _, label in DIFF_BUCKETS]
    for s in attempts:
        for (limit, _), (_, members) in zip(DIFF_BUCKETS, groups, strict=True):
            if limit is None or s.record.diff_lines <= limit:
                members.append(s)
                break
    return _buckets(groups)


def _time_split(attempts: Sequence[Step]) -> TimeSplit | None:
    timed = [s for s in attempts if s.record.wall_time_s > 0]
    if len(timed) < 2:
        return None
    median = statistics.median(s.record.wall_time_s for s in timed)
    fast = [s for s in timed if s.record.wall_time_s <= median]
    slow = [s for s in timed if s.record.wall_time_s > median]
    fast_s = statistics.median(s.record.wall_time_s for s in fast)
    if not slow:
        return TimeSplit(fast_s, None, ())
    slow_s = statistics.median(s.record.wall_time_s for s in slow)
    buckets = _buckets([(f"≤ {fmt_duration(median)}", fast), (f"> {fmt_duration(median)}", slow)])
    return TimeSplit(fast_s, slow_s, buckets)


def _correlation(attempts: Sequence[Step]) -> tuple[float | None, int]:
    pairs = [(s.record.wall_time_s, s.gain) for s in attempts if s.gain is not None and s.record.wall_time_s > 0]
    if len(pairs) < 3:
        return None, len(pairs)
    try:
        r = statistics.correlation([p[0] for p in pairs], [p[1] for p in pairs])
    except statistics.StatisticsError:  # one of the two is constant
        return None, len(pairs)
    return r, len(pairs)


def _track(records: Sequence[Record], stage: str | None, cfg: Config) -> Track:
    metrics, mode = stage_view(cfg, stage)
    m = objective(metrics)
    steps = _steps(records, m)
    first_keep = steps[0] if steps[0].record.status == "keep" else None
    baseline = next((s for s in steps if s.record.status == "keep" and s.value is not None), first_keep)
    last = records[-1]
    best_value = steps[-1].best
    logged = {k: v for k, v in (last.best_metrics or {}).items() if finite(v) is not None}
    if m.name in logged and last.best_commit:
        best_commit: str | None = last.best_commit
        best_rec = next((r for r in reversed(records) if r.commit == best_commit), None)
    else:
        incumbents = (s.record for s in reversed(steps) if s.record.status in KEPT_STATUSES)
        best_rec = next((r for r in incumbents if finite(r.metrics.get(m.name)) == best_value), None)
        best_commit = best_rec.commit if best_rec else None
    best_metrics = {**(best_rec.metrics if best_rec else {}), **logged}
    attempts = [s for s in steps if s is not baseline]
    corr, corr_n = _correlation(attempts)
    return Track(
        stage=stage,
        metrics=metrics,
        mode=mode,
        steps=tuple(steps),
        counts=_counts(records),
        baseline=baseline,
        best_value=best_value,
        best_commit=best_commit,
        best_experiment=best_rec.experiment if best_rec else None,
        best_metrics=best_metrics,
        wall_time_s=math.fsum(r.wall_time_s for r in records),
        cost_usd=math.fsum(r.cost_usd for r in records),
        by_diff=_diff_buckets(attempts),
        time_split=_time_split(attempts),
        time_gain_r=corr,
        time_gain_n=corr_n,
    )


def summarize(records: Sequence[Record], cfg: Config) -> Summary:
    """Counts, baseline, best and gains of a run; one track per pipeline stage."""
    records = list(records)
    groups: dict[str | None, list[Record]] = {}
    for rec in records:
        groups.setdefault(rec.stage, []).append(rec)
    tracks = tuple(_track(recs, stage, cfg) for stage, recs in groups.items())
    cost = math.fsum(r.cost_usd for r in records)
    if records and records[-1].cumulative_cost_usd > 0:
        cost = records[-1].cumulative_cost_usd
    return Summary(
        experiments=len(records),
        counts=_counts(records),
        wall_time_s=math.fsum(r.wall_time_s for r in records),
        cost_usd=cost,
        tokens_used=sum(r.tokens_used for r in records),
        started=records[0].timestamp if records else None,
        finished=records[-1].timestamp if records else None,
        tracks=tracks,
        current_stage=records[-1].stage if records else None,
    )


def pareto_front(points: Sequence[tuple[float, float]], directions: tuple[Direction, Direction]) -> list[int]:
    """Indices of the non-dominated points (one of each duplicate), sorted by the first coordinate."""
    sx = 1.0 if directions[0] == "max" else -1.0
    sy = 1.0 if directions[1] == "max" else -1.0
    order = sorted(range(len(points)), key=lambda i: (-sx * points[i][0], -sy * points[i][1]))
    front: list[int] = []
    best_y = -math.inf
    for i in order:
        y = sy * points[i][1]
        if y > best_y:
            front.append(i)
            best_y = y
    return sorted(front, key=lambda i: points[i][0])
