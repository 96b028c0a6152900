"""What the tools, resources and the CLI show of an experiment, built from the state and the
running job (the Experiment calls these under its lock): the eval's progress or result, the
budget, the prompt, the last run's log and the markdown report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import budget as budgetmod
from . import ledger
from .config import Config
from .errors import OrderError
from .measure import Job
from .models import Best, BudgetStatus, EvalView
from .runs import Isolation
from .state import Phase, Point, State


def short(sha: str | None) -> str:
    return (sha or "")[:7]


def best(point: Point | None) -> Best | None:
    if point is None:
        return None
    return Best(commit=short(point.commit), metrics=point.metrics, experiment=point.experiment)


def eval_view(st: State, job: Job | None, cfg: Config, next_tool: Callable[[], str]) -> EvalView:
    """The run under way (its elapsed time and output tail) or the result it recorded."""
    p = st.pending
    if p is None or p.run is None:
        raise OrderError(f"no eval has been started. Call {next_tool()} next.", next_tool())
    common: dict[str, Any] = dict(
        run=p.run,
        commit=short(p.commit),
        experiment=p.experiment,
        baseline=p.baseline,
        repeats=cfg.policy.repeats,
    )
    if st.phase == Phase.RUNNING:
        elapsed = job.elapsed() if job is not None else 0.0
        waiting = "waiting for an eval slot (other lanes' evals run); its timeout starts with it. "
        waiting = waiting if job is not None and job.waiting else ""
        progress = getattr(job.current, "progress", None) if job is not None else None
        stops = "It stops if this server exits (as with a client that starts one server per call)"
        if progress is not None:  # a scheduler's job
            waiting += progress()
            stops = "It is cancelled if this server exits; a server killed outright leaves it running for the next"
        return EvalView(
            status="running",
            elapsed_s=round(elapsed, 1),
            metrics={},
            tail=job.tail() if job else "",
            repeats_done=job.repeats_done if job else 0,
            reason=waiting + f"still running after {elapsed:.0f}s (timeout {cfg.experiment.timeout:g}s); "
            f"call run_eval again to keep waiting on the same run. {stops}",
            next="run_eval",
            **common,
        )
    r = p.result
    assert r is not None
    tail = r.tail
    return EvalView(
        status=r.status,
        elapsed_s=r.elapsed_s,
        metrics=r.metrics,
        std=r.std or None,
        tail=tail,
        repeats_done=len(next(iter(r.values.values()), [])) if r.values else 0,
        reason=r.reason,
        next=next_tool(),
        **common,
    )


def budget_status(v: budgetmod.BudgetView, st: State, full_cfg: Config, iso: Isolation, next_tool: str) -> BudgetStatus:
    return BudgetStatus(
        experiments_used=v.experiments_used,
        experiments_left=v.experiments_left,
        consecutive_crashes=v.consecutive_crashes,
        stop=v.stop,
        reason=v.reason,
        phase=str(st.phase),
        cost_usd=v.cost_usd,
        cost_left_usd=v.cost_left_usd,
        hours_used=v.hours_used,
        hours_left=v.hours_left,
        stage=full_cfg.stage_name(st.stage),
        best=best(st.best),
        sandbox=None if iso.active else iso.note,
        next=next_tool,
    )


def render_prompt(
    full_cfg: Config, stage: int, book: ledger.Ledger, root: Path, focus: str | None, domain: str | None
) -> str:
    from . import prompting

    text = prompting.render_current(full_cfg, stage, book.tail(200), root=root, domain=domain)
    if focus:
        text += f"\n## This lane's focus\n\nOther agents work on other aspects in their own lanes. {focus}\n"
    return text


def last_log(state_dir: Path, n: int) -> Path | None:
    """The log of run `n` (of its last repeat), if it was written."""
    runs = state_dir / "runs"
    if n == 0 or not runs.is_dir():
        return None
    candidates = sorted(runs.glob(f"{n}-*.log"), key=lambda p: p.stat().st_mtime) or [runs / f"{n}.log"]
    path = candidates[-1]
    return path if path.exists() else None


def report_markdown(book: ledger.Ledger, cfg: Config) -> str:
    from . import report

    return report.render_markdown(list(book.records()), cfg)
