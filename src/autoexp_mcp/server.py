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
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from . import __version__
from .errors import AutoexpError, OrderError
from .models import (
    Budget,
    CommitResult,
    Decided,
    Logged,
    Outcome,
    TargetView,
    WriteResult,
    budget,
    decided,
    eval_outcome,
    logged,
)

if TYPE_CHECKING:
    from .loop import Experiment, _Job
    from .oneshot import OneCall, Step

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
budget. Loop: read_target, then repeat `experiment` (the whole edit + description = one
hypothesis): it writes, commits, runs the eval, keeps or reverts and logs, and answers with the
outcome; the first one measures the baseline first. If it answers status "running", call
run_eval for the outcome. Rules: change only the target and only through these tools; never
run git or the eval yourself; follow `next`; never report metrics; NEVER STOP until the budget
line says stop or the human interrupts. The step tools (write_target, commit, run_eval, decide,
log_result) do one step each. Full instructions: the `autoexp` prompt; past results: the
autoexp://results resource."""


EDITS = "exact {old, new} replacements, each old found once"


class Edit(BaseModel):
    old: str
    new: str


class CombineStep(BaseModel):
    tag: str
    status: str  # kept | discarded | conflict | skipped | crash
    gain: float | None = None  # the lane's own gain over its baseline
    reason: str


class Combined(BaseModel):
    into: str
    steps: list[CombineStep]
    best: dict[str, float] | None = None
    commit: str | None = None


def tight_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema without what only costs the agent's context: titles, defaults (`required`
    says what may be left out), `null` alternatives (results leave such fields out, and so may
    arguments), local `$ref`s inlined (each model is used once)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
            node = {**defs[ref[8:]], **{k: v for k, v in node.items() if k != "$ref"}}
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("title", "$defs", "default"):
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: walk(sub) for name, sub in value.items()}
            else:
                out[key] = walk(value)
        alternatives = out.get("anyOf")
        if isinstance(alternatives, list) and {"type": "null"} in alternatives:
            rest = [a for a in alternatives if a != {"type": "null"}]
            if len(rest) == 1:
                del out["anyOf"]
                out = {**rest[0], **out}
        return out

    return dict(walk(schema))


