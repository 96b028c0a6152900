"""Pure decision rules: (candidate, incumbent, config) -> Decision. No I/O, no clock, no randomness.

A `Measurement` holds every repeat's value of every metric; rules compare means, and with
`policy.repeats > 1` the objective's gain must also clear the measured noise.

Order of checks in `decide`, the same in every mode:

1. invalid: a configured metric missing, empty, NaN or infinite in the candidate -> discard.
2. baseline: no incumbent -> keep.
3. constraints: any metric with `at_least` / `at_most`, on its mean -> discard at once.
4. the mode's rule (single, primary_secondary, pareto, weighted, threshold/constraints,
   lexicographic).
5. explore: every `explore_every`-th experiment is kept regardless of step 4 (never of 1 or 3).

Conventions: "gain" is always signed in the metric's direction (positive = better, see
`better`); a Decision's `margin` is the gain of the quantity that decided, rounded to
MARGIN_DIGITS significant digits (None when there is none, or it is not finite), its `details`
are finite numbers for the ledger, and its `reason` is one line naming the rule, the numbers
compared and the margin.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from .config import Config, MetricConfig, PolicyConfig
from .ledger import KEPT_STATUSES

Status = Literal["keep", "discard", "explore", "crash", "timeout"]

# Student's t tail: continued-fraction accuracy and iteration cap (df here is at most ~200, so
# the fraction converges in tens of steps; the cap only guards against a runaway loop).
_CF_EPS = 1e-15
_CF_TINY = 1e-300
_CF_MAX_ITER = 10_000

# Significant digits of a margin the agent reads: a difference of two floats carries binary
# noise in its last digits (0.9879 - 0.9 = 0.08789999999999998), which says nothing about the
# measurement. Reasons print numbers with the same precision (`_fmt`).
MARGIN_DIGITS = 6


@dataclass(frozen=True)
class Measurement:
    """All values measured for one commit: metric name -> one value per repeat."""

    values: Mapping[str, Sequence[float]]

    @classmethod
    def single(cls, metrics: Mapping[str, float]) -> Measurement:
        return cls({k: (v,) for k, v in metrics.items()})

    def mean(self, name: str) -> float:
        """The correctly rounded mean: exact for equal values, never outside [min, max]."""
        vals = self.values[name]
        if not all(math.isfinite(v) for v in vals):
            return sum(vals) / len(vals)
        return float(statistics.mean(vals))

    def std(self, name: str) -> float:
        """Sample standard deviation (n - 1); 0.0 for a single value, NaN if any value is."""
        vals = self.values[name]
        if len(vals) < 2:
            return 0.0
        if not all(math.isfinite(v) for v in vals):
            return math.nan
        try:
            return statistics.stdev(vals)
        except OverflowError:
            scale = max(abs(v) for v in vals)
            return statistics.stdev([v / scale for v in vals]) * scale

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

    @property
    def kept(self) -> bool:
        """True when the candidate becomes the incumbent (keep or explore)."""
        return self.status in KEPT_STATUSES


def _fmt(x: float) -> str:
    return f"{x:.{MARGIN_DIGITS}g}"


def _signed(x: float) -> str:
    return f"{x:+.{MARGIN_DIGITS}g}"


def round_margin(x: float) -> float:
    """`x` rounded to MARGIN_DIGITS significant digits (never to 0 unless it is 0)."""
    return float(f"{x:.{MARGIN_DIGITS}g}")


def better(m: MetricConfig, a: float, b: float) -> float:
    """Signed gain of `a` over `b` in the metric's direction (positive = a is better)."""
    return a - b if m.direction == "max" else b - a


def _arrow(m: MetricConfig) -> str:
    return "higher is better" if m.direction == "max" else "lower is better"


def _desc(meas: Measurement, name: str, batched: bool) -> str:
    """A metric's value for a reason: the mean, with ± std and n when runs are repeated."""
    if not batched:
        return _fmt(meas.mean(name))
    return f"{_fmt(meas.mean(name))}±{_fmt(meas.std(name))} (n={meas.n(name)})"


# --- entry point ----------------------------------------------------------------------------


