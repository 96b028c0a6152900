"""Running one experiment's evals: the background job, the repeats with integrity checks
around each run, the drift re-measurement of the incumbent and the hidden hold-out.

Nothing here reads the Experiment: a run gets what it measures as a `Task` (taken under the
lock when the run starts) and reaches the lane only through the few callables an `Evaluator`
is made with, so that an eval can later run somewhere else than this process.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import executors, metrics, policy, runs
from .config import Config, MetricConfig
from .errors import EvalError
from .executors import Executor, JobFacts, LocalExecutor, RunHandle
from .runner import RunOutcome
from .slots import SlotPool
from .state import STATE_DIR, EvalResult, Point, RemoteJob

log = logging.getLogger("autoexp_mcp")

TAIL_BYTES = 1500  # output tail returned to the agent: enough to see an error, small for the context


class JobOwner(Protocol):
    """What a waiting caller reads from the job's owner (server.py: the timeout and the wait)."""

    @property
    def cfg(self) -> Config: ...

    def wait_limit(self, wait_seconds: float | None) -> float: ...


class Job:
    """One experiment's eval run(s) in a background thread: `body` measures, `finish` records
    the result (skipped when the job was cancelled)."""

    def __init__(
        self,
        exp: JobOwner,
        run: int,
        body: Callable[[Job], EvalResult],
        finish: Callable[[Job, EvalResult], None],
        run_id: str | None = None,
    ) -> None:
        self.exp = exp
        self.run = run
        self.run_id = run_id or f"{uuid.uuid4().hex[:12]}-{run}"
        self.attach: dict[str, str] | None = None  # a scheduler's job an earlier server started for this run
        self.current: RunHandle | None = None
        self.job_facts: JobFacts | None = None  # the scheduler's job of the last run (slurm, ray)
        self.queue_wait_s: dict[str, float] = {}  # by job id: time in the scheduler's queue
        self.current_hidden = False  # the current run is the hold-out: its output never reaches a tool result
        self.last_tail = ""  # the output tail of the last visible run
        self.repeats_done = 0
        self.slot: str | None = None  # the eval slot of the last run
        self.slot_wait_s = 0.0  # time spent waiting for slots, apart from eval time
        self.waiting = False
        self.started = time.monotonic()
        self.done = threading.Event()
        self.cancelled = False
        self._body = body
        self._finish = finish
        self.thread = threading.Thread(target=self._main, name=f"autoexp-run-{run}", daemon=True)

    def _main(self) -> None:
        try:
            result = self._body(self)
        except Exception as e:  # a bug must not leave the loop stuck in RUNNING
            log.exception("eval run %s failed inside the server", self.run)
            result = EvalResult(status="crash", reason=f"internal error in the server: {e}")
        try:
            if not self.cancelled:
                self._finish(self, result)
        finally:
            self.done.set()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tail(self) -> str:
        proc = self.current
        if proc is None:
            return ""
        if self.current_hidden:
            return self.last_tail + "\n[autoexp: the hold-out check is running; its output is not shown]"
        return proc.tail(TAIL_BYTES)

    def remote_result(self) -> RemoteJob | None:
        """The scheduler's job of the last run, its queue wait summed over the job's runs."""
        f = self.job_facts
        if f is None:
            return None
        self.queue_wait_s[f.job_id] = f.queue_wait_s
        return RemoteJob(
            executor=f.executor, job_id=f.job_id, node=f.node, queue_wait_s=round(sum(self.queue_wait_s.values()), 3)
        )

    def cancel(self) -> None:
        self.cancelled = True
        proc = self.current
        if proc is not None:
            proc.kill()


@dataclass(frozen=True)
class Task:
    """What one job measures, as the persisted state had it when the run started."""

    cfg: Config  # the config of the current stage
    commit: str
    experiment: int
    baseline: bool
    incumbent: Point | None
    index: int  # the experiment's index within its stage (drift_every, the policy's schedule)


def _queued(remote: RemoteJob | None) -> str:
    if remote is None:
        return ""
    where = f" on {remote.node}" if remote.node else ""
    return f" as {remote.executor} job {remote.job_id}{where}, after {remote.queue_wait_s:.1f}s in its queue"


def incumbent_values(
    inc: Point, fresh: dict[str, list[float]] | None, cfg: Config
) -> tuple[dict[str, list[float]], str | None]:
    """What a candidate is compared with, the one rule for the preliminary decision (whether
    the hold-out runs) and the final one: the incumbent's re-measured figures when the drift
    rule says they moved, else its recorded ones; and the note saying which."""
    if not fresh:
        return inc.values, None
    moved, why = policy.drift(
        policy.Measurement(inc.values), policy.Measurement(fresh), cfg.objective, cfg.policy.noise_sigmas
    )
    if moved:
        return fresh, f"incumbent re-measured and updated: {why}"
    return inc.values, f"incumbent re-measured, no drift: {why}"


