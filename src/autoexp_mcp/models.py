"""Tool result models. Each becomes the tool's outputSchema and structuredContent, so it must
carry everything the agent needs (some clients forward only the structured part)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class _Result(BaseModel):
    next: str  # the tool to call next


class TargetView(_Result):
    path: str
    content: str
    sha256: str
    lines: int
    phase: str


class WriteResult(_Result):
    path: str
    sha256: str
    lines: int
    diff_lines: int  # lines added + removed against the incumbent version


class CommitResult(_Result):
    commit: str  # short sha of the experiment commit
    description: str
    diff_lines: int
    experiment: int


class EvalView(_Result):
    status: str = Field(description="running | done | crash | timeout")
    run: int
    commit: str
    experiment: int
    baseline: bool
    elapsed_s: float
    metrics: dict[str, float | None]
    std: dict[str, float] | None = None
    repeats_done: int = 0
    repeats: int = 1
    reason: str = ""
    tail: str = Field("", description="the last lines of the eval output")


class Best(BaseModel):
    commit: str
    metrics: dict[str, float]
    experiment: int | None = None


class DecideResult(_Result):
    status: str = Field(description="keep | discard | crash | timeout | explore")
    commit: str
    experiment: int
    metrics: dict[str, float | None]
    rule: str
    reason: str = Field(description="the rule applied, the numbers compared and the margin")
    margin: float | None = None
    incumbent: Best | None = None
    best: Best | None = None
    reverted: bool


class BudgetStatus(_Result):
    experiments_used: int
    experiments_left: int | None
    consecutive_crashes: int
    stop: bool
    reason: str
    phase: str
    cost_usd: float
    cost_left_usd: float | None
    hours_used: float
    hours_left: float | None
    stage: str | None = None
    best: Best | None = None
    sandbox: str | None = None  # set only when evals run without a sandbox: why, and what that means


class Row(BaseModel):
    experiment: int
    commit: str
    status: str
    metrics: dict[str, float | None]
    description: str
    reason: str
    wall_time_s: float
    diff_lines: int
    cost_usd: float


class LogResult(_Result):
    row: Row
    budget: BudgetStatus


# --- what the agent reads: lean results (server.py) --------------------------------------------
# Fields that do not apply are left out of the result, never sent as null (server.py publishes
# schemas without the nulls), and nothing is said twice.


# One experiment's result. From `run_eval` on a step-by-step run: measured (status running, done,
# crash or timeout; decide next). From `experiment` (and `run_eval` on its run): decided and
# logged (keep, discard, explore, crash, timeout, interrupted), with the budget line.
# (No docstrings on these models: a docstring becomes the schema's description in every listing.)
class Outcome(BaseModel):
    status: str
    experiment: int
    commit: str
    run: int | None = None
    baseline: bool | None = None  # only when true: this run measures the untouched tree
    elapsed_s: float | None = None
    metrics: dict[str, float] | None = None
    std: dict[str, float] | None = None
    margin: float | None = None
    reason: str
    new_best: bool | None = None  # only when true: this experiment is the new best
    tail: str | None = None  # the eval output's last lines (from `experiment`: only of a failed run)
    budget: str | None = None
    next: str


class Decided(BaseModel):
    status: str
    experiment: int
    commit: str
    metrics: dict[str, float] | None = None
    rule: str
    reason: str
    margin: float | None = None
    new_best: bool | None = None
    reverted: bool
    next: str


class Logged(BaseModel):
    experiment: int
    status: str
    budget: str
    next: str


class BestOut(BaseModel):
    commit: str
    metrics: dict[str, float]


class Budget(BaseModel):
    experiments_used: int
    experiments_left: int | None = None
    consecutive_crashes: int
    stop: bool
    reason: str
    phase: str
    cost_usd: float
    cost_left_usd: float | None = None
    hours_used: float
    hours_left: float | None = None
    stage: str | None = None
    best: BestOut | None = None
    sandbox: str | None = None
    last: str | None = None  # the last one-call experiment's outcome, in one line
    next: str


def budget_line(b: BudgetStatus) -> str:
    """The budget in a few words: what is left, or why the loop stops."""
    if b.stop:
        return f"stop: {b.reason}"
    parts = []
    if b.experiments_left is not None:
        parts.append(f"{b.experiments_left} experiments left")
    if b.cost_left_usd is not None:
        parts.append(f"${b.cost_left_usd:.2f} left")
    if b.hours_left is not None:
        parts.append(f"{b.hours_left:.2f} h left")
    return ", ".join(parts) or "no cap"


def eval_outcome(v: EvalView) -> Outcome:
    """A step-by-step run_eval's view, lean: no empty or default fields."""
    measured = {k: x for k, x in v.metrics.items() if x is not None}
    return Outcome(
        status=v.status,
        experiment=v.experiment,
        commit=v.commit,
        run=v.run,
        baseline=v.baseline or None,
        elapsed_s=v.elapsed_s,
        metrics=measured or None,
        std=v.std or None,
        reason=v.reason,
        tail=v.tail or None,
        next=v.next,
    )


def decided(d: DecideResult) -> Decided:
    new_best = d.best is not None and d.best.experiment == d.experiment and d.status == "keep"
    return Decided(
        status=d.status,
        experiment=d.experiment,
        commit=d.commit,
        metrics={k: x for k, x in d.metrics.items() if x is not None} or None,
        rule=d.rule,
        reason=d.reason,
        margin=d.margin,
        new_best=new_best or None,
        reverted=d.reverted,
        next=d.next,
    )


def logged(r: LogResult) -> Logged:
    return Logged(experiment=r.row.experiment, status=r.row.status, budget=budget_line(r.budget), next=r.next)


def budget(b: BudgetStatus, *, last: str | None = None, next_tool: str | None = None) -> Budget:
    return Budget.model_validate({**b.model_dump(exclude={"next"}), "last": last, "next": next_tool or b.next})