def decide(
    candidate: Measurement,
    incumbent: Measurement | None,
    cfg: Config,
    *,
    experiment_index: int,
) -> Decision:
    """Keep, discard or explore `candidate` (experiment number `experiment_index`, 1-based).

    `incumbent` is None only for the baseline, which is kept unless its values are invalid
    (NaN, infinite or missing: the loop normally reports those as crashes first). An incumbent
    without a valid value for a configured metric cannot be compared against; a valid
    candidate then replaces it (rule `baseline`), so one bad baseline cannot freeze the run.
    """
    return _finite(_decide(candidate, incumbent, cfg, experiment_index))


def _decide(candidate: Measurement, incumbent: Measurement | None, cfg: Config, experiment_index: int) -> Decision:
    invalid = _check_valid(candidate, cfg.metric, "the candidate")
    if invalid is not None:
        return invalid
    if incumbent is None:
        return _baseline(candidate, cfg)
    violated = _check_constraints(candidate, cfg.metric)
    if violated is not None:
        return violated
    if _check_valid(incumbent, cfg.metric, "the incumbent") is not None:
        return Decision(
            "keep",
            "baseline",
            "baseline: the incumbent has no valid value for every metric; the valid candidate replaces it",
        )
    normal = _RULES[cfg.policy.mode](candidate, incumbent, cfg)
    if explore_due(experiment_index, cfg.policy):
        return _explore(normal, experiment_index, cfg.policy)
    return normal


def _finite(d: Decision) -> Decision:
    """Drop non-finite numbers (a relative change from 0, an overflow): the ledger is strict JSON.
    The margin is rounded for the agent; the details keep full precision for the ledger."""
    margin = round_margin(d.margin) if d.margin is not None and math.isfinite(d.margin) else None
    details = {k: v for k, v in d.details.items() if math.isfinite(v)}
    if margin == d.margin and details == d.details:
        return d
    return Decision(d.status, d.rule, d.reason, margin, details)


def explore_due(experiment_index: int, policy: PolicyConfig) -> bool:
    """Whether experiment `experiment_index` (1-based, after the baseline) is an explore step."""
    n = policy.explore_every
    return n > 0 and experiment_index > 0 and experiment_index % n == 0


def _explore(normal: Decision, index: int, policy: PolicyConfig) -> Decision:
    would = "kept" if normal.status == "keep" else "discarded"
    reason = (
        f"explore: experiment {index} is an exploration step "
        f"(policy.explore_every = {policy.explore_every}), kept regardless; "
        f"the normal rule would have {would} it: {normal.reason}"
    )
    details = {**normal.details, "would_keep": 1.0 if normal.status == "keep" else 0.0}
    return Decision("explore", "explore", reason, normal.margin, details)


# --- validity, baseline, constraints --------------------------------------------------------


def _check_valid(meas: Measurement, metrics: Sequence[MetricConfig], who: str) -> Decision | None:
    for m in metrics:
        vals = meas.values.get(m.name)
        if vals is None or len(vals) == 0:
            return Decision("discard", "invalid", f"invalid: {who} has no value for metric {m.name}")
        for k, v in enumerate(vals):
            if not math.isfinite(v):
                where = f" in run {k + 1} of {len(vals)}" if len(vals) > 1 else ""
                return Decision(
                    "discard",
                    "invalid",
                    f"invalid: metric {m.name} of {who} is {v}{where}; a measurement must be a finite number",
                )
    return None


@dataclass(frozen=True)
class _Violation:
    metric: MetricConfig
    value: float
    kind: str
    bound: float

    @property
    def slack(self) -> float:
        """How far inside the bound the value is: negative for a violation."""
        return self.value - self.bound if self.kind == "at_least" else self.bound - self.value

    def __str__(self) -> str:
        return f"{self.metric.name} {_fmt(self.value)} violates {self.kind} {_fmt(self.bound)}"


def _violations(meas: Measurement, metrics: Sequence[MetricConfig]) -> list[_Violation]:
    """Every violated bound, on the mean. A value exactly at its bound satisfies it."""
    out = []
    for m in metrics:
        v = meas.mean(m.name)
        if m.at_least is not None and not v >= m.at_least:
            out.append(_Violation(m, v, "at_least", m.at_least))
        if m.at_most is not None and not v <= m.at_most:
            out.append(_Violation(m, v, "at_most", m.at_most))
    return out


