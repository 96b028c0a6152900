"""`autoexp-mcp report --against TAG`: two runs of one experiment on one chart and one table.

The runs are the current tag's ledger and another one: a lane of this repository
(.autoexp/lanes/TAG/), an archived tag (.autoexp/archive/TAG/), or the experiments.jsonl of
another repository or worktree given by path. Each is drawn as its best objective so far, over experiments and over wall
time, so "model agent vs coordinate search on the same budget" is one command.

Wall time is counted from the run's start by the ledger's timestamps (one-second resolution)
and is never less than the evals' own time added up.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, MetricConfig
from ..errors import ConfigError
from ..guard import atomic_write_file
from ..ledger import EXPERIMENTS_JSONL, KEPT_STATUSES, Ledger, Record
from .chart import CHART_DPI, ChartUnavailable
from .fmt import cell, fmt_duration, num, signed
from .summary import finite

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

ARCHIVE = Path(".autoexp") / "archive"  # a tag's ledger once the repository moved to another tag
LANES = Path(".autoexp") / "lanes"  # a lane's worktree, with its ledger at the top
COLORS = ("#1f77b4", "#d62728")  # this run, the other


@dataclass(frozen=True)
class Curve:
    """One run's best objective after each experiment."""

    label: str
    records: tuple[Record, ...]
    elapsed_s: tuple[float, ...]  # since the run started, after each experiment
    best: tuple[float | None, ...]  # best kept value so far (None before the first)

    def best_after(self, n: int) -> float | None:
        return self.best[min(n, len(self.best)) - 1] if self.best and n > 0 else None

    def reached_at(self) -> int | None:
        """The experiment (1-based position) where the final best was first reached."""
        final = self.best[-1] if self.best else None
        return None if final is None else self.best.index(final) + 1


@dataclass(frozen=True)
class Comparison:
    markdown: Path
    chart: Path | None
    note: str | None  # why there is no chart
    table: str


def _read_jsonl(path: Path) -> list[Record]:
    if path.name == EXPERIMENTS_JSONL:
        return list(Ledger(path.parent, []).records())
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            try:
                out.append(Record.model_validate_json(line))
            except ValueError:
                continue
    return out


def find_run(repo: Path, cfg: Config, against: str) -> tuple[str, list[Record]]:
    """The label and records of the run named `against`: a path to a repository, lane or
    experiments.jsonl, or a lane or archived tag of this repository."""
    path = Path(against).expanduser()
    if path.is_dir() and (path / EXPERIMENTS_JSONL).is_file():
        return f"{path.name} ({against})", _read_jsonl(path / EXPERIMENTS_JSONL)
    if path.is_file():
        return against, _read_jsonl(path)
    if against == cfg.experiment.tag:
        raise ConfigError(f"--against {against}: that is the current tag; give another tag or a path to compare with")
    lane = repo / LANES / against / EXPERIMENTS_JSONL
    if lane.is_file():
        return f"lane {against}", _read_jsonl(lane)
    archive = repo / ARCHIVE
    candidates = sorted(
        (d for d in archive.glob(f"{against}*") if d.name == against or d.name.startswith(f"{against}-")),
        key=lambda d: d.stat().st_mtime,
    )
    for d in reversed(candidates):  # the newest archive of that tag
        if (d / EXPERIMENTS_JSONL).is_file():
            return against, _read_jsonl(d / EXPERIMENTS_JSONL)
    tags = sorted({d.name for d in archive.iterdir() if d.is_dir()}) if archive.is_dir() else []
    known = f"archived tags here: {', '.join(tags)}" if tags else "no tag is archived in this repository"
    raise ConfigError(
        f"--against {against}: no such lane, tag or path ({known}). Give a lane or a tag this repository "
        "ran before, or the path of another repository, lane or experiments.jsonl."
    )


def _elapsed(records: Sequence[Record]) -> tuple[float, ...]:
    out: list[float] = []
    spent = 0.0
    start: datetime | None = None
    for i, r in enumerate(records):
        spent += r.wall_time_s
        try:
            ts = datetime.fromisoformat(r.timestamp)
        except ValueError:
            ts = None
        if i == 0 and ts is not None:
            start = ts
        by_clock = (ts - start).total_seconds() + records[0].wall_time_s if ts and start else 0.0
        out.append(max(spent, by_clock))
    return tuple(out)


def curve(label: str, records: Sequence[Record], m: MetricConfig) -> Curve:
    best: float | None = None
    bests: list[float | None] = []
    for r in records:
        v = finite(r.metrics.get(m.name))
        if r.status in KEPT_STATUSES and v is not None and (best is None or (v > best) == (m.direction == "max")):
            best = v
        bests.append(best)
    return Curve(label, tuple(records), _elapsed(records), tuple(bests))


def _better(m: MetricConfig, a: float, b: float) -> float:
    return a - b if m.direction == "max" else b - a