def _tight_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool of a tools/list answer (wire JSON) with tight schemas. An output schema keeps the
    fields and their types and drops `required`: clients read it, not the agent, and a result
    leaves out every field that does not apply."""
    out = dict(tool)
    if isinstance(tool.get("inputSchema"), dict):
        out["inputSchema"] = tight_schema(tool["inputSchema"])
    if isinstance(tool.get("outputSchema"), dict):
        out["outputSchema"] = {k: v for k, v in tight_schema(tool["outputSchema"]).items() if k != "required"}
    return out


def _wire(result: BaseModel) -> CallToolResult:
    """A tool result: the structured content without empty fields, and the same JSON, compact,
    as the text (clients that show only one of them see everything)."""
    data = result.model_dump(mode="json", exclude_none=True)
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


class Opener:
    """The Experiment a server drives, opened once, on first need or by `start()` in the
    background. A failed open (a dirty tree, another server on the repository) is raised to
    every caller and tried again by the next one, so fixing the cause needs no restart."""

    def __init__(self, open_experiment: Callable[[], Experiment]) -> None:
        self._open = open_experiment
        self._exp: Experiment | None = None
        self._one: OneCall | None = None
        self.error: AutoexpError | None = None
        self.tried = False  # an open was attempted (by a call, `start` or `settle`)
        self._started = False
        self._closed = False
        self._lock = threading.Lock()

    @classmethod
    def of(cls, exp: Experiment) -> Opener:
        opener = cls(lambda: exp)
        opener._exp = exp
        opener._one = opener._attach(exp)
        return opener

    @staticmethod
    def _attach(exp: Experiment) -> OneCall:
        """The one-call driver of `exp`; it finishes a one-call run a stopped server left."""
        from .oneshot import OneCall

        one = OneCall(exp)
        try:
            one.resume()
        except AutoexpError as e:  # the run stays measured; the next run_eval tries again
            log.error("cannot finish the last experiment: %s", e)
        return one

    def one_call(self) -> OneCall:
        """The one-call driver (blocking: opens the Experiment first if needed)."""
        self.get()
        assert self._one is not None
        return self._one

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
            self._one = self._attach(self._exp)
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


def build_server(
    exp: Experiment | Opener, *, close_on_exit: bool = True, coordinator: bool = False
) -> MCPServer[Opener]:
    """The MCP server. `coordinator` adds the `combine` tool (for an agent that merges lanes),
    which every other agent would only pay for in its context."""
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

    listed: dict[str, Any] = {}  # tool name -> its listing with tight schemas (they never change)

    async def lean_listing(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        # The handshake ends with tools/list: open the repository then, in the background, rather
        # than at start, where the open (mostly importing GitPython) would slow the handshake down
        # by holding the GIL. A tool call that comes first opens it itself.
        result = await call_next(ctx)
        if ctx.method == "tools/list":
            opener.start()
            tools = result.get("tools") if isinstance(result, dict) else None
            if isinstance(tools, list):  # the answer as it goes on the wire
                result["tools"] = [listed.setdefault(t["name"], _tight_tool(t)) for t in tools]
        return result

    async def _call(op: Callable[[Experiment], T], abandon_on_cancel: bool = False) -> T:
        try:
            return await anyio.to_thread.run_sync(lambda: op(opener.get()), abandon_on_cancel=abandon_on_cancel)
        except OrderError as e:
            raise ToolError(f"{e} (next: {e.next_tool})") from None
        except AutoexpError as e:
            raise ToolError(str(e)) from None

    async def _drive(op: Callable[[OneCall], T], abandon_on_cancel: bool = False) -> T:
        return await _call(lambda _: op(opener.one_call()), abandon_on_cancel)

    async def _wait(ctx: Context, job: _Job, deadline: float) -> None:
        """Wait for the run until `deadline` (time.monotonic), reporting progress."""
        cfg = job.exp.cfg
        total = cfg.experiment.timeout * cfg.policy.repeats
        while not job.done.is_set():
            elapsed = job.elapsed()
            await ctx.report_progress(min(elapsed, total), total, f"eval run {job.run} running for {elapsed:.0f}s")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await anyio.to_thread.run_sync(job.done.wait, min(PROGRESS_EVERY_S, remaining), abandon_on_cancel=True)

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
        middleware=[lean_listing],
    )

    @mcp.tool(title="One experiment", annotations=ToolAnnotations(destructive_hint=True))
    @_described
    async def experiment(
        ctx: Context,
        description: Annotated[str, Field(description="the hypothesis, one line")],
        content: Annotated[str, Field(description="the whole new target")] = "",
        edits: Annotated[list[Edit] | None, Field(description=EDITS)] = None,
        notes: Annotated[str, Field(description="what you learned")] = "",
        tokens_used: Annotated[int, Field(ge=0)] = 0,
        cost_usd: Annotated[float | None, Field(ge=0)] = None,
        wait_seconds: float | None = None,
    ) -> Annotated[CallToolResult, Outcome]:
        """Write the target (content or edits), commit, run the eval, keep or revert, log: one
        experiment (the first call measures the baseline first). Status "running": the eval
        outlasted wait_seconds; the server still logs it, run_eval gives the outcome."""
        from .oneshot import Request

        pairs = None if edits is None else [(e.old, e.new) for e in edits]
        if pairs is None and content == "":
            raise ToolError("give `content` (the whole new file, not empty) or `edits` ({old, new} pairs).")
        req = Request(description, content if pairs is None or content else None, pairs, notes, tokens_used, cost_usd)
        started = time.monotonic()

        def go(one: OneCall) -> tuple[Step, float, Outcome | None]:
            # One trip to a worker thread when the eval ends within the first wait (quick evals).
            step = one.begin(req)
            deadline = started + one.exp.wait_limit(wait_seconds)
            ended = step.job.done.wait(max(0.0, min(PROGRESS_EVERY_S, deadline - time.monotonic())))
            return step, deadline, one.result() if ended else None

        for _ in range(2):  # the baseline first (on the first call), then the edit
            step, deadline, out = await _drive(go, abandon_on_cancel=True)
            if out is None:
                await _wait(ctx, step.job, deadline)
                out = await _drive(lambda one: one.result())
            if out is None:
                raise ToolError("the experiment's outcome is not available yet; call run_eval.")
            if not step.baseline or out.status == "running":
                return _wire(out)
            if out.next != "experiment":  # the baseline failed, or took the last of the budget
                return _wire(out.model_copy(update={"reason": f"{out.reason}. Your edit was not tried."}))
        raise ToolError("the baseline was measured twice in one call; call budget_status.")

    @mcp.tool(title="Read target", annotations=ToolAnnotations(read_only_hint=True))
    @_described
    async def read_target() -> Annotated[CallToolResult, TargetView]:
        """The target, the only file you may change. Any phase."""

        def op(one: OneCall) -> TargetView:
            view = one.exp.read_target()
            return view.model_copy(update={"next": one.next_tool(view.next)})

        return _wire(await _drive(op))

    @mcp.tool(title="Write target", annotations=ToolAnnotations(destructive_hint=False))
    @_described
    async def write_target(
        content: Annotated[str, Field(description="the whole new target")] = "",
        edits: Annotated[list[Edit] | None, Field(description=EDITS)] = None,
    ) -> Annotated[CallToolResult, WriteResult]:
        """Step tool: change the target by `content` or `edits`. Next: commit."""
        # `content` is typed plain `str` on purpose: the SDK would otherwise parse a target that
        # happens to be JSON (hparams.json) into a dict before it reaches us.
        pairs = None if edits is None else [(e.old, e.new) for e in edits]
        if pairs is None and content == "":
            raise ToolError("give `content` (the whole new file, not empty) or `edits` ({old, new} pairs).")

        def op(one: OneCall) -> WriteResult:
            result = one.exp.write_target(content if pairs is None or content else None, pairs)
            one.forget()
            return result

        return _wire(await _drive(op))

    @mcp.tool(title="Commit", annotations=ToolAnnotations(destructive_hint=False))
    @_described
    async def commit(
        description: Annotated[str, Field(description="the hypothesis, one line")],
    ) -> Annotated[CallToolResult, CommitResult]:
        """Step tool: commit the edited target. Next: run_eval."""
        return _wire(await _call(lambda exp: exp.commit(description)))

    @mcp.tool(title="Run eval", annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False))
    @_described
    async def run_eval(
        ctx: Context,
        wait_seconds: float | None = None,
    ) -> Annotated[CallToolResult, Outcome]:
        """Run the eval on the commit (first: the untouched tree, the baseline). Status "running":
        call run_eval again to keep waiting on the same run; it stops if this server exits. For
        an `experiment`: its outcome."""

        def view(one: OneCall) -> Outcome:
            return one.result() or eval_outcome(one.exp.eval_view())

        def start(one: OneCall) -> tuple[_Job | None, Outcome | None]:
            # One trip to a worker thread when the eval ends within the first wait (quick evals).
            exp = one.exp
            with exp.lock:
                out = one.settled()
                if out is not None:
                    return None, out
                job = exp.start_eval()
            if job is not None and not job.done.wait(min(PROGRESS_EVERY_S, exp.wait_limit(wait_seconds))):
                return job, None
            return job, view(one)

        started = time.monotonic()
        job, out = await _drive(start, abandon_on_cancel=True)
        if out is None:
            assert job is not None
            await _wait(ctx, job, started + job.exp.wait_limit(wait_seconds))
            out = await _drive(view)
        return _wire(out)

    @mcp.tool(title="Keep or revert", annotations=ToolAnnotations(destructive_hint=True))
    @_described
    async def decide() -> Annotated[CallToolResult, Decided]:
        """Step tool: keep the commit if it beats the incumbent, else revert. Next: log_result."""

        def op(one: OneCall) -> Decided:
            with one.exp.lock:
                one.refuse_step("decide")
                return decided(one.exp.decide())

        return _wire(await _drive(op))

    @mcp.tool(title="Log result", annotations=ToolAnnotations(destructive_hint=False))
    @_described
    async def log_result(
        notes: Annotated[str, Field(description="what you learned")] = "",
        description: str = "",
        tokens_used: Annotated[int, Field(ge=0)] = 0,
        cost_usd: Annotated[float | None, Field(ge=0)] = None,
    ) -> Annotated[CallToolResult, Logged]:
        """Step tool: log the decided experiment, count it in the budget. Next: write_target."""

        def op(one: OneCall) -> Logged:
            with one.exp.lock:
                one.refuse_step("log_result")
                return logged(one.exp.log_result(description or None, notes, tokens_used, cost_usd))

        return _wire(await _drive(op))

    @mcp.tool(title="Budget status", annotations=ToolAnnotations(read_only_hint=True))
    @_described
    async def budget_status() -> Annotated[CallToolResult, Budget]:
        """Budget used and left, stop, phase, best, last outcome, next tool. Any phase."""

        def op(one: OneCall) -> Budget:
            with one.exp.lock:
                b = one.exp.budget_status()
                last = one.last
                line = f"#{last.experiment} {last.status}: {last.reason}" if last is not None else None
                return budget(b, last=line, next_tool=one.next_tool(b.next))

        return _wire(await _drive(op))

    if coordinator:

        @mcp.tool(title="Combine lanes", annotations=ToolAnnotations(destructive_hint=False))
        @_described
        async def combine(ctx: Context, tags: list[str], into: str = "combined") -> Annotated[CallToolResult, Combined]:
            """Merge lanes' best changes into a new lane, each kept only if it still improves."""
            from .combine import combine as combine_lanes

            def op(exp: Experiment) -> Combined:
                if into == exp.cfg.experiment.tag:
                    raise AutoexpError(f"`into` {into} is this server's own experiment: give a new lane name")
                try:
                    c = combine_lanes(exp.root, tags, into)
                except AutoexpError:
                    raise
                except Exception as e:  # git or the file system: still a message the agent can read
                    log.exception("combine failed")
                    raise AutoexpError(
                        f"combine failed: {type(e).__name__}: {e}. Check the lanes (`autoexp-mcp status --all`) "
                        "and try again with another `into`."
                    ) from e
                steps = [CombineStep(tag=x.tag, status=x.status, gain=x.gain, reason=x.reason) for x in c.steps]
                return Combined(into=c.into, steps=steps, best=c.best, commit=(c.best_commit or "")[:12] or None)

            started = time.monotonic()
            async with anyio.create_task_group() as tg:

                async def tick() -> None:  # combine runs an eval per lane: keep the client's wait alive
                    while True:
                        elapsed = time.monotonic() - started
                        await ctx.report_progress(elapsed, None, f"combining {len(tags)} lanes for {elapsed:.0f}s")
                        await anyio.sleep(PROGRESS_EVERY_S)

                tg.start_soon(tick)
                try:
                    out: Combined | ToolError = await _call(op, abandon_on_cancel=True)
                except ToolError as e:  # raised out of the task group it would come wrapped in a group
                    out = e
                finally:
                    tg.cancel_scope.cancel()
            if isinstance(out, ToolError):
                raise out
            return _wire(out)

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
