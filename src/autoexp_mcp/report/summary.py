"""Reports over experiments.jsonl: the Markdown summary, the progress chart, the status table.

Everything here only reads records. `summarize` is pure; `render_chart` needs the optional
matplotlib, imported inside it so the server and the CLI work without it.

Gains are direction-aware throughout: positive means better, whatever the metric's direction.
A keep's gain is measured against the incumbent it replaced (the last keep or explore before it).
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config, Direction, MetricConfig
from .errors import AutoexpError
from .guard import atomic_write_file
from .ledger import KEPT_STATUSES, Ledger, Record, clean_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes

STATUSES = ("keep", "discard", "crash", "timeout", "explore")
TWO_METRIC_MODES = ("pareto", "primary_secondary", "lexicographic", "weighted")
REPORT_DIR = Path(".autoexp") / "report"
REPORT_MD = "report.md"
CHART_PNG = "progress.png"
CHART_INSTALL = "pip install 'autoexp-mcp[chart]'"
CHART_DPI = 120
MAX_ROWS = 20  # longest list in the Markdown before "… N more"
MAX_LABELS = 8  # kept points annotated on the chart (the largest gains)
DESC_CHARS = 60
# Diff-size buckets (inclusive upper bounds, lines): one-liners, small edits, rewrites.
DIFF_BUCKETS = ((2, "≤ 2 lines"), (10, "3–10 lines"), (None, "> 10 lines"))


class ChartUnavailable(AutoexpError):
    """The progress chart cannot be drawn (matplotlib missing, or nothing to plot yet)."""


# --- summary (pure) -----------------------------------------------------------------------


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
    by_time: tuple[Bucket, ...]
    time_gain_r: float | None  # Pearson r of wall time vs gain over measured experiments
    time_gain_n: int

    @property
    def objective(self) -> MetricConfig:
        return _objective(self.metrics)

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


def _finite(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _objective(metrics: Sequence[MetricConfig]) -> MetricConfig:
    return next((m for m in metrics if not m.is_constraint), metrics[0])


def _better(direction: Direction, a: float, b: float) -> float:
    return a - b if direction == "max" else b - a


def _stage_view(cfg: Config, stage: str | None) -> tuple[tuple[MetricConfig, ...], str]:
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
        value = _finite(rec.metrics.get(m.name))
        before = incumbent
        gain = _better(m.direction, value, before) if value is not None and before is not None else None
        if rec.status in KEPT_STATUSES and value is not None:
            incumbent = value
            if best is None or _better(m.direction, value, best) > 0:
                best = value
        # The server's own best-ever, when it logged one, wins over the recomputed one.
        logged = _finite((rec.best_metrics or {}).get(m.name))
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


def _time_buckets(attempts: Sequence[Step]) -> tuple[Bucket, ...]:
    timed = [s for s in attempts if s.record.wall_time_s > 0]
    if len(timed) < 2:
        return ()
    median = statistics.median(s.record.wall_time_s for s in timed)
    fast = [s for s in timed if s.record.wall_time_s <= median]
    slow = [s for s in timed if s.record.wall_time_s > median]
    if not slow:
        return ()
    return _buckets([(f"≤ {fmt_duration(median)}", fast), (f"> {fmt_duration(median)}", slow)])


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
    metrics, mode = _stage_view(cfg, stage)
    m = _objective(metrics)
    steps = _steps(records, m)
    first_keep = steps[0] if steps[0].record.status == "keep" else None
    baseline = next((s for s in steps if s.record.status == "keep" and s.value is not None), first_keep)
    last = records[-1]
    best_value = steps[-1].best
    logged = {k: v for k, v in (last.best_metrics or {}).items() if _finite(v) is not None}
    if m.name in logged and last.best_commit:
        best_commit: str | None = last.best_commit
        best_rec = next((r for r in reversed(records) if r.commit == best_commit), None)
    else:
        incumbents = (s.record for s in reversed(steps) if s.record.status in KEPT_STATUSES)
        best_rec = next((r for r in incumbents if _finite(r.metrics.get(m.name)) == best_value), None)
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
        by_time=_time_buckets(attempts),
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


# --- formatting ---------------------------------------------------------------------------


def fmt_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


def _signed(v: float | None) -> str:
    return "—" if v is None else f"{v:+.4g}"


def _gain(v: float | None, pct: float | None) -> str:
    if v is None:
        return "—"
    return _signed(v) if pct is None else f"{_signed(v)} ({pct:+.2f}%)"


def _when(ts: str | None) -> str:
    if ts is None:
        return "?"
    try:
        return datetime.fromisoformat(ts).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return ts


def _short(text: str, limit: int = DESC_CHARS) -> str:
    text = clean_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cell(text: str, limit: int = DESC_CHARS) -> str:
    return _short(text, limit).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def _better_word(m: MetricConfig) -> str:
    return "higher is better" if m.direction == "max" else "lower is better"


def _change(t: Track) -> str:
    """'-0.1 (10.00% better)': best against baseline, direction-aware."""
    imp, pct = t.improvement, t.improvement_pct
    if imp is None:
        return "no baseline to compare with"
    if imp == 0:
        return "no improvement over the baseline"
    word = "better" if imp > 0 else "worse"
    return f"{_signed(t.delta)} ({abs(pct):.2f}% {word})" if pct is not None else f"{_signed(t.delta)} ({word})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def _cost(cost: float, tokens: int) -> str:
    if cost <= 0 and tokens <= 0:
        return "cost not reported"
    out = f"cost ${cost:.2f}"
    return f"{out} ({tokens:,} tokens)" if tokens else out


# --- Markdown -----------------------------------------------------------------------------


def _capped(rows: list[str], blank: str) -> list[str]:
    if len(rows) <= MAX_ROWS:
        return rows
    head, tail = rows[: MAX_ROWS // 2], rows[-MAX_ROWS // 2 :]
    return [*head, blank.format(n=len(rows) - len(head) - len(tail)), *tail]


def _md_result(t: Track) -> list[str]:
    m = t.objective
    base = t.baseline.value if t.baseline else None
    out = [f"**{m.name}** ({_better_word(m)}): {_num(base)} → **{_num(t.best_value)}**, {_change(t)}."]
    if t.baseline is not None:
        best = f"experiment {t.best_experiment}" if t.best_experiment is not None else "the best"
        commit = f" (commit `{t.best_commit}`)" if t.best_commit else ""
        out[0] += f" Baseline: experiment {t.baseline.record.experiment}; best: {best}{commit}."
        others = [x.name for x in t.metrics if x.name != m.name]
        pairs = [
            f"{n} {_num(_finite(t.baseline.record.metrics.get(n)))} → {_num(_finite(t.best_metrics.get(n)))}"
            for n in others
        ]
        if pairs:
            out += ["", "Other metrics, baseline → best: " + "; ".join(pairs) + "."]
    return out


def _md_kept(t: Track) -> list[str]:
    m = t.objective
    others = [x.name for x in t.metrics if x.name != m.name][:2]
    rows = []
    for s in t.kept:
        desc = _cell(s.record.description)
        if s.record.status == "explore":
            desc = f"*explore:* {desc}"
        extra = "".join(f" {_num(_finite(s.record.metrics.get(n)))} |" for n in others)
        rows.append(
            f"| {s.record.experiment} | `{s.record.commit}` | {desc} | {_num(s.value)} |{extra} "
            f"{_gain(s.gain, s.gain_pct)} | {s.record.diff_lines} |"
        )
    out = [
        f"| # | commit | change | {' | '.join([m.name, *others])} | gain | diff lines |",
        "|---:|---|---|" + "---:|" * (len(others) + 3),
        *_capped(rows, "| … | | {n} more |" + " |" * (len(others) + 3)),
    ]
    explores = [s.gain for s in t.kept if s.record.status == "explore" and s.gain is not None]
    if explores:
        keeps = [s.gain for s in t.kept if s.record.status == "keep" and s.gain is not None]
        out += [
            "",
            f"Keeps gained {_signed(math.fsum(keeps))} in total; {_plural(len(explores), 'explore')} "
            f"moved the incumbent by {_signed(math.fsum(explores))}.",
        ]
    return out


def _md_bucket_table(title: str, buckets: Sequence[Bucket]) -> list[str]:
    rows = [
        f"| {b.label} | {b.runs} | {b.kept} | {b.keep_rate * 100:.0f}% | "
        f"{_signed(b.mean_gain)} | {_signed(b.total_gain)} |"
        for b in buckets
    ]
    return [
        f"| {title} | runs | kept | keep rate | mean gain per keep | total gain |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _md_paid_off(t: Track) -> list[str]:
    attempts = t.attempts
    if not attempts:
        return ["No experiments after the baseline yet."]
    out = ["Experiments after the baseline; gains are over the incumbent each one was compared with.", ""]
    out += _md_bucket_table("diff size", t.by_diff)
    if t.by_time:
        out += ["", *_md_bucket_table("wall time", t.by_time)]
    if t.time_gain_r is not None:
        out += [
            "",
            f"Correlation of wall time with gain: r = {t.time_gain_r:+.2f} over {t.time_gain_n} measured experiments.",
        ]
    top = sorted(
        (s for s in attempts if s.record.status == "keep" and s.gain is not None),
        key=lambda s: -(s.gain or 0.0),
    )
    if top:
        out += ["", "Largest gains:"]
        out += [
            f"- #{s.record.experiment} {_cell(s.record.description)}: {_gain(s.gain, s.gain_pct)}, "
            f"diff {_plural(s.record.diff_lines, 'line')}, {fmt_duration(s.record.wall_time_s)}"
            for s in top[:3]
        ]
    return out


def _md_track(t: Track, level: str) -> list[str]:
    out = [f"{level} Result", "", *_md_result(t), ""]
    if t.stage is not None:
        out += [
            f"{_plural(t.experiments, 'experiment')}: {_counts_line(t.counts)}; "
            f"wall time {fmt_duration(t.wall_time_s)}, {_cost(t.cost_usd, 0)}.",
            "",
        ]
    out += [f"{level} Kept changes", "", *_md_kept(t), ""]
    out += [f"{level} What paid off", "", *_md_paid_off(t), ""]
    return out


def render_markdown(
    records: Sequence[Record], cfg: Config, chart: Path | None = None, chart_note: str | None = None
) -> str:
    """The report as Markdown. `chart` is linked by file name (it sits next to the report)."""
    s = summarize(records, cfg)
    exp = cfg.experiment
    out = [f"# autoexp report: {exp.tag}", ""]
    if not s.experiments:
        return "\n".join([*out, "No experiments logged yet: the report fills in after the baseline.", ""])
    span = f"{_when(s.started)} → {_when(s.finished)} UTC"
    what = f"Target `{exp.target}`"
    if cfg.stage:
        what = f"Pipeline {' → '.join(f'{st.name} (`{st.target}`)' for st in cfg.stage)}"
    out += [f"{what} on branch `{exp.branch}`, {_plural(s.experiments, 'experiment')}, {span}.", ""]
    if chart is not None:
        out += [f"![progress]({chart.name})", ""]
    elif chart_note:
        out += [f"> No chart: {chart_note}", ""]
    out += [
        "| keep | discard | crash | timeout | explore | total |",
        "|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(str(s.counts.get(k, 0)) for k in STATUSES) + f" | {s.experiments} |",
        "",
        f"Wall time {fmt_duration(s.wall_time_s)} in total "
        f"({fmt_duration(s.wall_time_s / s.experiments)} per experiment on average); "
        f"{_cost(s.cost_usd, s.tokens_used)}. Gains are direction-aware: positive means better.",
        "",
    ]
    pipeline = any(t.stage is not None for t in s.tracks)
    for i, t in enumerate(s.tracks, 1):
        if pipeline:
            name = t.stage if t.stage is not None else "(no stage)"
            out += [f"## Stage {i}: {name} ({t.objective.name})", ""]
        out += _md_track(t, "###" if pipeline else "##")
    return "\n".join(out).rstrip() + "\n"


# --- status table -------------------------------------------------------------------------


def _align(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def status_table(records: Sequence[Record], cfg: Config, *, phase: str, budget_line: str, last: int = 10) -> str:
    """A plain-text status for `autoexp-mcp status`: headline figures, then the last rows."""
    records = list(records)
    s = summarize(records, cfg)
    t = s.current
    head = [["phase", phase]]
    if t is not None and t.stage is not None:
        stages = [st.name for st in cfg.stage]
        pos = f" ({stages.index(t.stage) + 1} of {len(stages)})" if t.stage in stages else ""
        head.append(["stage", t.stage + pos])
    if t is None:
        head.append(["best", "no experiments yet"])
    else:
        where = f" at #{t.best_experiment}" if t.best_experiment is not None else ""
        where += f" {t.best_commit}" if t.best_commit else ""
        base = _num(t.baseline.value if t.baseline else None)
        m = t.objective
        line = f"{m.name} {_num(t.best_value)}{where} ({_better_word(m)}); baseline {base}: {_change(t)}"
        head.append(["best", line])
    head.append(["runs", f"{s.experiments}: {_counts_line(s.counts)}"])
    head.append(["time", f"{fmt_duration(s.wall_time_s)}, {_cost(s.cost_usd, s.tokens_used)}"])
    head.append(["budget", budget_line])
    lines = _align(head, set())
    shown = records[-last:] if last > 0 else []
    if not shown:
        return "\n".join(lines) + "\n"
    names = _column_metrics(shown, cfg)
    staged = any(r.stage for r in shown)
    steps = {st.record.experiment: st for tr in s.tracks for st in tr.steps}
    header = [
        "#",
        *(["stage"] if staged else []),
        "status",
        "commit",
        *names,
        "gain",
        "diff",
        "time",
        "description",
    ]
    rows = [header]
    for r in shown:
        st = steps.get(r.experiment)
        lead = [str(r.experiment), *([r.stage or ""] if staged else []), r.status, r.commit[:8]]
        metrics = [_num(_finite(r.metrics.get(n))) for n in names]
        tail = [_signed(st.gain if st else None), str(r.diff_lines), fmt_duration(r.wall_time_s)]
        rows.append([*lead, *metrics, *tail, _short(r.description, 48)])
    right = {i for i, h in enumerate(header) if h in {"#", *names, "gain", "diff", "time"}}
    title = f"last {len(shown)} of {len(records)} experiments:" if len(shown) < len(records) else "experiments:"
    return "\n".join([*lines, "", title, *_align(rows, right)]) + "\n"


def _column_metrics(records: Sequence[Record], cfg: Config, limit: int = 3) -> list[str]:
    order = [m.name for m in cfg.metric] + [m.name for st in cfg.stage for m in st.metric]
    seen = {n for r in records for n in r.metrics}
    names = [n for n in dict.fromkeys(order) if n in seen]
    names += sorted(seen - set(names))
    return names[:limit]


# --- chart --------------------------------------------------------------------------------

# How each kind of point is drawn, on both panels.
_STYLE: dict[str, dict[str, Any]] = {
    "discard": {"s": 16, "color": "#9e9e9e", "alpha": 0.55, "linewidths": 0, "zorder": 2},
    "explore": {"s": 34, "marker": "D", "facecolors": "none", "edgecolors": "#8e24aa", "zorder": 3},
    "keep": {"s": 40, "color": "#2e7d32", "edgecolors": "white", "linewidths": 0.6, "zorder": 4},
    "baseline": {"s": 130, "marker": "*", "color": "#1565c0", "zorder": 5},
    "crash": {"s": 30, "marker": "x", "color": "#c62828", "linewidths": 1.4, "zorder": 3, "clip_on": False},
    "timeout": {"s": 30, "marker": "v", "color": "#ef6c00", "zorder": 3, "clip_on": False},
}
_BEST_COLOR, _FRONT_COLOR = "#2e7d32", "#c62828"
_ARROW = {"max": "↑", "min": "↓"}


def _scatter(ax: Axes, kind: str, pts: Sequence[tuple[float, float]], label: str, **extra: Any) -> None:
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.scatter(xs, ys, label=label, **{**_STYLE[kind], **extra})


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


def _draw_progress(ax: Axes, t: Track) -> None:
    from matplotlib.ticker import MaxNLocator

    m = t.objective
    measured = [(s, s.value) for s in t.steps if s.value is not None]
    values = [v for _, v in measured]
    lo, hi = _ylimits(values, [s.best for s in t.steps if s.best is not None] or values) if values else (0, 1)
    # Room for the keep labels on the better side, and a strip at the bottom for crash marks.
    span = hi - lo
    top = hi + span * 0.12 * (m.direction == "max")
    bottom = lo - span * (0.12 * (m.direction == "min") + 0.06 * any(s.value is None for s in t.steps))
    ax.set_ylim(bottom, top)
    for kind in ("discard", "explore", "keep"):
        pts = [(s.record.experiment, v) for s, v in measured if s.record.status == kind and s is not t.baseline]
        _scatter(ax, kind, [(x, v) for x, v in pts if lo <= v <= hi], f"{kind} ({len(pts)})")
    # Far-off values are drawn as triangles on the edge rather than stretching the axis.
    below = [(s.record.experiment, lo) for s, v in measured if v < lo]
    above = [(s.record.experiment, hi) for s, v in measured if v > hi]
    label = f"off scale ({len(below) + len(above)})"
    _scatter(ax, "discard", below, label, marker="v", s=28)
    _scatter(ax, "discard", above, "_nolegend_" if below else label, marker="^", s=28)
    for kind in ("crash", "timeout"):
        pts = [(s.record.experiment, 0.03) for s in t.steps if s.record.status == kind]
        _scatter(ax, kind, pts, f"{kind} ({len(pts)})", transform=ax.get_xaxis_transform())
    run = [(s.record.experiment, s.best) for s in t.steps if s.best is not None]
    if run:
        ax.step([x for x, _ in run], [b for _, b in run], where="post", color=_BEST_COLOR, linewidth=1.8,
                alpha=0.8, label="best so far", zorder=3)  # fmt: skip
    b = t.baseline
    if b is not None and b.value is not None:
        ax.axhline(b.value, color=_STYLE["baseline"]["color"], linestyle="--", linewidth=0.9, alpha=0.5, zorder=1)
        _scatter(ax, "baseline", [(b.record.experiment, b.value)], "baseline")
    _label_keeps(ax, t)
    ax.set_xlabel("experiment")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    first, last = t.steps[0].record.experiment, t.steps[-1].record.experiment
    pad = max(0.7, (last - first) * 0.03)
    ax.set_xlim(first - pad, last + pad)
    ax.set_ylabel(f"{m.name} ({_better_word(m)})")
    title = f"{t.stage + ': ' if t.stage else ''}{m.name} {_ARROW[m.direction]}"
    if b is not None and t.improvement is not None:
        title += f"   {_num(b.value)} → {_num(t.best_value)}, {_change(t)}"
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.25)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)


def _label_keeps(ax: Axes, t: Track) -> None:
    """Name the keeps with the largest gains.

    Labels lean into the quadrant that is always empty: before a keep and better than it
    (up-left for max, down-left for min); near the left edge they lean right instead.
    """
    up = t.objective.direction == "max"
    keeps = [s for s in t.kept if s.record.status == "keep" and s is not t.baseline and s.gain is not None]
    first, last = t.steps[0].record.experiment, t.steps[-1].record.experiment
    for s in sorted(keeps, key=lambda s: -(s.gain or 0.0))[:MAX_LABELS]:
        left = s.record.experiment > first + 0.2 * (last - first)
        dy = 4 if up == left else -4
        ax.annotate(
            _short(s.record.description, 28),
            (s.record.experiment, s.value or 0.0),
            xytext=(-5 if left else 5, dy),
            textcoords="offset points",
            ha="right" if left else "left",
            va="bottom" if dy > 0 else "top",
            rotation=-20 if up else 20,
            rotation_mode="anchor",
            fontsize=7,
            color=_BEST_COLOR,
            parse_math=False,
            annotation_clip=True,
            clip_on=True,
        )


def _spread(points: Sequence[tuple[float, float]], span: tuple[float, float], min_gap: float = 0.05) -> list[int]:
    """Indices of points at least `min_gap` apart (as a fraction of `span`): the labels that fit."""
    chosen: list[int] = []
    for i, (x, y) in enumerate(points):
        near = (math.hypot((x - points[j][0]) / span[0], (y - points[j][1]) / span[1]) for j in chosen)
        if all(d >= min_gap for d in near):
            chosen.append(i)
    return chosen


def _draw_pareto(ax: Axes, t: Track) -> None:
    mx, my = t.metrics[0], t.metrics[1]
    pts = [
        (s, x, y)
        for s in t.steps
        if (x := _finite(s.record.metrics.get(mx.name))) is not None
        and (y := _finite(s.record.metrics.get(my.name))) is not None
    ]
    for kind in ("discard", "explore", "keep"):
        sel = [(x, y) for s, x, y in pts if s.record.status == kind and s is not t.baseline]
        _scatter(ax, kind, sel, f"{kind} ({len(sel)})")
    front = pareto_front([(x, y) for _, x, y in pts], (mx.direction, my.direction))
    ax.plot([pts[i][1] for i in front], [pts[i][2] for i in front], color=_FRONT_COLOR, linewidth=1.4,
            marker="o", markersize=4, label=f"Pareto front ({len(front)})", zorder=4)  # fmt: skip
    xs, ys = [x for _, x, _ in pts], [y for _, _, y in pts]
    span = ((max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0) if pts else (1.0, 1.0)
    for k in _spread([(pts[i][1], pts[i][2]) for i in front], span):
        s, x, y = pts[front[k]]
        ax.annotate(f"#{s.record.experiment}", (x, y), xytext=(4, -10), textcoords="offset points",
                    fontsize=7, color=_FRONT_COLOR)  # fmt: skip
    base = [(x, y) for s, x, y in pts if s is t.baseline]
    _scatter(ax, "baseline", base, "baseline")
    ax.set_xlabel(f"{mx.name} ({_better_word(mx)})")
    ax.set_ylabel(f"{my.name} ({_better_word(my)})")
    ax.set_title(f"{mx.name} {_ARROW[mx.direction]} vs {my.name} {_ARROW[my.direction]} ({t.mode})", fontsize=11)
    ax.grid(True, alpha=0.25)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)


def chart_title(s: Summary, tag: str) -> str:
    """The chart's title. It counts the baselines apart, as the legend draws them apart: a
    baseline is logged as a keep, but it is no change that was kept."""
    counts = dict(s.counts)
    bases = sum(1 for t in s.tracks if t.baseline is not None and t.baseline.record.status == "keep")
    counts["keep"] = counts.get("keep", 0) - bases
    lead = "" if not bases else "the baseline, " if bases == 1 else f"{bases} baselines, "
    return f"autoexp {tag}: {_plural(s.experiments, 'experiment')}: {lead}{_counts_line(counts)}"


def render_chart(records: Sequence[Record], cfg: Config, out: Path) -> Path:
    """Draw progress.png: the objective per experiment with the running best (and, for
    two-metric policies, metric 1 vs metric 2 with the Pareto front). Returns `out`."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ChartUnavailable(f"matplotlib is not installed ({e}). Install it with: {CHART_INSTALL}") from None
    s = summarize(records, cfg)
    if not s.tracks:
        raise ChartUnavailable("no experiments logged yet: nothing to plot")
    tracks = list(s.tracks)
    pareto = len(tracks) == 1 and len(tracks[0].metrics) >= 2 and tracks[0].mode in TWO_METRIC_MODES
    panels = len(tracks) + (1 if pareto else 0)
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    width = 10.0 if panels == 1 else (14.0 if panels == 2 else 17.0)
    fig = Figure(figsize=(width, 5.0 * rows), dpi=CHART_DPI, layout="constrained")
    ratios = [3, 2] if pareto and panels == 2 else [1] * cols
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={"width_ratios": ratios})
    flat = [ax for row in axes for ax in row]
    for ax, t in zip(flat, tracks, strict=False):
        _draw_progress(ax, t)
    if pareto:
        _draw_pareto(flat[len(tracks)], tracks[0])
    for ax in flat[panels:]:
        ax.set_visible(False)
    fig.suptitle(chart_title(s, cfg.experiment.tag), fontsize=12)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=CHART_DPI)
    atomic_write_file(out, png.getvalue())
    return out


# --- files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    chart: Path | None
    note: str | None  # why there is no chart, when there is none


def load_records(repo: Path, cfg: Config) -> list[Record]:
    return list(Ledger(Path(repo), cfg.ledger_metric_names).records())


def write_report(repo: Path, cfg: Config, out_dir: Path | None = None) -> ReportPaths:
    """Write report.md and, when matplotlib is installed, progress.png (default <repo>/.autoexp/report/)."""
    out = Path(out_dir) if out_dir is not None else Path(repo) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(repo, cfg)
    chart: Path | None = None
    note: str | None = None
    try:
        chart = render_chart(records, cfg, out / CHART_PNG)
    except ChartUnavailable as e:
        note = str(e)
        # A chart left from an earlier report would no longer match the Markdown.
        (out / CHART_PNG).unlink(missing_ok=True)
    md = out / REPORT_MD
    atomic_write_file(md, render_markdown(records, cfg, chart=chart, chart_note=note).encode("utf-8"))
    return ReportPaths(md, chart, note)
