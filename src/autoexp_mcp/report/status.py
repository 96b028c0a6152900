"""The plain-text status of `autoexp-mcp status`: headline figures, then the last rows."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Config
from ..ledger import Record
from .fmt import better_word, change, cost, counts_line, fmt_duration, num, short, signed
from .summary import finite, summarize


def _align(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


def _column_metrics(records: Sequence[Record], cfg: Config, limit: int = 3) -> list[str]:
    order = [m.name for m in cfg.metric] + [m.name for st in cfg.stage for m in st.metric]
    seen = {n for r in records for n in r.metrics}
    names = [n for n in dict.fromkeys(order) if n in seen]
    names += sorted(seen - set(names))
    return names[:limit]


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
        base = num(t.baseline.value if t.baseline else None)
        m = t.objective
        line = f"{m.name} {num(t.best_value)}{where} ({better_word(m)}); baseline {base}: {change(t)}"
        head.append(["best", line])
    head.append(["runs", f"{s.experiments}: {counts_line(s.counts)}"])
    head.append(["time", f"{fmt_duration(s.wall_time_s)}, {cost(s.cost_usd, s.tokens_used)}"])
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
        metrics = [num(finite(r.metrics.get(n))) for n in names]
        tail = [signed(st.gain if st else None), str(r.diff_lines), fmt_duration(r.wall_time_s)]
        rows.append([*lead, *metrics, *tail, short(r.description, 48)])
    right = {i for i, h in enumerate(header) if h in {"#", *names, "gain", "diff", "time"}}
    title = f"last {len(shown)} of {len(records)} experiments:" if len(shown) < len(records) else "experiments:"
    return "\n".join([*lines, "", title, *_align(rows, right)]) + "\n"