def _check_constraints(meas: Measurement, metrics: Sequence[MetricConfig]) -> Decision | None:
    found = _violations(meas, metrics)
    if not found:
        return None
    first = found[0]
    reason = "constraint: " + "; ".join(map(str, found)) + " (a value exactly at its bound is allowed)"
    details = {"value": first.value, "bound": first.bound}
    return Decision("discard", "constraint", reason, first.slack, details)


def _baseline(candidate: Measurement, cfg: Config) -> Decision:
    m = cfg.objective
    reason = f"baseline: {m.name} {_fmt(candidate.mean(m.name))} is the first incumbent"
    found = _violations(candidate, cfg.metric)
    if found:
        notes = ", ".join(map(str, found))
        reason += f"; note: it already breaks a constraint ({notes}), every candidate must satisfy it"
    return Decision("keep", "baseline", reason)


# --- one objective: single, threshold, constraints, and the primary of primary_secondary ---------


@dataclass(frozen=True)
class _Verdict:
    keep: bool
    text: str
    margin: float
    details: dict[str, float]


def _plain(gain: float, need: float, keep_ties: bool) -> tuple[bool, str]:
    """Plain comparison of a gain: strictly above `need`, exact ties follow keep_ties."""
    if gain > need:
        return True, "improved"
    if gain == 0:
        if keep_ties and need == 0:
            return True, "tie, kept (policy.keep_ties = true)"
        why = "policy.keep_ties = false" if need == 0 else f"min_improvement {_fmt(need)}"
        return False, f"tie, discarded ({why})"
    if gain > 0:
        return False, f"gain not above min_improvement {_fmt(need)}"
    return False, "worse"


def _objective(m: MetricConfig, cand: Measurement, inc: Measurement, policy: PolicyConfig) -> _Verdict:
    """One objective on means: the gain must exceed min_improvement (exact ties follow keep_ties).

    With repeats > 1 a gain must also clear the noise: `sigma`, gain > noise_sigmas × pooled
    run stddev; `welch`, a one-sided Welch t-test of the mean gain with p < alpha. With no
    spread on either side there is no noise to clear, so the plain comparison stands.
    """
    c, i = cand.mean(m.name), inc.mean(m.name)
    gain = better(m, c, i)
    batched = policy.repeats > 1
    head = (
        f"{m.name} {_desc(cand, m.name, batched)} vs incumbent {_desc(inc, m.name, batched)} "
        f"({_arrow(m)}), margin {_signed(gain)}"
    )
    details = {"candidate": c, "incumbent": i}
    keep, verdict = _plain(gain, policy.min_improvement, policy.keep_ties)
    if not keep or not batched or gain == 0:
        return _Verdict(keep, f"{head}: {verdict}", gain, details)
    sc, si = cand.std(m.name), inc.std(m.name)
    details.update(std_candidate=sc, std_incumbent=si)
    if sc == 0 and si == 0:
        return _Verdict(True, f"{head}: improved (no spread across repeats: plain comparison of means)", gain, details)
    if policy.significance == "welch":
        return _welch_verdict(head, gain, sc, cand.n(m.name), si, inc.n(m.name), policy.alpha, details)
    # Noise = the pooled per-run standard deviation sqrt((s_c² + s_i²) / 2). The seed's rule
    # is "improvement > 1 stddev": the stddev of one run, i.e. an effect-size gate (Cohen's d
    # > noise_sigmas), whose meaning does not change with the number of repeats. The standard
    # error of the difference would shrink with K and accept ever-smaller gains; that is what
    # significance = "welch" is for (it tests the difference of means at level alpha).
    noise = math.hypot(sc, si) / math.sqrt(2)
    k = policy.noise_sigmas
    bar = k * noise if k > 0 else 0.0
    details.update(noise=noise, threshold=bar)
    if gain > bar:
        return _Verdict(True, f"{head}: improved by more than {_fmt(k)}×noise {_fmt(noise)}", gain, details)
    text = f"{head}: within the noise, gain not above {_fmt(k)}×noise {_fmt(noise)} (pooled run stddev)"
    return _Verdict(False, text, gain, details)


