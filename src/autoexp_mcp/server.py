"""The MCP edge: thin tool wrappers around `loop.Experiment`, the prompt, the resources.

Each tool runs the Experiment's blocking method in a worker thread and turns every
`AutoexpError` into a `ToolError`, the only exception whose text reaches the agent.

The server answers the MCP handshake before it touches the repository: `Opener` opens the
Experiment in the background once the client has listed the tools (importing GitPython and
reading the state cost more than the whole handshake), and a tool call that comes first
opens it itself.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, ToolAnnotations
from pydantic import BaseModel, Field

from . import __version__
from .errors import AutoexpError, OrderError
from .models import BudgetStatus, CommitResult, DecideResult, EvalView, LogResult, TargetView, WriteResult

if TYPE_CHECKING:
    from .loop import Experiment, _Job

log = logging.getLogger("autoexp_mcp")

PROGRESS_EVERY_S = 2.0  # how often run_eval reports progress while it waits
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _described(fn: F) -> F:
    """Make a docstring the description a client shows: no source indentation, and each
    paragraph on one line (clients print descriptions as they are, or re-wrap them)."""
    text = inspect.cleandoc(fn.__doc__ or "")
    fn.__doc__ = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
    return fn


INSTRUCTIONS = """\
autoexp runs a guarded experiment loop on ONE target file of a git repository. The server
measures the metric, keeps or reverts each change with git, logs results.tsv and enforces the
budget. Loop: run_eval once on the untouched tree (the baseline) -> decide -> log_result; then
repeat: read_target -> write_target (one hypothesis) -> commit (description = hypothesis) ->
run_eval (call again while status is "running") -> decide -> log_result. Rules: change only the
target and only through write_target; never edit other files, never run git or the eval
yourself; follow `next` in every result; never report metrics (the server reads them); NEVER
STOP until budget_status says stop: true or the human interrupts. The full instructions are the
`autoexp` prompt; past results are the autoexp://results resource."""


class Edit(BaseModel):
    old: str = Field(description="exact text in the target; must occur exactly once")
    new: str = Field(description="replacement text")


class Opener:
    """The Experiment a server drives, opened once, on first need or by `start()` in the
    background. A failed open (a dirty tree, another server on the repository) is raised to
    every caller and tried again by the next one, so fixing the cause needs no restart."""

    def __init__(self, open_experiment: Callable[[], Experiment]) -> None:
        self._open = open_experiment
        self._exp: Experiment | None = None
        self.error: AutoexpError | None = None
        self.tried = False  # an open was attempted (by a call, `start` or `settle`)
        self._started = False
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def of(cls, exp: Experiment) -> Opener:
        opener = cls(lambda: exp)
        opener._exp = exp
        return opener

    @property
    def experiment(self) -> Experiment | None:
        return self._exp

    def get(self) -> Experiment:
        """The open Experiment (blocking: call it from a worker thread)."""
        with self._lock:
            if self._exp is not None:
                return self._exp
            if self._closed:
                raise AutoexpError("the server is shutting down")
            self.tried = True
            try:
                self._exp = self._open()
            except AutoexpError as e:
                self.error = e
                log.error("cannot open the experiment: %s", e)
                raise
            except Exception as e:  # a bug or an OS error: still a message the agent can read
                self.error = AutoexpError(f"cannot open the experiment: {type(e).__name__}: {e}")
                log.exception("cannot open the experiment")
                raise self.error from e
            self.error = None
            return self._exp

    def start(self) -> None:
        """Open in a background thread, once (errors are kept in `error` and logged)."""
        if self._started or self._exp is not None:
            return
        self._started = True
        threading.Thread(target=self.settle, name="autoexp-open", daemon=True).start()

    def settle(self) -> None:
        """Open now unless an open was already attempted; errors are kept in `error`."""
        if not self.tried and self._exp is None:
            with suppress(AutoexpError):
                self.get()

    def close(self) -> None:
        """Stop a running eval and release the repository (waits for an open in progress)."""
        with self._lock:
            self._closed = True
            if self._exp is not None:
                self._exp.close()


