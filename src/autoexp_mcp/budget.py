"""Pure budget accounting: counters + caps + the current time -> may another experiment start?"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import BudgetConfig
from .state import State


@dataclass(frozen=True)
class Usage:
    experiments: int  # experiments logged, the baseline included
    consecutive_crashes: int
    cost_usd: float
    tokens_used: int
    elapsed_s: float  # wall clock since the loop started


@dataclass(frozen=True)
class BudgetView:
    experiments_used: int
    experiments_left: int | None
    cost_usd: float
    cost_left_usd: float | None
    hours_used: float
    hours_left: float | None
    consecutive_crashes: int
    stop: bool
    reason: str


def cost_of(tokens_used: int, cost_usd: float | None, budget: BudgetConfig) -> float:
    """What one experiment cost: the agent's own figure, else its tokens priced by the config."""
    if cost_usd is not None:
        return max(0.0, cost_usd)
    return max(0, tokens_used) * budget.usd_per_million_tokens / 1_000_000


def check(usage: Usage, budget: BudgetConfig) -> BudgetView:
    """Evaluate every cap; `stop` is True when no further experiment may start."""
    used = usage.experiments
    left = None if budget.max_experiments is None else max(0, budget.max_experiments - used)
    hours = usage.elapsed_s / 3600
    hours_left = None if budget.max_wall_clock_hours is None else max(0.0, budget.max_wall_clock_hours - hours)
    cost_left = None if budget.max_cost_usd is None else max(0.0, budget.max_cost_usd - usage.cost_usd)
    reasons = []
    if left == 0:
        reasons.append(f"max_experiments reached ({used} of {budget.max_experiments})")
    if hours_left == 0.0:
        reasons.append(f"max_wall_clock_hours reached ({hours:.2f} h of {budget.max_wall_clock_hours} h)")
    if cost_left == 0.0:
        reasons.append(f"max_cost_usd reached (${usage.cost_usd:.2f} of ${budget.max_cost_usd:.2f})")
    cap = budget.abort_on_consecutive_crashes
    if cap is not None and usage.consecutive_crashes >= cap:
        reasons.append(f"{usage.consecutive_crashes} crashes in a row (abort_on_consecutive_crashes = {cap})")
    return BudgetView(
        experiments_used=used,
        experiments_left=left,
        cost_usd=round(usage.cost_usd, 6),
        cost_left_usd=None if cost_left is None else round(cost_left, 6),
        hours_used=round(hours, 4),
        hours_left=None if hours_left is None else round(hours_left, 4),
        consecutive_crashes=usage.consecutive_crashes,
        stop=bool(reasons),
        reason="; ".join(reasons) if reasons else "within budget",
    )


def summary_line(budget: BudgetConfig) -> str:
    parts = []
    if budget.max_experiments is not None:
        parts.append(f"{budget.max_experiments} experiments")
    if budget.max_wall_clock_hours is not None:
        parts.append(f"{budget.max_wall_clock_hours:g} hours")
    if budget.max_cost_usd is not None:
        parts.append(f"${budget.max_cost_usd:.2f}")
    if budget.abort_on_consecutive_crashes is not None:
        parts.append(f"stop after {budget.abort_on_consecutive_crashes} crashes in a row")
    return ", ".join(parts) if parts else "no cap (until interrupted)"


def usage_of(st: State, now: float) -> Usage:
    """The usage the budget is judged on: the running stage's (the whole run's when there are
    no stages). The wall clock starts with the first eval run, not at the first server start."""
    since = st.stage_started_at if st.stage_started_at is not None else st.started_at
    return Usage(
        experiments=st.experiments - st.stage_started_experiments,
        consecutive_crashes=st.consecutive_crashes,
        cost_usd=st.cost_usd - st.stage_started_cost,
        tokens_used=st.tokens_used,
        elapsed_s=0.0 if st.runs == 0 else max(0.0, now - since),
    )


def view_of(st: State, budget: BudgetConfig, now: float) -> BudgetView:
    """The budget of the experiment in `st`, for the server and the CLI alike: the caps, and a
    stop when the baseline could not be measured (until a fix is committed)."""
    view = check(usage_of(st, now), budget)
    if st.baseline_failed and st.incumbent is None and not view.stop:
        view = replace(view, stop=True, reason=st.baseline_failed)
    return view
