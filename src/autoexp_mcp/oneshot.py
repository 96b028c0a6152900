"""The one-call experiment: write -> commit -> run -> decide -> log in one tool call, driving a
`loop.Experiment` through its own operations (same guards, phases, ledger and budget).

`OneCall.begin` does everything up to the start of the eval while holding the Experiment's
lock, so no other call interleaves; whatever it refuses leaves nothing behind (an edit that
cannot be committed is taken back). The experiment is marked `auto` in the persisted state:
when its run ends, the run's own thread decides and logs it (`Experiment.on_run_end`) whether
or not a call is waiting, and a restarted server finishes a run its predecessor left measured
or decided. The decision and the row are made by `decide` and `log_result` themselves, under
the lock and checked against the phase, so a racing step call can never log a run twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import guard, ledger
from .errors import AutoexpError, BudgetExhausted, GuardError, OrderError
from .loop import MAX_COST_USD, MAX_DESCRIPTION, MAX_TOKENS, Experiment, _Job
from .models import Outcome, budget_line
from .state import AutoLog, Phase

FAILED = ("crash", "timeout", "interrupted")  # outcomes that carry the output tail
STEP_STARTS = ("write_target", "run_eval")  # what loop.next_tool names when a new experiment may start


@dataclass(frozen=True)
class Request:
    """One `experiment` call's arguments."""

    description: str
    content: str | None = None
    edits: Sequence[tuple[str, str]] | None = None
    notes: str = ""
    tokens_used: int = 0
    cost_usd: float | None = None


@dataclass(frozen=True)
class Step:
    """What `begin` started: a run to wait on (then ask `result`); `baseline` when it measures
    the untouched tree first and the request's own edit still has to follow."""

    job: _Job
    baseline: bool = False


