"""Tool result models. Each becomes the tool's outputSchema and structuredContent, so it must
carry everything the agent needs (some clients forward only the structured part)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class _Result(BaseModel):
    next: str = Field(description="the tool to call next")


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
    diff_lines: int = Field(description="lines added + removed against the incumbent version")


class CommitResult(_Result):
    commit: str = Field(description="short sha of the experiment commit")
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
