"""The Experiment: the phase machine, with the seven operations of the loop as plain methods
(no MCP).

Every operation checks the phase, does its work, and persists the new state before it
returns. Git and ledger actions are ordered so that a process killed at any point comes
back consistent (see `_recover`). All methods are thread-safe; the eval itself runs in a
background thread owned by the Experiment, so it outlives any one tool call.

Opening the lane (lock, tag files, branch, state, recovery) is opening.py's; running the
evals (the job, repeats, drift, hold-out) is measure.py's, reached through a small interface;
the target's versions and the integrity of the rest of the tree are tree.py's; what the tools
and the CLI show (the eval, the budget, the prompt) is views.py's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import budget as budgetmod
from . import executors, guard, ledger, measure, opening, policy, preflight, runs, views
from .config import CONFIG_FILE, Config, load_config, with_tag
from .errors import BudgetExhausted, GuardError, OrderError
from .gitops import Git
from .measure import Job
from .models import (
    Best,
    BudgetStatus,
    CommitResult,
    DecideResult,
    EvalView,
    LogResult,
    Row,
    TargetView,
    WriteResult,
)
from .slots import SlotPool
from .state import STATE_DIR, DecisionState, EvalResult, Pending, Phase, Point, save_state
from .tree import Tree, refuse_changes
from .watch import code_config_digest

log = logging.getLogger("autoexp_mcp")

MAX_DESCRIPTION = 500
MAX_NOTES = 2000
MAX_COST_USD = 1e6  # per log_result call: anything larger is a mistake, and sums must stay finite
MAX_TOKENS = 10**12

_NEXT = {
    Phase.EDITED: "commit",
    Phase.COMMITTED: "run_eval",
    Phase.RUNNING: "run_eval",
    Phase.EVALUATED: "decide",
    Phase.DECIDED: "log_result",
}
_ALLOWED = {
    "write_target": (Phase.IDLE, Phase.EDITED),
    "commit": (Phase.EDITED,),
    "run_eval": (Phase.COMMITTED, Phase.RUNNING, Phase.EVALUATED),
    "decide": (Phase.EVALUATED,),
    "log_result": (Phase.DECIDED,),
}


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_Job = Job  # the name server.py and oneshot.py know the running eval by


class Experiment:
    def __init__(
        self,
        repo: Path,
        cfg: Config | None = None,
        *,
        from_commit: str | None = None,
        accept_git_config: bool = False,
        tag: str | None = None,
    ) -> None:
        self.git = Git(Path(repo))
        self.root = self.git.root
        config_path = self.root / CONFIG_FILE
        # The bytes the config was read from: a restart must run with the committed config.
        self._config_bytes = config_path.read_bytes() if cfg is None and config_path.is_file() else None
        self.full_cfg = cfg if cfg is not None else load_config(self.root)
        # A lane's tag is an override (`serve --tag`), never written to the committed config.
        self._tag = tag
        if tag is not None:
            self.full_cfg = with_tag(self.full_cfg, tag)
        self.focus: str | None = None  # a lane's focus line for the prompt (lane.py)
        self.hidden_extra: Callable[[], list[Path]] = list  # more paths the eval must not see (other lanes)
        self.slots = SlotPool.for_repo(self.git, self.full_cfg.resources)
        self.dir = self.root / STATE_DIR
        self.ledger = ledger.Ledger(self.root, self.full_cfg.ledger_metric_names)
        self.dir.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._job: _Job | None = None
        # Called in the run's thread once its result is recorded, before anyone waiting on the
        # run is woken: the one-call `experiment` decides and logs there (oneshot.py).
        self.on_run_end: Callable[[_Job], None] | None = None
        self._lockfile: int | None = opening.acquire_lock(self.dir, self.root)
        # The eval must not see git's own files: the repository's .git (a directory, or a file
        # in a worktree) and the directories it points at.
        # In a lane's worktree its git dir is inside the common one: hiding that hides both.
        dirs = {self.root / ".git", self.git.git_dir, self.git.common_dir}
        self._git_dirs = sorted(d for d in dirs if not any(d != o and d.is_relative_to(o) for o in dirs))
        try:
            self.iso = runs.isolation(self.full_cfg.sandbox)
            self.evaluator = measure.Evaluator(
                root=self.root,
                iso=self.iso,
                slots=self.slots,
                lock=self._lock,
                integrity=lambda commit, before_run: self._integrity(commit, before_run=before_run),
                restore_target=self._target_rewritten,
                hidden=lambda: [*self._git_dirs, *self.hidden_extra()],
                executor=executors.make(self.full_cfg.executor),
                submitted=self._job_submitted,
            )
            opening.check_git_code_config(self.git, self.root, self.full_cfg.experiment.tag, accept_git_config)
            self.git.ensure_excluded()
            opening.switch_tag_files(self.root, self.dir, self.full_cfg.experiment.tag)
            self.state = opening.open_state(self.git, self.full_cfg, self.ledger, from_commit)
            opening.adopt_user_commits(self.git, self.state, self.full_cfg, self._tag, self._save)
            opening.check_config_committed(self.git, self.state, self._config_bytes, self.full_cfg.experiment.branch)
            head = preflight.expected_head(self.state)
            code = preflight.writable_code_error(self.git, self.full_cfg, head)
            if code is not None:
                raise code
            self.evaluator.python_dirs = runs.python_dirs(e.path for e in self.git.tree_entries(head))
            targets = {self.full_cfg.for_stage(i).experiment.target for i in range(max(1, len(self.full_cfg.stage)))}
            self.protected = guard.Protected(
                self.root, self.cfg.experiment.protect, self.dir / "protect.json", exclude=sorted(targets)
            )
            self.protected.load_or_snapshot(under_way=self.state.runs > 0)
            self.tree = Tree(self.git, self.protected, self.state.branch, sealed=self.iso.active)
            self._recover()
            digest = code_config_digest(self.git)
            if self.state.git_code_config != digest:
                self.state.git_code_config = digest
                self._save()
        except BaseException:
            self.close()
            raise

    # --- set-up ---------------------------------------------------------------------

    @property
    def cfg(self) -> Config:
        return self.full_cfg.for_stage(self.state.stage if hasattr(self, "state") else 0)

    def _harness_hash(self, commit: str) -> str:
        return opening.harness_hash(self.git, commit, self.cfg.experiment.target)

    def _baseline_failed(self, reason: str) -> str:
        branch = self.full_cfg.experiment.branch
        return (
            f"the baseline could not be measured ({reason}), so no experiment can be judged. Fix the config or the "
            f"harness (`autoexp-mcp check` runs the eval once and shows what it reads), commit the fix on {branch}, "
            "and start the server again: it then measures the baseline again. If the fix was outside the "
            "repository (a missing package), `git commit --allow-empty -m 'measure the baseline again'` asks for it."
        )

    def _recover(self) -> None:
        """Make git agree with the persisted phase after a restart (or a crash), then finish
        the ledger side: log an interrupted run's row, or complete a logged transition."""
        st = self.state
        p = st.pending
        left = opening.recover(self.git, st, self.cfg.experiment.target, self._save)
        if left == opening.Left.REATTACH:
            assert p is not None and p.remote_run is not None
            if p.remote_run.get("executor") == self.evaluator.executor.name:
                self._reattach(p)
                return
            # The config now names another executor: that job is not ours to follow any more.
            opening.mark_interrupted(self.git, st, p, self._save)
            left = opening.Left.INTERRUPTED
        if left == opening.Left.INTERRUPTED:
            assert p is not None
            spend = (p.auto.tokens_used, p.auto.cost_usd) if p.auto else (0, None)  # what `experiment` was told
            self.log_result(notes="logged by the server when it restarted", tokens_used=spend[0], cost_usd=spend[1])
        elif left == opening.Left.DECIDED:
            rec = opening.logged_record(self.ledger, st)
            if rec is not None:
                assert p is not None
                self._advance_after_log(p, float(rec.cost_usd), int(rec.tokens_used))

    def _forget_remote_run(self) -> None:
        """This server cancelled its scheduler's job as it stops: the next one finds the run
        interrupted, as a local one, rather than a job to follow."""
        with self._lock:
            p = self.state.pending
            if self.state.phase == Phase.RUNNING and p is not None and p.remote_run is not None:
                p.remote_run = None
                self._save()

    def _reattach(self, p: Pending) -> None:
        """Follow the scheduler's job of the run an earlier server started, to its end: the run
        is measured once, as if the server had never stopped."""
        assert p.run is not None and p.remote_run is not None
        job = _Job(self, p.run, self._execute, self._job_ended, run_id=p.run_id)
        job.attach = dict(p.remote_run)
        self._job = job
        log.warning("run %s: following %s job %s again", p.run, p.remote_run["executor"], p.remote_run["name"])
        job.thread.start()

    def _expected_head(self) -> str:
        return preflight.expected_head(self.state)

    def _job_submitted(self, label: str, name: str, facts: executors.JobFacts | None) -> None:
        """A run goes to a scheduler: its job's name is persisted before it is submitted, and its
        id once it is, so a restarted server follows the job to its end instead of starting a
        second one (and finds it by name if it was killed in between)."""
        with self._lock:
            p = self.state.pending
            if p is not None and self.state.phase == Phase.RUNNING:
                p.remote_run = {"label": label, "executor": self.evaluator.executor.name, "name": name}
                if facts is not None:
                    p.remote_run["job_id"] = facts.job_id
                self._save()

    def _save(self, durable: bool = True) -> None:
        save_state(self.root, self.state, durable)

    def close(self) -> None:
        """Stop a running eval (the whole process group) and release the lock."""
        job = self._job
        if job is not None and not job.done.is_set():
            job.cancel()
            job.done.wait(5)
            self._forget_remote_run()
        fd = getattr(self, "_lockfile", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            self._lockfile = None

    # --- helpers --------------------------------------------------------------------

    @property
    def lock(self) -> threading.RLock:
        """Held by every operation; hold it to make several one atomic (oneshot.py)."""
        return self._lock

    def abandon_edit(self) -> None:
        """Forget an uncommitted edit: the target back at the incumbent's version, phase IDLE.
        What a refused one-call experiment leaves behind (nothing)."""
        with self._lock:
            st = self.state
            if st.phase != Phase.EDITED or st.incumbent is None:
                return
            self._put_target(st.incumbent.commit)
            st.pending = None
            st.phase = Phase.IDLE
            self._save(durable=False)

    def next_tool(self) -> str:
        st = self.state
        if st.pending is not None and st.pending.auto is not None and st.phase in (Phase.EVALUATED, Phase.DECIDED):
            return "run_eval"  # the server decides and logs a one-call experiment itself
        if st.phase in _NEXT:
            return _NEXT[st.phase]
        if self.budget().stop:
            return "stop"
        return "run_eval" if st.incumbent is None else "write_target"

    def _require(self, tool: str) -> None:
        st = self.state
        baseline_pending = st.incumbent is None and st.phase == Phase.IDLE
        if tool == "run_eval" and baseline_pending:
            return  # the baseline
        if baseline_pending:
            raise OrderError(
                f"{tool}: the baseline has not been measured yet. Call run_eval on the untouched target first.",
                "run_eval",
            )
        if st.phase not in _ALLOWED[tool]:
            nxt = self.next_tool()
            raise OrderError(f"{tool} is not allowed in phase '{st.phase}'. Call {nxt} next.", nxt)

    def budget(self) -> budgetmod.BudgetView:
        return budgetmod.view_of(self.state, self.cfg.budget, time.time())

    def _require_budget(self) -> None:
        view = self.budget()
        if view.stop:
            raise BudgetExhausted(f"the budget is spent: {view.reason}. No further experiment may start.")

    def _target_path(self) -> Path:
        return self.tree.target_path(self.cfg.experiment.target)

    def _integrity(
        self, expected_head: str, *, restore: bool = True, seen: list[str] | None = None, before_run: bool = False
    ) -> list[str]:
        """What differs from `expected_head` but the target (tree.py); restored unless `restore`
        is false, and `seen` gets the target when it differs from the commit. `before_run`: the
        check before an eval run, which may rely on a verification since the last run."""
        target = self.cfg.experiment.target
        return self.tree.problems(
            expected_head, target, self.state.harness, restore=restore, seen=seen, before_run=before_run
        )

    def _check_integrity(self, expected_head: str, when: str) -> list[str]:
        """Refuse (after restoring tracked files) if anything but the target changed; returns
        the changed tracked paths that are allowed (the target, when it changed)."""
        allowed: list[str] = []
        refuse_changes(self._integrity(expected_head, seen=allowed), when)
        return allowed

    def _text_at(self, sha: str) -> str:
        """The target's text in commit `sha` (cached: commits never change)."""
        return self.tree.text_at(sha, self.cfg.experiment.target)

    def _short(self, sha: str | None) -> str:
        return views.short(sha)

    def _best(self, point: Point | None) -> Best | None:
        return views.best(point)

    # --- the seven operations ----------------------------------------------------------

    def read_target(self) -> TargetView:
        with self._lock:
            path = self._target_path()
            text = guard.read_text(path, self.cfg.experiment.max_target_bytes)
            return TargetView(
                path=self.cfg.experiment.target,
                content=text,
                sha256=guard.sha256(text.encode()),
                lines=len(text.splitlines()),
                phase=str(self.state.phase),
                next=self.next_tool(),
            )

    def write_target(self, content: str | None = None, edits: Sequence[tuple[str, str]] | None = None) -> WriteResult:
        with self._lock:
            self._require("write_target")
            if self.state.phase == Phase.IDLE:
                self._require_budget()
            if (content is None) == (edits is None):
                raise GuardError("give exactly one of `content` (the whole new file) or `edits` ({old, new} pairs).")
            path = self._target_path()
            limit = self.cfg.experiment.max_target_bytes
            current = guard.read_text(path, limit)
            new = content if content is not None else guard.apply_edits(current, edits or [])
            data = guard.check_content(new, limit)
            guard.atomic_write_file(path, data, durable=False)  # a lost edit is found and put back
            st = self.state
            if st.phase == Phase.IDLE:
                assert st.incumbent is not None
                st.phase = Phase.EDITED
                st.pending = Pending(experiment=st.experiments + 1, parent=st.incumbent.commit)
                self._save(durable=False)
            base = self._text_at(self._expected_head())
            return WriteResult(
                path=self.cfg.experiment.target,
                sha256=guard.sha256(data),
                lines=len(new.splitlines()),
                diff_lines=_diff_lines(base, new),
                next="commit",
            )

    def commit(self, description: str, *, run_next: bool = False) -> CommitResult:
        """Commit the edited target. `run_next`: its run starts next under the same lock (the
        one-call experiment), which saves the state (a stop in between finds the phase EDITED
        with the commit made, which a restart turns back into the uncommitted edit) and whose
        pre-run check is the commit's own."""
        with self._lock:
            self._require("commit")
            desc = ledger.clean_text(description, MAX_DESCRIPTION)
            if not desc:
                raise GuardError("description is empty: state the hypothesis this edit tests, in one line.")
            st = self.state
            p = st.pending
            assert p is not None and st.incumbent is not None
            path = self._target_path()
            changed = self._check_integrity(st.incumbent.commit, "before commit")
            target = self.cfg.experiment.target
            if target not in changed:
                raise GuardError(
                    "the target is identical to the incumbent: there is nothing to commit. "
                    "Change it with write_target first."
                )
            # Bytes as committed: no newline translation (a CRLF target stays CRLF in the cache).
            text = path.read_bytes().decode("utf-8", errors="replace")
            sha = self.tree.own_commit(target, f"autoexp #{p.experiment}: {desc}", run_next=run_next)
            self.tree.remember(sha, target, text)
            p.commit = sha
            p.description = desc
            p.diff_lines = _diff_lines(self._text_at(p.parent), text)
            st.phase = Phase.COMMITTED
            if not run_next:
                self._save(durable=False)
            return CommitResult(
                commit=self._short(sha),
                description=desc,
                diff_lines=p.diff_lines,
                experiment=p.experiment,
                next="run_eval",
            )

    def start_eval(self, *, ready: bool = False) -> _Job | None:
        """Start the eval for the pending commit (or the baseline), or return the running job.
        Returns None when the result is already in (phase EVALUATED). `ready`: the caller has
        just asked the executor whether it can take a run (under the same lock)."""
        with self._lock:
            self._require("run_eval")
            st = self.state
            if st.phase == Phase.EVALUATED:
                return None
            if not ready and (self._job is None or self._job.done.is_set()):
                self.evaluator.executor.ready()  # a scheduler that is down: say so and spend nothing
            if st.phase == Phase.IDLE:  # the baseline
                self._require_budget()
                if st.experiments == 0:  # the wall clock starts with the first run, not at the first server start
                    st.started_at = time.time()
                head = self.git.head()
                st.pending = Pending(
                    experiment=st.experiments + 1,
                    baseline=True,
                    parent=head,
                    commit=head,
                    description="baseline",
                )
                st.phase = Phase.COMMITTED
            if self._job is not None and not self._job.done.is_set():
                return self._job
            p = st.pending
            assert p is not None and p.commit is not None
            st.runs += 1
            job = _Job(self, st.runs, self._execute, self._job_ended)
            p.run = st.runs
            p.run_id = job.run_id
            st.phase = Phase.RUNNING
            self._save()  # durably: a run cut short by a stopped server is found and counted
            (self.dir / "runs").mkdir(exist_ok=True)
            self._job = job
            job.thread.start()
            return job

    def run_eval(self, wait_seconds: float | None = None) -> EvalView:
        """Start or resume the eval and wait up to `wait_seconds` for it (plain, blocking)."""
        job = self.start_eval()
        if job is not None:
            job.done.wait(self.wait_limit(wait_seconds))
        return self.eval_view()

    def wait_limit(self, wait_seconds: float | None) -> float:
        default = self.cfg.experiment.wait_seconds
        if wait_seconds is None:
            return default
        return max(0.0, min(float(wait_seconds), 3600.0))

    def eval_view(self) -> EvalView:
        with self._lock:
            return views.eval_view(self.state, self._job, self.cfg, self.next_tool)

    def decide(self) -> DecideResult:
        with self._lock:
            self._require("decide")
            st = self.state
            p = st.pending
            assert p is not None and p.result is not None and p.commit is not None
            r = p.result
            cfg = self.cfg
            point = Point(
                commit=p.commit,
                metrics={k: v for k, v in r.metrics.items() if v is not None},
                values=r.values,
                holdout=r.holdout,
                experiment=p.experiment,
            )
            index = p.experiment - 1 - st.stage_started_experiments
            if r.status in ("crash", "timeout"):
                d = policy.Decision("crash" if r.status == "crash" else "timeout", r.status, r.reason or r.status)
            elif p.baseline and st.incumbent is None:
                d = policy.decide(policy.Measurement(r.values), None, cfg, experiment_index=0)
            else:
                assert st.incumbent is not None
                if r.drift_values:
                    self._apply_drift(p, st.incumbent, r.drift_values)
                d = policy.decide(
                    policy.Measurement(r.values), policy.Measurement(st.incumbent.values), cfg, experiment_index=index
                )
                if d.status == "keep" and r.holdout_failed:
                    d = policy.Decision("discard", "holdout", "held-out check failed: the change does not generalise")
                if p.drift_note:
                    d = policy.Decision(d.status, d.rule, f"{d.reason} [{p.drift_note}]", d.margin, d.details)
            kept = d.kept
            p.decision = DecisionState(status=d.status, rule=d.rule, reason=d.reason, margin=d.margin)
            if kept:
                st.incumbent = point
                if d.status == "keep" and (st.best is None or self._beats(point, st.best)):
                    st.best = point
                if st.baseline is None:
                    st.baseline = point
            st.phase = Phase.DECIDED
            # Persist the decision before touching git: a restart re-applies the reset.
            self._save()
            reverted = False
            if not kept and not p.baseline:
                assert st.incumbent is not None
                self.tree.own_reset(st.incumbent.commit)
                reverted = True
            return DecideResult(
                status=d.status,
                commit=self._short(p.commit),
                experiment=p.experiment,
                metrics=r.metrics,
                rule=d.rule,
                reason=d.reason,
                margin=d.margin,
                incumbent=self._best(st.incumbent),
                best=self._best(st.best),
                reverted=reverted,
                next="log_result",
            )

    def _apply_drift(self, p: Pending, inc: Point, fresh: dict[str, list[float]]) -> None:
        """The incumbent re-measured before this experiment: adopt the new figures if they moved."""
        values, p.drift_note = measure.incumbent_values(inc, fresh, self.cfg)
        if values is fresh:
            inc.values = fresh
            inc.metrics = dict(policy.Measurement(fresh).means())

    def _beats(self, cand: Point, best: Point) -> bool:
        """Whether `cand` should replace the best-ever point, by the configured rule itself."""
        cfg = self.cfg
        if cfg.policy.explore_every:
            cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"explore_every": 0})})
        verdict = policy.decide(
            policy.Measurement(cand.values), policy.Measurement(best.values), cfg, experiment_index=1
        )
        return verdict.status == "keep"

    def log_result(
        self,
        description: str | None = None,
        notes: str = "",
        tokens_used: int = 0,
        cost_usd: float | None = None,
    ) -> LogResult:
        with self._lock:
            self._require("log_result")
            _check_spend(tokens_used, cost_usd)
            st = self.state
            p = st.pending
            assert p is not None and p.decision is not None and p.result is not None and p.commit is not None
            cost = budgetmod.cost_of(tokens_used, cost_usd, self.cfg.budget)
            desc = ledger.clean_text(description, MAX_DESCRIPTION) if description else p.description
            r = p.result
            fields = dict(
                experiment=p.experiment,
                tag=st.tag,
                commit=self._short(p.commit),
                parent=self._short(p.parent),
                timestamp=_now_iso(),
                status=p.decision.status,
                metrics={m.name: r.metrics.get(m.name) for m in self.cfg.metric},
                std=r.std or None,
                repeats=r.values if self.cfg.policy.repeats > 1 else None,
                description=desc or ("baseline" if p.baseline else ""),
                notes=ledger.clean_text(notes, MAX_NOTES),
                diff_lines=p.diff_lines,
                wall_time_s=r.elapsed_s,
                tokens_used=int(tokens_used),
                cost_usd=round(cost, 6),
                cumulative_cost_usd=round(st.cost_usd + cost, 6),
                rule=p.decision.rule,
                reason=p.decision.reason,
                best_commit=self._short(st.best.commit) if st.best else None,
                best_metrics=st.best.metrics if st.best else None,
                stage=self.full_cfg.stage_name(st.stage),
                run=p.run,
                log=r.log,
                log_truncated=r.log_truncated,
                harness=st.harness,
                sandbox=self.iso.label,
            )
            if r.slot is not None:
                fields.update(slot=r.slot, slot_wait_s=r.slot_wait_s)
            if r.remote is not None:
                fields.update(r.remote.model_dump())
            if p.drift_note:
                fields["drift"] = p.drift_note
            if st.config_note:
                fields["config_change"] = st.config_note
            if self.cfg.holdout is not None and (r.holdout is not None or r.holdout_failed):
                # Marked, and only here: never in a tool result or the prompt.
                fields["holdout"] = {"value": r.holdout, "passed": not r.holdout_failed, "hidden": True}
            rec = self.ledger.append(fields)
            self._advance_after_log(p, cost, int(tokens_used))
            budget = self.budget_status()
            return LogResult(
                row=Row(
                    experiment=rec.experiment,
                    commit=rec.commit,
                    status=rec.status,
                    metrics=rec.metrics,
                    description=rec.description,
                    reason=rec.reason,
                    wall_time_s=rec.wall_time_s,
                    diff_lines=rec.diff_lines,
                    cost_usd=rec.cost_usd,
                ),
                budget=budget,
                next=budget.next,
            )

    def _advance_after_log(self, p: Pending, cost: float, tokens: int) -> None:
        st = self.state
        assert p.decision is not None
        st.experiments = p.experiment
        st.cost_usd += cost
        st.tokens_used += tokens
        crashed = p.decision.status in ledger.UNMEASURED_STATUSES
        st.consecutive_crashes = st.consecutive_crashes + 1 if crashed else 0
        if p.baseline and st.incumbent is None and p.decision.status in ("crash", "timeout"):
            st.baseline_failed = self._baseline_failed(p.decision.reason)
        st.pending = None
        st.config_note = None
        st.phase = Phase.IDLE
        self._save(durable=False)
        self._maybe_next_stage()

    def _maybe_next_stage(self) -> None:
        """When a pipeline stage's budget is spent, freeze its target and start the next stage
        from the stage's best commit (with a fresh baseline for the new metrics)."""
        st = self.state
        stages = self.full_cfg.stage
        if not stages or st.stage + 1 >= len(stages):
            return
        view = self.budget()
        crash_cap = self.cfg.budget.abort_on_consecutive_crashes
        if not view.stop or (crash_cap is not None and st.consecutive_crashes >= crash_cap):
            return  # still within budget, or stopped by crashes: that stops the whole pipeline
        best = st.best or st.incumbent
        start = best.commit if best is not None else self.git.head()
        log.info(
            "stage %s finished (%s); next stage starts from %s",
            self.full_cfg.stage_name(st.stage),
            view.reason,
            start[:12],
        )
        st.stage += 1
        st.stage_started_experiments = st.experiments
        st.stage_started_at = time.time()
        st.stage_started_cost = st.cost_usd
        st.consecutive_crashes = 0
        st.incumbent = st.best = st.baseline = None
        st.start_commit = start
        st.harness = self._harness_hash(start)  # from the commit: no need to wait for the reset
        self._save()
        self.git.reset_hard(start)
        opening.check_target_tracked(self.git, self.cfg.experiment.target)

    def budget_status(self) -> BudgetStatus:
        with self._lock:
            return views.budget_status(self.budget(), self.state, self.full_cfg, self.iso, self.next_tool())

    # --- views for the prompt, resources and the CLI -----------------------------------------

    def render_prompt(self, domain: str | None = None) -> str:
        return views.render_prompt(self.full_cfg, self.state.stage, self.ledger, self.root, self.focus, domain)

    def last_log(self) -> Path | None:
        return views.last_log(self.dir, self.state.runs)

    def report_markdown(self) -> str:
        return views.report_markdown(self.ledger, self.cfg)

    # --- the eval, in the job's thread ---------------------------------------------------

    def _target_rewritten(self, sha: str) -> bool:
        """Whether the target on disk differs from its version in `sha`; if so, put it back."""
        return self.tree.put_target(sha, self.cfg.experiment.target)

    def _put_target(self, commit: str) -> None:
        """Make the target on disk the version in `commit` (atomic write, only if it differs)."""
        self._target_rewritten(commit)

    def _execute(self, job: _Job) -> EvalResult:
        """The job's body: what to measure, read under the lock, measured by the evaluator."""
        with self._lock:
            st = self.state
            p = st.pending
            assert p is not None and p.commit is not None
            task = measure.Task(
                cfg=self.cfg,
                commit=p.commit,
                experiment=p.experiment,
                baseline=p.baseline,
                incumbent=st.incumbent,
                index=p.experiment - 1 - st.stage_started_experiments,
            )
        return self.evaluator.execute(job, task)

    def _job_ended(self, job: _Job, result: EvalResult) -> None:
        self._finish_run(job, result)
        self._run_ended(job)

    def _run_ended(self, job: _Job) -> None:
        hook = self.on_run_end
        if hook is not None:
            try:
                hook(job)
            except Exception:  # the run is recorded; a failed hook leaves it for the next call
                log.exception("finishing eval run %s failed", job.run)

    def _finish_run(self, job: _Job, result: EvalResult) -> None:
        with self._lock:
            if self._job is not job:
                return
            p = self.state.pending
            assert p is not None
            p.result = result
            self.state.phase = Phase.EVALUATED
            if p.auto is None or self.on_run_end is None:
                # Else the one-call hook decides at once and saves the decision with the result
                # (a stop in the moment between finds the run interrupted, as one cut short).
                self._save(durable=False)


def _diff_lines(a: str, b: str) -> int:
    import difflib

    return sum(
        1
        for line in difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


def _check_spend(tokens_used: int, cost_usd: float | None) -> None:
    """Refuse spend figures that are negative, not finite, or too large to add up."""
    if isinstance(tokens_used, bool) or not isinstance(tokens_used, int) or not 0 <= tokens_used <= MAX_TOKENS:
        raise GuardError(
            f"tokens_used must be a whole number from 0 to {MAX_TOKENS:.0e} (got {tokens_used!r}). Nothing was logged; "
            "call log_result again with the tokens this experiment used."
        )
    if cost_usd is not None and not (math.isfinite(cost_usd) and 0 <= cost_usd <= MAX_COST_USD):
        raise GuardError(
            f"cost_usd must be a finite number of dollars from 0 to {MAX_COST_USD:.0e} (got {cost_usd!r}). Nothing was "
            "logged; call log_result again with this experiment's cost, or leave it out."
        )
