"""The built-in agent's loop: a plain MCP client that follows the server's `next`.

It calls the same seven tools any agent calls and goes through the same guards: it writes
only through write_target, never touches git or the eval, and stops when the server's
budget says stop. What it reads from tool results is in `reading`, the one place that knows
their shape.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..errors import AutoexpError
from .numbers import TargetFormatError, find_numbers, format_of, replace
from .search import Move, Search
from .strategy import Strategy

CALL_TIMEOUT_S = 600.0  # one tool call; run_eval itself returns "running" well before this
MAX_REFUSALS_IN_A_ROW = 3  # refusals with no experiment between them: the cause will not go away
NOTES_CHARS = 300
MAX_PROPOSALS = 200  # moves drawn for one experiment before giving up on finding an untried version


class AgentError(AutoexpError):
    """The agent cannot go on: what the server said, and what to do."""


class Exhausted(Exception):
    """The search has nothing new to try from the incumbent: the agent stops before the budget."""


class Refused(Exception):
    """A tool call the server refused (its error text, which says why)."""


@dataclass(frozen=True)
class Reply:
    """What the agent reads from a tool result."""

    status: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    next: str | None = None
    stop: bool = False
    reason: str = ""
    experiments_left: int | None = None
    path: str | None = None  # read_target
    content: str | None = None  # read_target


def reading(structured: dict[str, Any] | None) -> Reply:
    """The fields the agent uses, from a tool's structured content (budget fields may sit in a
    nested `budget`, as log_result returns them)."""
    top = structured or {}
    nested = top.get("budget")
    budget: dict[str, Any] = nested if isinstance(nested, dict) else {}

    def get(name: str, default: Any = None) -> Any:
        return top[name] if name in top else budget.get(name, default)

    return Reply(
        status=top.get("status"),
        metrics=dict(top.get("metrics") or {}),
        next=get("next"),
        stop=bool(get("stop", False)),
        reason=str(get("reason", "") or ""),
        experiments_left=get("experiments_left"),
        path=top.get("path"),
        content=top.get("content"),
    )


@dataclass
class AgentReport:
    experiments: int = 0  # logged by this agent, the baseline included
    counts: dict[str, int] = field(default_factory=dict)  # decision -> how many
    refusals: int = 0
    best: dict[str, float | None] | None = None  # the metrics of the last kept experiment
    stopped: str = ""


def fmt_metrics(metrics: dict[str, float | None]) -> str:
    return " ".join(f"{k}={v:.6g}" if isinstance(v, int | float) else f"{k}=—" for k, v in metrics.items())


class Agent:
    def __init__(
        self,
        client: Any,
        strategy: Strategy,
        *,
        max_experiments: int | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.c = client
        self.strategy = strategy
        self.search = Search(strategy)
        self.max_experiments = max_experiments
        self.echo = echo
        self.report = AgentReport()
        self.incumbent: tuple[str, str] | None = None  # (path, text) of the incumbent, read in phase idle
        self._in_a_row = 0
        self.tried: dict[str, str] = {}  # versions of the target measured, and their outcome
        self._writing = ""

    async def call(self, tool: str, **arguments: Any) -> Reply:
        with anyio.fail_after(CALL_TIMEOUT_S):
            res = await self.c.call_tool(tool, arguments)
        if res.is_error:
            text = " ".join(getattr(part, "text", "") for part in res.content).strip()
            raise Refused(text or f"{tool} failed without a message")
        return reading(res.structured_content)

    async def run(self) -> AgentReport:
        """Experiments until the budget (or `max_experiments`) says stop."""
        while True:
            try:
                st = await self.call("budget_status")
            except Refused as e:  # allowed in every phase: the server cannot open the repository
                raise AgentError(f"the server cannot run the experiment: {e}") from None
            if st.stop or st.next == "stop":
                self.report.stopped = st.reason or "the budget is spent"
                return self.report
            if self.max_experiments is not None and self.report.experiments >= self.max_experiments:
                self.report.stopped = f"{self.max_experiments} experiments done (--experiments)"
                return self.report
            try:
                await self._step(st.next)
                self._in_a_row = 0
            except Exhausted as e:
                self.report.stopped = f"nothing left to try: {e}"
                return self.report
            except Refused as e:
                self.report.refusals += 1
                self._in_a_row += 1
                self.echo(f"  refused: {e}")
                if self._in_a_row >= MAX_REFUSALS_IN_A_ROW:
                    raise AgentError(
                        f"the server refused {self._in_a_row} times in a row; the last refusal: {e} "
                        "Fix what it names, then start the agent again (it continues where the server is)."
                    ) from None

    async def _step(self, nxt: str | None) -> None:
        # "experiment" (the one-call tool) starts with a write too: this agent takes the steps.
        if nxt in ("write_target", "experiment") or (nxt == "commit" and self.incumbent is not None):
            await self._experiment(reread=nxt != "commit")
        elif nxt == "commit":  # a change written before this agent started: finish it as it is
            await self.call("commit", description="a change found written when the agent started")
            await self._finish("run_eval", None, "a change found written when the agent started")
        elif nxt in ("run_eval", "decide", "log_result"):
            await self._finish(nxt, None, "baseline" if self.incumbent is None else "resumed experiment")
        else:
            raise AgentError(f"the server asks for {nxt!r} next, which this agent does not know how to do")

    async def _experiment(self, *, reread: bool) -> None:
        if reread or self.incumbent is None:
            view = await self.call("read_target")
            if view.content is None:
                raise AgentError("read_target returned no content; this agent needs the target's text")
            self.incumbent = (view.path or "", view.content)
        path, text = self.incumbent
        try:
            numbers = find_numbers(text, format_of(path))
        except TargetFormatError as e:
            raise AgentError(f"the target {path} cannot be read: {e}") from None
        by_key = {n.key: n for n in numbers}
        for _ in range(MAX_PROPOSALS):
            if not any(self.strategy.wants(n.key) for n in numbers):
                raise AgentError(
                    f"no number in {path} is one the strategy may move (keys {list(self.strategy.keys) or 'all'}, "
                    f"skip {list(self.strategy.skip)}). Numbers found: {', '.join(n.key for n in numbers) or 'none'}."
                )
            move = self.search.propose(numbers)
            if move is None:
                raise Exhausted(f"no value of {path} can move any more (every step is below min_step)")
            new_text = replace(text, [(by_key[ch.key], ch.new) for ch in move.changes])
            if new_text not in self.tried:
                break
            # Measured before and not the incumbent now: no better than it (a crash still marks a limit).
            seen = self.tried[new_text]
            self.search.feedback(move, seen if seen in ("crash", "timeout") else "discard", measured=False)
        else:
            raise Exhausted(f"every move from the incumbent {path} leads to a version tried before")
        description = move.describe()
        try:
            await self.call("write_target", content=new_text)
            await self.call("commit", description=description)
        except Refused:
            self.search.feedback(move, "refused")
            raise
        self._writing = new_text
        await self._finish("run_eval", move, description)

    async def _finish(self, start: str, move: Move | None, description: str) -> None:
        """run_eval (again while running) → decide → log_result, from `start` on."""
        decision = Reply(status=None)
        if start == "run_eval":
            ev = await self.call("run_eval")
            while ev.status == "running":
                ev = await self.call("run_eval")
        if start in ("run_eval", "decide"):
            decision = await self.call("decide")
        outcome = decision.status or "logged"
        notes = f"{outcome}: {decision.reason}" if decision.reason else outcome
        await self.call("log_result", notes=notes[:NOTES_CHARS])
        self.incumbent = None  # the server kept or reverted: read the target again
        self.report.experiments += 1
        self.report.counts[outcome] = self.report.counts.get(outcome, 0) + 1
        if outcome == "keep":
            self.report.best = decision.metrics
        if move is not None:
            self.search.feedback(move, outcome)
            self.tried[self._writing] = outcome
        self.echo(f"  #{self.report.experiments:<3} {outcome:<8} {fmt_metrics(decision.metrics)}  {description}")


def serve_params(repo: Path, from_commit: str | None = None) -> Any:
    """`autoexp-mcp serve --repo REPO` of this installation, for the SDK's stdio client, with the
    environment this agent was started with (the key file, PATH for the eval, git identity)."""
    from mcp.client.stdio import StdioServerParameters

    args = ["-m", "autoexp_mcp", "serve", "--repo", str(repo)]
    if from_commit:
        args += ["--from", from_commit]
    return StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ))


async def drive(
    server: Any,
    strategy: Strategy,
    *,
    max_experiments: int | None = None,
    echo: Callable[[str], None] = print,
) -> AgentReport:
    """Run the agent against `server` (StdioServerParameters, or an in-process MCPServer)."""
    from mcp import Client

    failed: AgentError | None = None
    async with Client(server) as c:
        try:
            return await Agent(c, strategy, max_experiments=max_experiments, echo=echo).run()
        except AgentError as e:  # raised outside the client, or it comes wrapped in an exception group
            failed = e
    raise failed