class Evaluator:
    """Runs a lane's evals. `integrity(commit, before_run)` lists what differs from `commit` but
    the target (called under `lock`; `before_run`: the check before a run, which may rely on the
    commit's own); `restore_target(commit)` puts the target back at its version in `commit` and
    says whether it had to; `hidden()` lists the paths the eval must not see."""

    def __init__(
        self,
        *,
        root: Path,
        iso: runs.Isolation,
        slots: SlotPool,
        lock: threading.RLock,
        integrity: Callable[[str, bool], list[str]],
        restore_target: Callable[[str], bool],
        hidden: Callable[[], list[Path]],
        executor: Executor | None = None,
        submitted: Callable[[str, str, JobFacts | None], None] = lambda label, name, facts: None,
    ) -> None:
        self.root = root
        self.executor: Executor = executor or LocalExecutor()
        # A run goes to a scheduler: persisted by the job's name before it is submitted (facts None)
        # and with its id once submitted, so that a restart follows the job instead of starting another.
        self.submitted = submitted
        self.iso = iso
        self.slots = slots
        self.lock = lock
        self.integrity = integrity
        self.restore_target = restore_target
        self.hidden = hidden
        self.python_dirs: tuple[str, ...] = ()  # runs.python_dirs of the tracked files, set at open

    def execute(self, job: Job, task: Task) -> EvalResult:
        """The candidate's runs, the incumbent's drift runs when due, and the hold-out."""
        try:
            return self._execute(job, task)
        finally:
            ref = job.attach
            if ref is not None:  # an earlier server's job this run did not get to: stop it
                job.attach = None
                job_id = ref.get("job_id") or self.executor.find(ref["name"])
                if job_id is not None:
                    self.executor.cancel(job_id)

    def _execute(self, job: Job, task: Task) -> EvalResult:
        cfg, commit, inc, baseline, index = task.cfg, task.commit, task.incumbent, task.baseline, task.index
        # After an interrupted drift run the target may still hold the incumbent's version.
        self.restore_target(commit)
        measure = functools.partial(
            self._measure,
            job,
            task,
            argv=cfg.experiment.argv,
            repeats=cfg.policy.repeats,
            metric_cfgs=cfg.metric,
            timeout=cfg.experiment.timeout,
        )
        drift_values: dict[str, list[float]] | None = None
        every = cfg.policy.drift_every
        if not baseline and inc is not None and every and index > 0 and index % every == 0:
            self.restore_target(inc.commit)
            try:
                again = measure(label=f"{job.run}.drift", target_from=inc.commit)
            finally:
                self.restore_target(commit)
            if again.status == "done":
                drift_values = again.values
        result = measure(label=str(job.run))
        if result.status != "done":
            return result
        result.drift_values = drift_values
        hold = cfg.holdout
        if hold is None:
            return result
        if not baseline:
            assert inc is not None
            incumbent = policy.Measurement(incumbent_values(inc, drift_values, cfg)[0])
            prelim = policy.decide(policy.Measurement(result.values), incumbent, cfg, experiment_index=index)
            if prelim.status != "keep":
                return result
        # The hold-out runs only on a candidate about to be kept (and on the baseline, to know
        # the incumbent's figure). Its output and figures never reach the agent.
        held = self._measure(
            job,
            task,
            argv=hold.argv,
            label=f"{job.run}.holdout",
            repeats=1,
            metric_cfgs=[cfg.objective],
            timeout=hold.timeout or cfg.experiment.timeout,
            holdout=True,
        )
        value = held.metrics.get(cfg.objective.name) if held.status == "done" else None
        result.holdout = value
        if not baseline:
            assert inc is not None
            gate = policy.holdout_gate(
                math.nan if value is None else value,
                math.nan if inc.holdout is None else inc.holdout,
                cfg.objective,
                hold.tolerance,
            )
            result.holdout_failed = gate is not None
        return result

    def _measure(
        self,
        job: Job,
        task: Task,
        *,
        argv: Sequence[str],
        label: str,
        repeats: int,
        metric_cfgs: Sequence[MetricConfig],
        timeout: float,
        target_from: str | None = None,
        holdout: bool = False,
    ) -> EvalResult:
        """Run `argv` `repeats` times with integrity checks around each run; extract metrics
        from what the server received. The target must still hold its version in
        `target_from` (default the task's commit) afterwards."""
        commit = task.commit
        values: dict[str, list[float]] = {m.name: [] for m in metric_cfgs}
        elapsed = 0.0
        log_rel = ""
        truncated = False
        rc: int | None = None
        for k in range(repeats):
            if job.cancelled:
                return EvalResult(status="crash", reason="cancelled")
            with self.lock:
                bad = self.integrity(commit, True)
            if bad:
                return EvalResult(status="crash", reason="harness changed before the run: " + ", ".join(bad[:10]))
            name = f"{label}.log" if repeats == 1 else f"{label}-{k + 1}.log"
            log_rel = f"{STATE_DIR}/runs/{name}"
            try:
                out, ex = self._run_once(job, task, argv, name, k, timeout, metric_cfgs, holdout)
            except (EvalError, OSError) as e:
                return EvalResult(status="crash", reason=str(e), log=log_rel)
            elapsed += out.elapsed_s
            truncated = truncated or out.truncated
            rc = out.returncode
            run_facts = dict(
                elapsed_s=round(elapsed, 3),
                log=log_rel,
                log_truncated=truncated,
                returncode=rc,
                tail="" if holdout else job.last_tail,
                remote=job.remote_result(),
            )

            def failed(status: str, reason: str, facts: dict[str, Any] = run_facts) -> EvalResult:
                return EvalResult.model_validate({"status": status, "reason": reason, **facts})

            with self.lock:
                bad = self.integrity(commit, False)
                if self.iso.active:
                    left = runs.remove_packages_left(self.root, task.cfg)
                    bad += [
                        f"{p} (Python code left in a writable dir, which a later run would import; removed)"
                        for p in left
                    ]
                if self.restore_target(target_from or commit):
                    bad.append(f"{task.cfg.experiment.target} (the eval rewrote the target; restored)")
            if bad:
                return failed("crash", "harness changed during the run: " + ", ".join(bad[:10]))
            if out.status == "timeout":
                return failed("timeout", f"the eval ran past the timeout of {timeout:g}s and was killed")
            if out.status == "crash":
                return failed("crash", out.error or "the eval " + runs.describe_exit(out.returncode, self.iso.active))
            if not ex.ok:
                return failed("crash", "no usable metric: " + ex.summary())
            for name_, v in ex.values.items():
                values[name_].append(v)
            job.repeats_done = k + 1
        meas = policy.Measurement(values)
        return EvalResult(
            status="done",
            metrics=dict(meas.means()),
            values=values,
            std=meas.stds() if repeats > 1 else {},
            elapsed_s=round(elapsed, 3),
            log=log_rel,
            log_truncated=truncated,
            returncode=rc,
            tail="" if holdout else job.last_tail,
            reason=f"measured in {elapsed:.1f}s"
            + (f" over {repeats} runs" if repeats > 1 else "")
            + (f" (after {job.slot_wait_s:.1f}s waiting for an eval slot)" if job.slot_wait_s >= 0.1 else "")
            + _queued(job.remote_result()),
            slot=job.slot,
            slot_wait_s=job.slot_wait_s,
            remote=job.remote_result(),
        )

    def _run_once(
        self,
        job: Job,
        task: Task,
        argv: Sequence[str],
        log_name: str,
        repeat: int,
        timeout: float,
        metric_cfgs: Sequence[MetricConfig],
        holdout: bool,
    ) -> tuple[RunOutcome, metrics.Extraction]:
        with self._slot(job) as slot_env:
            plan = runs.RunPlan(
                root=self.root,
                cfg=task.cfg,
                iso=self.iso,
                argv=argv,
                log_rel=f"{STATE_DIR}/runs/{log_name}",
                env=runs.eval_env(
                    task.cfg,
                    run=job.run,
                    repeat=repeat,
                    experiment=task.experiment,
                    commit=task.commit,
                )
                | slot_env,
                timeout=timeout,
                run_id=job.run_id,
                metric_cfgs=metric_cfgs,
                git_dirs=self.hidden(),
                holdout=holdout,
                python_dirs=self.python_dirs,
            )
            try:
                proc, name = self._start_or_attach(job, plan, log_name, task.commit)
                job.current = proc
                job.current_hidden = holdout
                job.job_facts = executors.facts(proc)
                if job.job_facts is not None:
                    self.submitted(log_name, name, job.job_facts)
                proc.wait()
                job.job_facts = executors.facts(proc)
                out = proc.outcome
                assert out is not None
                if not holdout:
                    job.last_tail = proc.tail(TAIL_BYTES)
                return out, plan.extract(out)
            finally:
                plan.close()

    @contextlib.contextmanager
    def _slot(self, job: Job) -> Iterator[dict[str, str]]:
        """This machine's eval slot for a local run, held while it runs (its environment: the
        device it gets); none for a scheduler's job, which the scheduler places."""
        if self.executor.name != "local":
            yield {}
            return
        job.waiting = True
        try:
            with self.slots.hold(lambda: job.cancelled) as slot:
                job.waiting = False
                job.slot, job.slot_wait_s = slot.name, round(job.slot_wait_s + slot.waited_s, 3)
                yield slot.env
        finally:
            job.waiting = False

    def _start_or_attach(self, job: Job, plan: runs.RunPlan, label: str, commit: str) -> tuple[RunHandle, str]:
        """The run labelled `label`: the scheduler's job an earlier server submitted for it, if
        the scheduler knows it, else a new one (its name persisted before it is submitted)."""
        ref = job.attach
        if ref is not None and ref.get("label") == label:
            job.attach = None
            job_id = ref.get("job_id") or self.executor.find(ref["name"])
            if job_id is not None:
                return self.executor.attach(plan, job_id, ref["name"]), ref["name"]
        name = executors.job_name(job.run_id, label)
        if self.executor.name != "local":
            self.submitted(label, name, None)
        return self.executor.start(plan, name, commit), name