def _welch_verdict(
    head: str, gain: float, sc: float, nc: int, si: float, ni: int, alpha: float, details: dict[str, float]
) -> _Verdict:
    t, df = welch_t(gain, sc, nc, si, ni)
    if not math.isfinite(t):  # both the gain and its standard error overflowed
        return _Verdict(True, f"{head}: improved (Welch t overflowed: plain comparison of means)", gain, details)
    p = student_t_sf(t, df)
    details.update(t=t, df=df, p_value=p)
    stat = f"one-sided Welch t = {t:.4g}, df = {df:.4g}, p = {p:.4g}"
    if p < alpha:
        return _Verdict(True, f"{head}: improved, {stat} < alpha {_fmt(alpha)}", gain, details)
    return _Verdict(False, f"{head}: not significant, {stat} >= alpha {_fmt(alpha)}", gain, details)


def _single(candidate: Measurement, incumbent: Measurement, cfg: Config) -> Decision:
    rule = cfg.policy.mode
    v = _objective(cfg.objective, candidate, incumbent, cfg.policy)
    return Decision("keep" if v.keep else "discard", rule, f"{rule}: {v.text}", v.margin, v.details)


# --- primary_secondary ----------------------------------------------------------------------


def _regression(m: MetricConfig, c: float, i: float) -> tuple[bool, float, str]:
    """(within limit, relative worsening, text) of a secondary metric.

    Relative worsening = (how much worse, in the metric's direction) / |incumbent|, so
    max_regression 1.0 lets latency 100 -> 200 (min) or accuracy 0.8 -> 0 (max) through. A
    worsening within the metric's `tolerance` always passes (it also covers an incumbent of 0).
    """
    worse = -better(m, c, i)
    rel = worse / abs(i) if i != 0 else (math.inf if worse > 0 else 0.0)
    head = f"{m.name} {_fmt(i)} -> {_fmt(c)}"
    if worse <= 0:
        return True, rel, f"{head} not worse"
    if worse <= m.tolerance:
        return True, rel, f"{head} within tolerance {_fmt(m.tolerance)}"
    if m.max_regression is None:
        return True, rel, f"{head} worse by {rel:.1%} (no max_regression)"
    limit = f"max_regression {_fmt(m.max_regression)} ({m.max_regression:.0%})"
    if rel > m.max_regression:
        return False, rel, f"{head} worse by {rel:.1%}, beyond {limit}"
    return True, rel, f"{head} worse by {rel:.1%}, within {limit}"


def _primary_secondary(candidate: Measurement, incumbent: Measurement, cfg: Config) -> Decision:
    primary = cfg.objective
    v = _objective(primary, candidate, incumbent, cfg.policy)
    if not v.keep:
        return Decision("discard", "primary_secondary", f"primary_secondary: primary {v.text}", v.margin, v.details)
    notes, blocked = [], []
    details = dict(v.details)
    for m in cfg.metric:
        if m.name == primary.name:
            continue
        ok, rel, text = _regression(m, candidate.mean(m.name), incumbent.mean(m.name))
        notes.append(text)
        details[f"regression.{m.name}"] = rel
        if not ok:
            blocked.append((m, rel, text))
    if blocked:
        m, rel, text = blocked[0]
        limit = m.max_regression if m.max_regression is not None else math.inf
        reason = f"primary_secondary: primary {v.text}, but secondary " + "; ".join(t for _, _, t in blocked)
        return Decision("discard", "primary_secondary", reason, limit - rel, details)
    reason = f"primary_secondary: primary {v.text}; secondaries: " + "; ".join(notes)
    return Decision("keep", "primary_secondary", reason, v.margin, details)


# --- pareto ----------------------------------------------------------------------------------


def _tri(m: MetricConfig, gain: float) -> int:
    """+1 better, -1 worse, 0 tie: a difference within the metric's tolerance is a tie."""
    if gain > m.tolerance:
        return 1
    if gain < -m.tolerance:
        return -1
    return 0


