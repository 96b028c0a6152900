"""report.md: the result against the baseline, the kept changes, and what paid off."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..config import Config
from ..ledger import Record
from .fmt import (
    better_word,
    cell,
    change,
    cost,
    counts_line,
    fmt_duration,
    gain,
    num,
    plural,
    signed,
    when,
)
from .summary import TIME_SPLIT_RATIO, Bucket, Track, finite, summarize

MAX_ROWS = 20  # longest list in the Markdown before "… N more"


def _capped(rows: list[str], blank: str) -> list[str]:
    if len(rows) <= MAX_ROWS:
        return rows
    head, tail = rows[: MAX_ROWS // 2], rows[-MAX_ROWS // 2 :]
    return [*head, blank.format(n=len(rows) - len(head) - len(tail)), *tail]


def _result(t: Track) -> list[str]:
    m = t.objective
    base = t.baseline.value if t.baseline else None
    out = [f"**{m.name}** ({better_word(m)}): {num(base)} → **{num(t.best_value)}**, {change(t)}."]
    if t.baseline is not None:
        best = f"experiment {t.best_experiment}" if t.best_experiment is not None else "the best"
        commit = f" (commit `{t.best_commit}`)" if t.best_commit else ""
        out[0] += f" Baseline: experiment {t.baseline.record.experiment}; best: {best}{commit}."
        others = [x.name for x in t.metrics if x.name != m.name]
        pairs = [
            f"{n} {num(finite(t.baseline.record.metrics.get(n)))} → {num(finite(t.best_metrics.get(n)))}"
            for n in others
        ]
        if pairs:
            out += ["", "Other metrics, baseline → best: " + "; ".join(pairs) + "."]
    return out


def _kept(t: Track) -> list[str]:
    m = t.objective
    others = [x.name for x in t.metrics if x.name != m.name][:2]
    rows = []
    for s in t.kept:
        desc = cell(s.record.description)
        if s.record.status == "explore":
            desc = f"*explore:* {desc}"
        extra = "".join(f" {num(finite(s.record.metrics.get(n)))} |" for n in others)
        rows.append(
            f"| {s.record.experiment} | `{s.record.commit}` | {desc} | {num(s.value)} |{extra} "
            f"{gain(s.gain, s.gain_pct)} | {s.record.diff_lines} |"
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
            f"Keeps gained {signed(math.fsum(keeps))} in total; {plural(len(explores), 'explore')} "
            f"moved the incumbent by {signed(math.fsum(explores))}.",
        ]
    return out


def _bucket_table(title: str, buckets: Sequence[Bucket]) -> list[str]:
    rows = [
        f"| {b.label} | {b.runs} | {b.kept} | {b.keep_rate * 100:.0f}% | "
        f"{signed(b.mean_gain)} | {signed(b.total_gain)} |"
        for b in buckets
    ]
    return [
        f"| {title} | runs | kept | keep rate | mean gain per keep | total gain |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _by_time(t: Track) -> list[str]:
    """The wall-time table and correlation when the times separate; else one line saying why not."""
    split = t.time_split
    if split is None:
        return []
    if not split.separates:
        halves = (
            f"the slower half took {fmt_duration(split.slow_s)} (median) against {fmt_duration(split.fast_s)}"
            if split.slow_s is not None
            else f"every one took {fmt_duration(split.fast_s)}"
        )
        return [
            "",
            f"No breakdown by wall time: {halves}, less than {TIME_SPLIT_RATIO:g}× apart, "
            "so the experiments took about the same time.",
        ]
    out = ["", *_bucket_table("wall time", split.buckets)]
    if t.time_gain_r is not None:
        out += [
            "",
            f"Correlation of wall time with gain: r = {t.time_gain_r:+.2f} over {t.time_gain_n} measured experiments.",
        ]
    return out


def _paid_off(t: Track) -> list[str]:
    attempts = t.attempts
    if not attempts:
        return ["No experiments after the baseline yet."]
    out = ["Experiments after the baseline; gains are over the incumbent each one was compared with.", ""]
    out += _bucket_table("diff size", t.by_diff)
    out += _by_time(t)
    top = sorted(
        (s for s in attempts if s.record.status == "keep" and s.gain is not None),
        key=lambda s: -(s.gain or 0.0),
    )
    if top:
        out += ["", "Largest gains:"]
        out += [
            f"- #{s.record.experiment} {cell(s.record.description)}: {gain(s.gain, s.gain_pct)}, "
            f"diff {plural(s.record.diff_lines, 'line')}, {fmt_duration(s.record.wall_time_s)}"
            for s in top[:3]
        ]
    return out


def _track(t: Track, level: str) -> list[str]:
    out = [f"{level} Result", "", *_result(t), ""]
    if t.stage is not None:
        out += [
            f"{plural(t.experiments, 'experiment')}: {counts_line(t.counts)}; "
            f"wall time {fmt_duration(t.wall_time_s)}, {cost(t.cost_usd, 0)}.",
            "",
        ]
    out += [f"{level} Kept changes", "", *_kept(t), ""]
    out += [f"{level} What paid off", "", *_paid_off(t), ""]
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
    span = f"{when(s.started)} → {when(s.finished)} UTC"
    what = f"Target `{exp.target}`"
    if cfg.stage:
        what = f"Pipeline {' → '.join(f'{st.name} (`{st.target}`)' for st in cfg.stage)}"
    out += [f"{what} on branch `{exp.branch}`, {plural(s.experiments, 'experiment')}, {span}.", ""]
    if chart is not None:
        out += [f"![progress]({chart.name})", ""]
    elif chart_note:
        out += [f"> No chart: {chart_note}", ""]
    out += [
        "| " + " | ".join(s.counts) + " | total |",
        "|" + "---:|" * (len(s.counts) + 1),
        "| " + " | ".join(str(n) for n in s.counts.values()) + f" | {s.experiments} |",
        "",
        f"Wall time {fmt_duration(s.wall_time_s)} in total "
        f"({fmt_duration(s.wall_time_s / s.experiments)} per experiment on average); "
        f"{cost(s.cost_usd, s.tokens_used)}. Gains are direction-aware: positive means better.",
        "",
    ]
    pipeline = any(t.stage is not None for t in s.tracks)
    for i, t in enumerate(s.tracks, 1):
        if pipeline:
            name = t.stage if t.stage is not None else "(no stage)"
            out += [f"## Stage {i}: {name} ({t.objective.name})", ""]
        out += _track(t, "###" if pipeline else "##")
    return "\n".join(out).rstrip() + "\n"
