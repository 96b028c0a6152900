"""`autoexp-mcp report`: report.md and progress.png written next to each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..guard import atomic_write_file
from ..ledger import Ledger, Record
from .chart import ChartUnavailable, render_chart
from .markdown import render_markdown

REPORT_DIR = Path(".autoexp") / "report"
REPORT_MD = "report.md"
CHART_PNG = "progress.png"


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