def _pareto(candidate: Measurement, incumbent: Measurement, cfg: Config) -> Decision:
    """Keep iff better (beyond tolerance) on at least one metric and worse (beyond it) on none.

    Every metric takes part, in config order. A candidate the incumbent dominates has no
    metric better beyond its tolerance, so it is never kept. keep_ties keeps only an exact
    tie on every metric.
    """
    parts, details = [], {}
    gains: list[tuple[MetricConfig, float, int]] = []
    for m in cfg.metric:
        c, i = candidate.mean(m.name), incumbent.mean(m.name)
        g = better(m, c, i)
        s = _tri(m, g)
        gains.append((m, g, s))
        details[f"gain.{m.name}"] = g
        word = {1: "better", -1: "worse", 0: "tie"}[s]
        tol = f", tolerance {_fmt(m.tolerance)}" if m.tolerance else ""
        parts.append(f"{m.name} {_fmt(c)} vs {_fmt(i)} ({word}, {_signed(g)}{tol})")
    head = "pareto: " + "; ".join(parts)
    worse = [(m, g) for m, g, s in gains if s < 0]
    improved = [(m, g) for m, g, s in gains if s > 0]
    if worse:
        m, g = worse[0]
        return Decision("discard", "pareto", f"{head}: worse on {', '.join(w.name for w, _ in worse)}", g, details)
    if improved:
        m, g = improved[0]
        names = ", ".join(b.name for b, _ in improved)
        return Decision("keep", "pareto", f"{head}: better on {names}, not worse on any", g, details)
    if all(g == 0 for _, g, _ in gains) and cfg.policy.keep_ties:
        return Decision(
            "keep",
            "pareto",
            f"{head}: exact tie on every metric, kept (policy.keep_ties = true)",
            0.0,
            details,
        )
    top = max(g for _, g, _ in gains)
    return Decision("discard", "pareto", f"{head}: not better on any metric beyond its tolerance", top, details)


# --- weighted --------------------------------------------------------------------------------


def _orientation(m: MetricConfig) -> float:
    """+1 if the transformed value rises as the metric improves, else -1.

    `direction` always says which way the metric itself, as the eval prints it, is better (the
    same meaning as in every other mode, the prompt and the report); the transform only shapes
    its term. So every term rises as its metric improves: a `min` metric counts negatively as
    itself or its log, and positively through `reciprocal` (1/x rises as x falls). The README's
    `latency_ms`, direction "min", transform "reciprocal", weight 0.3 is the term +0.3·(1/latency_ms).
    """
    s = 1.0 if m.direction == "max" else -1.0
    return -s if m.transform == "reciprocal" else s


def _transform(m: MetricConfig, x: float) -> float | None:
    if m.transform == "identity":
        return x
    if x <= 0:
        return None
    return 1.0 / x if m.transform == "reciprocal" else math.log(x)


def _weighted_terms(cfg: Config) -> list[MetricConfig]:
    return [m for m in cfg.metric if m.weight]


def weighted_score(meas: Measurement, cfg: Config) -> tuple[float | None, str]:
    """Score = Σ wᵢ·σᵢ·t(meanᵢ), higher is better; (None, why) if a transform is undefined.

    t is the metric's transform of its mean (identity, reciprocal = 1/x, log), σᵢ = ±1 orients
    each term so an improving metric raises the score (see `_orientation`); weights are then
    plain importances. Metrics without a weight (or weight 0) take no part.
    """
    total = 0.0
    for m in _weighted_terms(cfg):
        x = meas.mean(m.name)
        t = _transform(m, x)
        if t is None:
            return (
                None,
                f"{m.name} = {_fmt(x)} has no {m.transform} (transform = {m.transform!r} needs a value > 0)",
            )
        total += (m.weight or 0.0) * _orientation(m) * t
    return total, ""


def weighted_formula(cfg: Config) -> str:
    """The score as the README writes it: `0.5·accuracy + 0.3·(1/latency_ms) - 1·loss`."""
    out: list[str] = []
    for m in _weighted_terms(cfg):
        w = (m.weight or 0.0) * _orientation(m)
        term = {"identity": m.name, "reciprocal": f"(1/{m.name})", "log": f"log({m.name})"}[m.transform]
        sign = ("-" if w < 0 else "") if not out else (" - " if w < 0 else " + ")
        out.append(f"{sign}{_fmt(abs(w))}·{term}")
    return "".join(out)