def build_server(exp: Experiment | Opener, *, close_on_exit: bool = True) -> MCPServer[Opener]:
    """An MCP server driving `exp` (an open Experiment, or an Opener that opens one when the
    server starts). With `close_on_exit`, server shutdown stops a running eval."""
    opener = exp if isinstance(exp, Opener) else Opener.of(exp)

    @asynccontextmanager
    async def lifespan(_: MCPServer[Opener]) -> AsyncIterator[Opener]:
        try:
            yield opener
        finally:
            with anyio.CancelScope(shield=True):  # also when the session ends by cancellation
                # A client that left before listing the tools: still check the repository (and
                # report what is wrong with it), as a server that opens it at start would.
                await anyio.to_thread.run_sync(opener.settle)
                if close_on_exit:
                    await anyio.to_thread.run_sync(opener.close)

    async def open_after_listing(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        # The handshake ends with tools/list: open the repository then, in the background, rather
        # than at start, where the open (mostly importing GitPython) would slow the handshake down
        # by holding the GIL. A tool call that comes first opens it itself.
        result = await call_next(ctx)
        if ctx.method == "tools/list":
            opener.start()
        return result

    async def _call(op: Callable[[Experiment], T], abandon_on_cancel: bool = False) -> T:
        try:
            return await anyio.to_thread.run_sync(lambda: op(opener.get()), abandon_on_cancel=abandon_on_cancel)
        except OrderError as e:
            raise ToolError(f"{e} (next: {e.next_tool})") from None
        except AutoexpError as e:
            raise ToolError(str(e)) from None

    def _open_or_fail() -> Experiment:
        """For resources (called in a worker thread): the open Experiment, or an error the client sees."""
        try:
            return opener.get()
        except AutoexpError as e:
            raise ResourceError(str(e)) from None

    mcp: MCPServer[Opener] = MCPServer(
        "autoexp",
        title="autoexp: guarded experiment loop",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        middleware=[open_after_listing],
    )

    @mcp.tool(title="Read the target file", annotations=ToolAnnotations(read_only_hint=True))
    @_described
    async def read_target() -> TargetView:
        """Return the current content of the target file (the only file you may change), its
        sha256 and line count. Allowed in every phase."""
        return await _call(lambda exp: exp.read_target())

    @mcp.tool(
        title="Write the target file",
        annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=False),
    )
    @_described
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
        return await _call(lambda exp: exp.write_target(content if pairs is None or content else None, pairs))

    @mcp.tool(title="Commit the experiment", annotations=ToolAnnotations(destructive_hint=False))
    @_described
    async def commit(
        description: Annotated[str, Field(description="the hypothesis this edit tests, one line")],
    ) -> CommitResult:
        """Commit the edited target as one experiment on the experiment branch. The server checks
        first that nothing but the target changed. Next: run_eval."""
        return await _call(lambda exp: exp.commit(description))

    @mcp.tool(title="Run the eval", annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False))
    @_described
    async def run_eval(
        ctx: Context,
        wait_seconds: Annotated[
            float | None, Field(description="longest wait in this call (default from the config, ~45 s)")
        ] = None,
    ) -> EvalView:
        """Run the eval harness on the committed experiment (or, first of all, on the untouched
        tree: the baseline) and read the metrics from its output. Waits at most `wait_seconds`;
        if the eval is still going it returns status "running": call run_eval again to keep
        waiting on the same run. It stops if this server exits (as with a client that starts one
        server per call). Next: decide."""
        started = anyio.current_time()

        def start(e: Experiment) -> tuple[Experiment, _Job | None, EvalView | None]:
            # One trip to a worker thread when the eval ends within the first wait (quick evals).
            job = e.start_eval()
            if job is not None and not job.done.wait(min(PROGRESS_EVERY_S, e.wait_limit(wait_seconds))):
                return e, job, None
            return e, job, e.eval_view()

        exp, job, view = await _call(start, abandon_on_cancel=True)
        if view is not None:
            return view
        assert job is not None
        deadline = started + exp.wait_limit(wait_seconds)
        total = exp.cfg.experiment.timeout * exp.cfg.policy.repeats
        while not job.done.is_set():
            elapsed = job.elapsed()
            await ctx.report_progress(min(elapsed, total), total, f"eval run {job.run} running for {elapsed:.0f}s")
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            await anyio.to_thread.run_sync(job.done.wait, min(PROGRESS_EVERY_S, remaining), abandon_on_cancel=True)
        return await _call(lambda e: e.eval_view())

    @mcp.tool(title="Keep or revert", annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False))
    @_described
    async def decide() -> DecideResult:
        """Apply the keep/revert rule to the measured result: keep the commit if it beats the
        incumbent, otherwise reset the branch to the incumbent (also on crash or timeout).
        Returns the rule, the numbers compared and the margin. Next: log_result."""
        return await _call(lambda exp: exp.decide())

    @mcp.tool(title="Log the result", annotations=ToolAnnotations(destructive_hint=False))
    @_described
    async def log_result(
        notes: Annotated[str, Field(description="what you learned from this experiment")] = "",
        description: Annotated[str, Field(description="replaces the commit description in the log")] = "",
        tokens_used: Annotated[int, Field(ge=0, description="tokens this experiment cost you")] = 0,
        cost_usd: Annotated[float | None, Field(ge=0, description="what this experiment cost, in USD")] = None,
    ) -> LogResult:
        """Append the decided experiment to results.tsv and experiments.jsonl and update the
        budget. Returns the row and the budget status. Next: write_target (or stop when the
        budget says so)."""
        return await _call(lambda exp: exp.log_result(description or None, notes, tokens_used, cost_usd))

    @mcp.tool(title="Budget status", annotations=ToolAnnotations(read_only_hint=True))
    @_described
    async def budget_status() -> BudgetStatus:
        """Experiments used and left, cost, hours, crashes in a row, whether to stop, the phase
        and the next tool. Allowed in every phase."""
        return await _call(lambda exp: exp.budget_status())

    @mcp.prompt(name="autoexp", title="Autonomous experiment loop")
    @_described
    def autoexp_prompt(domain: str | None = None) -> str:
        """Instructions for running the experiment loop on this repository, filled from
        autoexp.toml, with what has been tried so far."""
        # The SDK replaces any other exception's text with "Error rendering prompt autoexp";
        # an MCPError reaches the client as it is, as a JSON-RPC error with this message.
        from .prompting import check_domain

        try:
            check_domain(domain)
        except AutoexpError as e:
            raise MCPError(INVALID_PARAMS, str(e)) from None
        try:
            return opener.get().render_prompt(domain)
        except AutoexpError as e:
            raise MCPError(INTERNAL_ERROR, str(e)) from None

    @mcp.resource("autoexp://config", name="config", title="autoexp.toml", mime_type="application/toml")
    @_described
    def config_resource() -> str:
        """The experiment's configuration."""
        return (_open_or_fail().root / "autoexp.toml").read_text(encoding="utf-8")

    @mcp.resource("autoexp://results", name="results", title="results.tsv", mime_type="text/tab-separated-values")
    @_described
    def results_resource() -> str:
        """Every experiment so far: commit, metrics, status, description."""
        book = _open_or_fail().ledger
        return book.tsv.read_text(encoding="utf-8") if book.tsv.exists() else book.header

    @mcp.resource("autoexp://last-log", name="last-log", title="Last eval output", mime_type="text/plain")
    @_described
    def last_log_resource() -> str:
        """The tail of the most recent eval run's output."""
        from .runner import read_tail  # loaded with the Experiment by now

        log_path = _open_or_fail().last_log()
        return read_tail(log_path, 8000) if log_path else "(no eval has run yet)"

    @mcp.resource("autoexp://report", name="report", title="Progress report", mime_type="text/markdown")
    @_described
    def report_resource() -> str:
        """A Markdown summary of the run: improvement, counts, kept changes, what paid off."""
        return _open_or_fail().report_markdown()

    return mcp