def comparison_table(curves: Sequence[Curve], m: MetricConfig) -> str:
    """The Markdown table and a verdict at the same budget (the shorter run's length)."""
    n = min(len(c.records) for c in curves)
    rows = [
        f"| run | experiments | baseline | best | best after {n} | best reached at | wall time | time to best "
        "| keeps | crashes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in curves:
        base = finite(c.records[0].metrics.get(m.name)) if c.records else None
        at = c.reached_at()
        counts = {s: sum(1 for r in c.records if r.status == s) for s in ("keep", "crash", "timeout")}
        rows.append(
            f"| {cell(c.label, 40)} | {len(c.records)} | {num(base)} | {num(c.best[-1] if c.best else None)} "
            f"| {num(c.best_after(n))} | {at if at else '—'} | {fmt_duration(c.elapsed_s[-1] if c.elapsed_s else 0)} "
            f"| {fmt_duration(c.elapsed_s[at - 1]) if at else '—'} | {max(0, counts['keep'] - 1)} "
            f"| {counts['crash'] + counts['timeout']} |"
        )
    a, b = (c.best_after(n) for c in curves[:2])
    word = "higher" if m.direction == "max" else "lower"
    if a is None or b is None:
        verdict = f"At the same budget ({n} experiments) one of the runs has no measured {m.name} to compare."
    elif a == b:
        verdict = f"At the same budget ({n} experiments) both reach {m.name} {num(a)}."
    else:
        lead, gap = (curves[0], a - b) if _better(m, a, b) > 0 else (curves[1], b - a)
        verdict = (
            f"At the same budget ({n} experiments), **{lead.label}** is ahead on {m.name} ({word} is better) "
            f"by {signed(abs(gap))}."
        )
    return "\n".join([*rows, "", verdict])


def new_figure(width_in: float, height_in: float) -> Figure:
    """A constrained-layout Figure, or ChartUnavailable with the install hint."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        from .chart import CHART_INSTALL

        raise ChartUnavailable(f"matplotlib is not installed ({e}). Install it with: {CHART_INSTALL}") from None
    return Figure(figsize=(width_in, height_in), dpi=CHART_DPI, layout="constrained")


def plot_best(ax: Axes, c: Curve, xs: Sequence[float], **style: Any) -> Line2D:
    """`c`'s best so far as a step line over `xs` (one x per experiment), a dot at its end."""
    pts = [(x, v) for x, v in zip(xs, c.best, strict=True) if v is not None]
    (line,) = ax.step([x for x, _ in pts], [v for _, v in pts], where="post", label=c.label,
                      **{"linewidth": 1.8, **style})  # fmt: skip
    ax.plot([x for x, _ in pts[-1:]], [v for _, v in pts[-1:]], "o", color=line.get_color(), zorder=line.get_zorder())
    return line


def best_label(m: MetricConfig) -> str:
    return f"best {m.name} ({'higher' if m.direction == 'max' else 'lower'} is better)"


def save_png(fig: Figure, out: Path) -> Path:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=CHART_DPI)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_file(out, png.getvalue())
    return out


def render_comparison_chart(curves: Sequence[Curve], m: MetricConfig, title: str, out: Path) -> Path:
    """Best-so-far over experiments (left) and over wall time (right), one line per run."""
    fig = new_figure(12.0, 4.6)
    if not any(any(v is not None for v in c.best) for c in curves):
        raise ChartUnavailable(f"no kept {m.name} in either run: nothing to plot")
    by_n, by_t = fig.subplots(1, 2)
    minutes = max((c.elapsed_s[-1] for c in curves if c.elapsed_s), default=0) > 180
    for c, color in zip(curves, COLORS, strict=False):
        plot_best(by_n, c, range(1, len(c.best) + 1), color=color)
        plot_best(by_t, c, [t / 60 if minutes else t for t in c.elapsed_s], color=color)
    n = min(len(c.records) for c in curves)
    by_n.axvline(n, color="0.6", linestyle=":", linewidth=1, label=f"same budget: {n}")
    by_n.set_xlabel("experiment")
    by_t.set_xlabel("wall time since the start (" + ("min" if minutes else "s") + ")")
    for ax in (by_n, by_t):
        ax.set_ylabel(best_label(m))
        ax.grid(alpha=0.3)
    fig.legend(*by_n.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12)
    return save_png(fig, out)


def write_comparison(repo: Path, cfg: Config, against: str, out_dir: Path | None = None) -> Comparison:
    """compare-<name>.md and compare-<name>.png (default in <repo>/.autoexp/report/)."""
    m = cfg.objective
    mine = list(Ledger(repo, cfg.ledger_metric_names).records())
    if not mine:
        raise ConfigError(f"the current tag {cfg.experiment.tag} has no experiments yet: nothing to compare")
    label, theirs = find_run(repo, cfg, against)
    if not any(m.name in r.metrics for r in theirs):
        raise ConfigError(
            f"--against {against}: its records have no {m.name}, the objective here; compare runs of one metric"
        )
    curves = [curve(cfg.experiment.tag, mine, m), curve(label, theirs, m)]
    out = Path(out_dir) if out_dir is not None else Path(repo) / ".autoexp" / "report"
    stem = "compare-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(against).name or "other")
    title = f"{cfg.experiment.tag} vs {label}: best {m.name} so far"
    chart: Path | None = None
    note: str | None = None
    try:
        chart = render_comparison_chart(curves, m, title, out / f"{stem}.png")
    except ChartUnavailable as e:
        note = str(e)
    table = comparison_table(curves, m)
    md = [f"# {title}", "", table, ""]
    md += [f"![best so far]({chart.name})", ""] if chart else ([f"*No chart: {note}*", ""] if note else [])
    path = out / f"{stem}.md"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_file(path, "\n".join(md).encode("utf-8"))
    return Comparison(path, chart, note, table)