def _weighted(candidate: Measurement, incumbent: Measurement, cfg: Config) -> Decision:
    sc, why_c = weighted_score(candidate, cfg)
    if sc is None:
        return Decision("discard", "weighted", f"weighted: cannot score the candidate: {why_c}")
    si, why_i = weighted_score(incumbent, cfg)
    if si is None:
        return Decision(
            "keep",
            "weighted",
            f"weighted: the incumbent cannot be scored ({why_i}); the candidate, score {_fmt(sc)}, replaces it",
        )
    gain = sc - si
    head = f"weighted: score {_fmt(sc)} vs incumbent {_fmt(si)} (score = {weighted_formula(cfg)}, higher is better)"
    if math.isnan(gain):
        return Decision("discard", "weighted", f"{head}: the scores overflowed and cannot be compared")
    keep, verdict = _plain(gain, cfg.policy.min_improvement, cfg.policy.keep_ties)
    details = {"score_candidate": sc, "score_incumbent": si}
    reason = f"{head}, margin {_signed(gain)}: {verdict}"
    return Decision("keep" if keep else "discard", "weighted", reason, gain, details)


# --- lexicographic ---------------------------------------------------------------------------


def lexicographic_key(meas: Measurement, metrics: Sequence[MetricConfig]) -> tuple[float, ...]:
    """Direction-oriented means (higher = better) in config order.

    With every tolerance 0, decide keeps c over i exactly when key(c) > key(i): sorting
    measurements with `sorted(..., key=lambda x: lexicographic_key(x, metrics), reverse=True)`
    puts the best first, and c is kept iff it sorts strictly before i.
    """
    return tuple(meas.mean(m.name) if m.direction == "max" else -meas.mean(m.name) for m in metrics)


def lexicographic_compare(a: Measurement, b: Measurement, metrics: Sequence[MetricConfig]) -> int:
    """-1 if `a` ranks before `b` (better), 1 if after, 0 if tied on every metric.

    The first metric whose difference exceeds its tolerance decides. It is a valid comparator
    for `functools.cmp_to_key` (antisymmetric; c is kept over i iff compare(c, i) < 0). With
    tolerances > 0, ties are not transitive (a~b, b~c, yet a > c), so sorting 3+ measurements
    by it depends on their input order; the pairwise decision is always well defined.
    """
    for m in metrics:
        s = _tri(m, better(m, a.mean(m.name), b.mean(m.name)))
        if s:
            return -s
    return 0


def _lexicographic(candidate: Measurement, incumbent: Measurement, cfg: Config) -> Decision:
    parts, details = [], {}
    for m in cfg.metric:
        c, i = candidate.mean(m.name), incumbent.mean(m.name)
        g = better(m, c, i)
        details[f"gain.{m.name}"] = g
        s = _tri(m, g)
        if s == 0:
            within = f" within tolerance {_fmt(m.tolerance)}" if g != 0 else ""
            parts.append(f"{m.name} {_fmt(c)} vs {_fmt(i)} tie ({_signed(g)}{within})")
            continue
        word = "better" if s > 0 else "worse"
        parts.append(f"{m.name} {_fmt(c)} vs incumbent {_fmt(i)} ({_arrow(m)}), margin {_signed(g)}: {word}")
        status: Status = "keep" if s > 0 else "discard"
        return Decision(status, "lexicographic", "lexicographic: " + " -> ".join(parts), g, details)
    head = "lexicographic: " + " -> ".join(parts)
    last = details[f"gain.{cfg.metric[-1].name}"]
    if all(g == 0 for g in details.values()) and cfg.policy.keep_ties:
        return Decision(
            "keep",
            "lexicographic",
            f"{head}: exact tie on every metric, kept (policy.keep_ties = true)",
            0.0,
            details,
        )
    return Decision("discard", "lexicographic", f"{head}: tie on every metric, discarded", last, details)


_RULES: dict[str, Callable[[Measurement, Measurement, Config], Decision]] = {
    "single": _single,
    "threshold": _single,
    "constraints": _single,
    "primary_secondary": _primary_secondary,
    "pareto": _pareto,
    "weighted": _weighted,
    "lexicographic": _lexicographic,
}


# --- helpers the loop calls -------------------------------------------------------------------


def holdout_gate(candidate: float, incumbent: float, metric: MetricConfig, tolerance: float) -> Decision | None:
    """None if the candidate's hold-out value is not worse than the incumbent's by more than
    `tolerance` (absolute, in the metric's direction); else a `holdout` discard.

    The reason, margin and details never carry the hold-out numbers: the agent must not learn
    them, or the hold-out becomes a second training set.
    """
    if not math.isfinite(candidate):
        return Decision("discard", "holdout", "held-out check failed: the hold-out eval gave no valid value")
    if not math.isfinite(incumbent):  # nothing valid to compare against: do not block progress
        return None
    if better(metric, candidate, incumbent) >= -tolerance:
        return None
    return Decision("discard", "holdout", "held-out check failed: the change does not generalise")


