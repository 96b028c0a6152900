"""Reports over experiments.jsonl: the Markdown summary, the progress chart, the status table.

Everything here only reads records. `summarize` is pure; the chart needs the optional
matplotlib, imported inside its functions so the server and the CLI work without it.

    summary.py    counts, baseline, best, gains, what paid off (pure)
    markdown.py   report.md
    status.py     the text of `autoexp-mcp status`
    chart.py      progress.png (placement.py: where its labels go)
    files.py      write_report: both files, next to each other
"""

from .chart import CHART_DPI, CHART_INSTALL, MAX_LABELS, ChartUnavailable, build_figure, chart_title, render_chart
from .files import CHART_PNG, REPORT_DIR, REPORT_MD, ReportPaths, load_records, write_report
from .fmt import fmt_duration
from .markdown import render_markdown
from .status import status_table
from .summary import (
    STATUSES,
    TIME_SPLIT_RATIO,
    TWO_METRIC_MODES,
    Bucket,
    Step,
    Summary,
    TimeSplit,
    Track,
    pareto_front,
    summarize,
)

__all__ = [
    "CHART_DPI",
    "CHART_INSTALL",
    "CHART_PNG",
    "MAX_LABELS",
    "REPORT_DIR",
    "REPORT_MD",
    "STATUSES",
    "TIME_SPLIT_RATIO",
    "TWO_METRIC_MODES",
    "Bucket",
    "ChartUnavailable",
    "ReportPaths",
    "Step",
    "Summary",
    "TimeSplit",
    "Track",
    "build_figure",
    "chart_title",
    "fmt_duration",
    "load_records",
    "pareto_front",
    "render_chart",
    "render_markdown",
    "status_table",
    "summarize",
    "write_report",
]
