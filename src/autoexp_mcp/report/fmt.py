"""How numbers, durations and descriptions are written in the report, the status and the chart."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from ..config import MetricConfig
from ..ledger import clean_text

if TYPE_CHECKING:
    from .summary import Track

DESC_CHARS = 60  # longest description in a Markdown table cell


def fmt_duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def num(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


def signed(v: float | None) -> str:
    return "—" if v is None else f"{v:+.4g}"


def gain(v: float | None, pct: float | None) -> str:
    if v is None:
        return "—"
    return signed(v) if pct is None else f"{signed(v)} ({pct:+.2f}%)"


def when(ts: str | None) -> str:
    if ts is None:
        return "?"
    try:
        return datetime.fromisoformat(ts).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return ts


def short(text: str, limit: int = DESC_CHARS) -> str:
    text = clean_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell(text: str, limit: int = DESC_CHARS) -> str:
    """`text` for a Markdown table cell: one line, pipes and HTML escaped."""
    return short(text, limit).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")


def better_word(m: MetricConfig) -> str:
    return "higher is better" if m.direction == "max" else "lower is better"


def change(t: Track) -> str:
    """'-0.1 (10.00% better)': best against baseline, direction-aware."""
    imp, pct = t.improvement, t.improvement_pct
    if imp is None:
        return "no baseline to compare with"
    if imp == 0:
        return "no improvement over the baseline"
    word = "better" if imp > 0 else "worse"
    return f"{signed(t.delta)} ({abs(pct):.2f}% {word})" if pct is not None else f"{signed(t.delta)} ({word})"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def counts_line(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items())


def cost(usd: float, tokens: int) -> str:
    if usd <= 0 and tokens <= 0:
        return "cost not reported"
    out = f"cost ${usd:.2f}"
    return f"{out} ({tokens:,} tokens)" if tokens else out