def drift(old: Measurement, new: Measurement, metric: MetricConfig, noise_sigmas: float) -> tuple[bool, str]:
    """Whether a re-measurement of the incumbent moved beyond the noise, and a one-line reason.

    Moved = |mean(new) - mean(old)| > max(tolerance, noise_sigmas × pooled stddev), the same
    noise as the keep rule. With single runs (or no spread) the noise is 0, so any change
    beyond the metric's tolerance counts.
    """
    name = metric.name
    for who, meas in (("re-measurement", new), ("earlier measurement", old)):
        vals = meas.values.get(name)
        if not vals or not all(math.isfinite(v) for v in vals):
            return True, f"drift: the {who} of {name} has no valid value"
    o, n = old.mean(name), new.mean(name)
    diff = n - o
    noise = math.hypot(old.std(name), new.std(name)) / math.sqrt(2)
    bar = max(metric.tolerance, noise_sigmas * noise if noise_sigmas > 0 else 0.0)
    batched = old.n(name) > 1 or new.n(name) > 1
    g = better(metric, n, o)
    way = "better" if g > 0 else "worse" if g < 0 else "unchanged"
    head = (
        f"drift: {name} of the incumbent re-measured {_desc(new, name, batched)} "
        f"vs {_desc(old, name, batched)} before ({way}, {_signed(diff)}; {_arrow(metric)})"
    )
    basis = f"{_fmt(noise_sigmas)}×noise {_fmt(noise)}" if batched and noise > 0 else "tolerance"
    if abs(diff) > bar:
        return True, f"{head}: moved beyond {basis} {_fmt(bar)}, the measurement has drifted"
    return False, f"{head}: within {basis} {_fmt(bar)}, stable"


# --- Student's t distribution (no scipy) -------------------------------------------------------


def welch_t(gain: float, s1: float, n1: int, s2: float, n2: int) -> tuple[float, float]:
    """Welch's t statistic for a mean gain and its Welch–Satterthwaite degrees of freedom.

    A side with one run has no variance estimate (std 0) and no degrees of freedom to give;
    it then contributes nothing to either. Computed with scaled terms so huge stds do not
    overflow. Assumes at least one side has s > 0 and n > 1.
    """
    a = s1 / math.sqrt(n1)
    b = s2 / math.sqrt(n2)
    se = math.hypot(a, b)
    if not math.isfinite(se):  # an overflowed stddev: no evidence of a gain, t = 0
        return (0.0 if math.isfinite(gain) else math.nan), 1.0
    big = max(a, b)
    x, y = (a / big) ** 2, (b / big) ** 2
    den = (x * x / (n1 - 1) if n1 > 1 and x > 0 else 0.0) + (y * y / (n2 - 1) if n2 > 1 and y > 0 else 0.0)
    df = (x + y) ** 2 / den
    return gain / se, df


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` > 0 degrees of freedom (one-sided upper tail).

    Uses P(T > t) = ½·I_{df/(df+t²)}(df/2, ½) for t ≥ 0, with I the regularized incomplete
    beta function, and symmetry for t < 0.
    """
    if math.isnan(t) or not df > 0:
        return math.nan
    if t == 0:
        return 0.5
    tt = t * t
    x = df / (df + tt) if math.isfinite(tt) else 0.0
    xc = tt / (df + tt) if math.isfinite(tt) else 1.0  # 1 - x without cancellation for small t
    tail = 0.5 * betainc(df / 2, 0.5, x, xc)
    return tail if t > 0 else 1.0 - tail


def betainc(a: float, b: float, x: float, xc: float | None = None) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0, by Lentz's continued fraction.

    `xc` is 1 - x when the caller can compute it more accurately than the subtraction.
    """
    if xc is None:
        xc = 1.0 - x
    if x <= 0:
        return 0.0
    if xc <= 0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(xc)
    front = math.exp(log_front)
    # The fraction converges fast for x < (a+1)/(a+b+2); otherwise use I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1) / (a + b + 2):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, xc) / b


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1, a - 1
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
            c = 1.0 + aa / c
            c = c if abs(c) > _CF_TINY else _CF_TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _CF_EPS:
            break
    return h
