"""The MCP edge: thin tool wrappers around `loop.Experiment`, the prompt, the resources.

Each tool runs the Experiment's blocking method in a worker thread and turns every
`AutoexpError` into a `ToolError`, the only exception whose text reaches the agent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from . import __version__, prompting
from .errors import AutoexpError, OrderError
from .loop import Experiment
from .models import BudgetStatus, CommitResult, DecideResult, EvalView, LogResult, TargetView, WriteResult
from .runner import read_tail

log = logging.getLogger("autoexp_mcp")

PROGRESS_EVERY_S = 2.0  # how often run_eval reports progress while it waits
T = TypeVar("T")


class Edit(BaseModel):
    old: str = Field(description="exact text in the target; must occur exactly once")
    new: str = Field(description="replacement text")


async def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except OrderError as e:
        raise ToolError(f"{e} (next: {e.next_tool})") from None
    except AutoexpError as e:
        raise ToolError(str(e)) from None


def build_server(exp: Experiment, *, close_on_exit: bool = True) -> MCPServer[Experiment]:
    """An MCP server driving `exp`. With `close_on_exit`, server shutdown stops a running eval."""

    @asynccontextmanager
    async def lifespan(_: MCPServer[Experiment]) -> AsyncIterator[Experiment]:
        try:
            yield exp
        finally:
            if close_on_exit:
                exp.close()

    mcp: MCPServer[Experiment] = MCPServer(
        "autoexp",
        title="autoexp: guarded experiment loop",
        instructions=prompting.INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
    )
    cfg = exp.cfg
    target = cfg.experiment.target

    @mcp.tool(title="Read the target file", annotations=ToolAnnotations(read_only_hint=True))
    async def read_target() -> TargetView:
        """Return the current content of the target file (the only file you may change), its
        sha256 and line count. Allowed in every phase."""
        return await _call(exp.read_target)

    @mcp.tool(
        title="Write the target file",
        annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False),
    )
    async def write_target(
        content: Annotated[str, Field(description="the whole new file (leave empty when giving edits)")] = "",
        edits: Annotated[list[Edit] | None, Field(description="exact {old, new} replacements, in order")] = None,
    ) -> WriteResult:
        """Change the target file: pass either `content` (the whole new file) or `edits`, a list of
        exact {old, new} replacements where each `old` occurs exactly once. Only after the
        baseline; may be called repeatedly before `commit`. Next: commit."""
        # `content` is typed plain `str` on purpose: the SDK would otherwise parse a target that
        # happens to be JSON (hparams.json) into a dict before it reaches us.
        pairs = None if edits is None else [(e.old, e.new) for e in edits]
        if pairs is None and content == "":
            raise ToolError("give `content` (the whole new file, not empty) or `edits` ({old, new} pairs).")
        return await _call(exp.write_target, content if pairs is None or content else None, pairs)

    @mcp.tool(title="Commit the experiment", annotations=ToolAnnotations(destructive_hint=False))
    async def commit(
        description: Annotated[str, Field(description="the hypothesis this edit tests, one line")],
    ) -> CommitResult:
        """Commit the edited target as one experiment on the experiment branch. The server checks
        first that nothing but the target changed. Next: run_eval."""
        return await _call(exp.commit, description)

    @mcp.tool(title="Run the eval", annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False))
    async def run_eval(
        ctx: Context,
        wait_seconds: Annotated[
            float | None, Field(description="longest wait in this call (default from the config, ~45 s)")
        ] = None,
    ) -> EvalView:
        """Run the eval harness on the committed experiment (or, first of all, on the untouched
        tree: the baseline) and read the metrics from its output. Waits at most `wait_seconds`;
        if the eval is still going it returns status "running": call run_eval again, it keeps
        waiting on the same run. Next: decide."""
        job = await _call(exp.start_eval)
        if job is not None:
            limit = exp.wait_limit(wait_seconds)
            deadline = anyio.current_time() + limit
            total = exp.cfg.experiment.timeout * exp.cfg.policy.repeats
            while not job.done.is_set():
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    break
                await anyio.to_thread.run_sync(job.done.wait, min(PROGRESS_EVERY_S, remaining), abandon_on_cancel=True)
                if not job.done.is_set():
                    elapsed = job.elapsed()
                    await ctx.report_progress(
                        min(elapsed, total), total, f"eval run {job.run} running for {elapsed:.0f}s"
                    )
        return await _call(exp.eval_view)

    @mcp.tool(title="Keep or revert", annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False))
    async def decide() -> DecideResult:
        """Apply the keep/revert rule to the measured result: keep the commit if it beats the
        incumbent, otherwise reset the branch to the incumbent (also on crash or timeout).
        Returns the rule, the numbers compared and the margin. Next: log_result."""
        return await _call(exp.decide)

    @mcp.tool(title="Log the result", annotations=ToolAnnotations(destructive_hint=False))
    async def log_result(
        notes: Annotated[str, Field(description="what you learned from this experiment")] = "",
        description: Annotated[str, Field(description="replaces the commit description in the log")] = "",
        tokens_used: Annotated[int, Field(ge=0, description="tokens this experiment cost you")] = 0,
        cost_usd: Annotated[float | None, Field(ge=0, description="what this experiment cost, in USD")] = None,
    ) -> LogResult:
        """Append the decided experiment to results.tsv and experiments.jsonl and update the
        budget. Returns the row and the budget status. Next: write_target (or stop when the
        budget says so)."""
        return await _call(exp.log_result, description or None, notes, tokens_used, cost_usd)

    @mcp.tool(title="Budget status", annotations=ToolAnnotations(read_only_hint=True))
    async def budget_status() -> BudgetStatus:
        """Experiments used and left, cost, hours, crashes in a row, whether to stop, the phase
        and the next tool. Allowed in every phase."""
        return await _call(exp.budget_status)

    @mcp.prompt(name="autoexp", title="Autonomous experiment loop")
    def autoexp_prompt(domain: str | None = None) -> str:
        """Instructions for running the experiment loop on this repository, filled from
        autoexp.toml, with what has been tried so far."""
        try:
            return exp.render_prompt(domain)
        except AutoexpError as e:
            raise ValueError(str(e)) from None

    @mcp.resource("autoexp://config", name="config", title="autoexp.toml", mime_type="application/toml")
    def config_resource() -> str:
        """The experiment's configuration."""
        return (exp.root / "autoexp.toml").read_text(encoding="utf-8")

    @mcp.resource("autoexp://results", name="results", title="results.tsv", mime_type="text/tab-separated-values")
    def results_resource() -> str:
        """Every experiment so far: commit, metrics, status, description."""
        path = exp.ledger.tsv
        return path.read_text(encoding="utf-8") if path.exists() else exp.ledger.header

    @mcp.resource("autoexp://last-log", name="last-log", title="Last eval output", mime_type="text/plain")
    def last_log_resource() -> str:
        """The tail of the most recent eval run's output."""
        log_path = exp.last_log()
        return read_tail(log_path, 8000) if log_path else "(no eval has run yet)"

    @mcp.resource("autoexp://report", name="report", title="Progress report", mime_type="text/markdown")
    def report_resource() -> str:
        """A Markdown summary of the run: improvement, counts, kept changes, what paid off."""
        return exp.report_markdown()

    del target, cfg
    return mcp