class OneCall:
    """The `experiment` operation on one Experiment, and the server's part when a run ends."""

    def __init__(self, exp: Experiment) -> None:
        self.exp = exp
        self.last: Outcome | None = None  # the outcome of the last one-call experiment logged
        self.in_use = False  # the agent drives the loop with `experiment`: `next` says so
        exp.on_run_end = self._run_ended

    # --- the call -----------------------------------------------------------------------------

    def begin(self, req: Request) -> Step:
        """Start the request's experiment (or the baseline it needs first) and return its run."""
        exp = self.exp
        with exp.lock:
            self.in_use = True
            st = exp.state
            p = st.pending
            if st.phase == Phase.RUNNING and p is not None and p.auto is not None and p.baseline:
                job = exp.start_eval()  # the baseline a previous call started: wait on it
                assert job is not None
                return Step(job, baseline=True)
            baseline = st.phase == Phase.IDLE and st.incumbent is None
            exp.evaluator.executor.ready()  # a scheduler that is down: nothing is written or committed
            if not baseline and st.phase not in (Phase.IDLE, Phase.EDITED):
                nxt = exp.next_tool()
                raise OrderError(
                    f"experiment is not allowed in phase '{st.phase}': experiment #{p.experiment if p else '?'} "
                    f"is under way. Call {nxt} next.",
                    nxt,
                )
            view = exp.budget()
            if view.stop:
                raise BudgetExhausted(f"the budget is spent: {view.reason}. No further experiment may start.")
            content = self._checked(req, baseline)
            self.last = None
            if baseline:
                job = exp.start_eval(ready=True)
                assert job is not None and st.pending is not None
                st.pending.auto = AutoLog()  # saved when the run's result is
                return Step(job, baseline=True)
            return Step(self._commit_and_start(req, content))

    def _commit_and_start(self, req: Request, content: str) -> _Job:
        exp = self.exp
        st = exp.state
        exp.write_target(content=content)
        assert st.pending is not None
        st.pending.auto = AutoLog(notes=req.notes, tokens_used=req.tokens_used, cost_usd=req.cost_usd)
        try:
            exp.commit(req.description, run_next=True)  # saved with the run's start, next
        except AutoexpError as e:
            exp.abandon_edit()
            raise GuardError(f"{e} Nothing was committed: the target is back at the incumbent's version.") from None
        job = exp.start_eval(ready=True)  # begin() asked the executor, under the same lock
        assert job is not None
        return job

    def _checked(self, req: Request, baseline: bool) -> str:
        """Everything that could refuse the request later, checked before anything changes:
        the description, the spend figures and the edit. Returns the new target text."""
        exp = self.exp
        if not ledger.clean_text(req.description, MAX_DESCRIPTION):
            raise GuardError("description is empty: state the hypothesis this edit tests, in one line.")
        tokens, cost = req.tokens_used, req.cost_usd
        if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens <= MAX_TOKENS:
            raise GuardError(f"tokens_used must be a whole number from 0 to {MAX_TOKENS:.0e} (got {tokens!r}).")
        if cost is not None and not (math.isfinite(cost) and 0 <= cost <= MAX_COST_USD):
            raise GuardError(f"cost_usd must be a finite number of dollars, 0 to {MAX_COST_USD:.0e} (got {cost!r}).")
        if (req.content is None) == (req.edits is None):
            raise GuardError("give exactly one of `content` (the whole new file) or `edits` ({old, new} pairs).")
        current = exp.read_target().content
        new = req.content if req.content is not None else guard.apply_edits(current, req.edits or [])
        data = guard.check_content(new, exp.cfg.experiment.max_target_bytes)
        st = exp.state
        base = exp.git.head() if baseline or st.incumbent is None else st.incumbent.commit
        if data == exp._text_at(base).encode("utf-8"):  # cached: no git process per call
            raise GuardError(
                "the edit leaves the target exactly as the incumbent has it: there is nothing to try. "
                "read_target shows the current version."
            )
        return new

    # --- the outcome ----------------------------------------------------------------------------

    def result(self) -> Outcome | None:
        """The outcome of the one-call experiment under way or just logged (finishing it if its
        run ended and nobody decided yet); None when the loop is not in one."""
        exp = self.exp
        with exp.lock:
            st = exp.state
            p = st.pending
            if p is None or p.auto is None:
                return self.last if st.phase == Phase.IDLE else None
            if st.phase == Phase.RUNNING:
                return self._running()
            if st.phase in (Phase.EVALUATED, Phase.DECIDED):
                self._finish()
                return self.last
            return None  # edited or committed: not started (a restart came in between)

    def settled(self) -> Outcome | None:
        """The outcome when nothing is running: the last one logged, or one finished now."""
        with self.exp.lock:
            return None if self.exp.state.phase == Phase.RUNNING else self.result()

    def _running(self) -> Outcome:
        v = self.exp.eval_view()
        if v.baseline:
            reason = (
                f"measuring the baseline (the untouched target) first: running for {v.elapsed_s:.0f}s. Your edit is "
                "not applied yet: call experiment again with it; it waits for the baseline, then runs the edit"
            )
            nxt = "experiment"
        else:
            reason = (
                f"still running after {v.elapsed_s:.0f}s (timeout {self.exp.cfg.experiment.timeout:g}s); the server "
                "decides and logs it when it ends. Call run_eval to wait for the outcome. It stops if this server exits"
            )
            nxt = "run_eval"
        return Outcome(
            status="running",
            experiment=v.experiment,
            commit=v.commit,
            run=v.run,
            baseline=v.baseline or None,
            elapsed_s=v.elapsed_s,
            reason=reason,
            tail=v.tail or None,
            next=nxt,
        )

    def next_tool(self, tool: str) -> str:
        """`next` as the one-call loop says it: `experiment` where a new experiment may start."""
        if self.in_use and tool in STEP_STARTS and self.exp.state.phase == Phase.IDLE:
            return "experiment"
        return tool

    def refuse_step(self, tool: str) -> None:
        """A step tool must not decide or log what the server decides and logs itself."""
        p = self.exp.state.pending
        if p is not None and p.auto is not None:
            raise OrderError(
                f"{tool}: experiment #{p.experiment} came from `experiment`, so the server decides and logs it "
                "itself. Call run_eval for its outcome.",
                "run_eval",
            )

    def forget(self) -> None:
        """A step tool starts the next experiment: the last outcome is no longer the news."""
        with self.exp.lock:
            self.in_use = False
            self.last = None

    # --- the server's part: decide and log -------------------------------------------------------

    def resume(self) -> None:
        """Finish a one-call run a stopped server left measured or decided."""
        with self.exp.lock:
            st = self.exp.state
            p = st.pending
            if p is not None and p.auto is not None and st.phase in (Phase.EVALUATED, Phase.DECIDED):
                self._finish()

    def _run_ended(self, job: _Job) -> None:
        with self.exp.lock:
            st = self.exp.state
            p = st.pending
            if p is not None and p.auto is not None and p.run == job.run and st.phase == Phase.EVALUATED:
                self._finish()

    def _finish(self) -> None:
        """Decide (unless decided) and log the pending one-call run; keep its outcome. Lock held."""
        exp = self.exp
        st = exp.state
        if st.phase == Phase.EVALUATED:
            exp.decide()
        p = st.pending
        assert p is not None and p.auto is not None and p.decision is not None and p.result is not None
        d, r, auto = p.decision, p.result, p.auto
        new_best = d.status == "keep" and st.best is not None and st.best.experiment == p.experiment
        logged = exp.log_result(None, auto.notes, auto.tokens_used, auto.cost_usd)
        metrics = {k: v for k, v in r.metrics.items() if v is not None}
        self.in_use = True
        self.last = Outcome(
            status=d.status,
            experiment=p.experiment,
            commit=(p.commit or "")[:7],
            baseline=p.baseline or None,
            metrics=metrics or None,
            std=r.std or None,
            margin=d.margin,
            reason=d.reason,
            new_best=new_best or None,
            tail=(r.tail or None) if d.status in FAILED else None,
            budget=budget_line(logged.budget),
            next=self.next_tool(logged.next),
        )
