"""Pure budget accounting: counters + caps + the current time -> may another experiment start?"""

from __future__ import annotations

from dataclasses import dataclass

from .config import BudgetConfig


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
