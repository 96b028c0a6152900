"""Random call sequences against one Experiment (hypothesis stateful testing).

The machine calls every tool in any order, wrong phases included, and restarts the server
(close and reopen) at random. After every step: the budget is never exceeded, the ledger
holds exactly the logged experiments numbered 1..n, git agrees with the phase, the harness
is untouched and `verify` finds nothing wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from autoexp_mcp.errors import AutoexpError, OrderError
from autoexp_mcp.loop import Experiment
from autoexp_mcp.state import Phase
from autoexp_mcp.verify import verify
from conftest import HARNESS, git, harness_config, init_repo

MAX_EXPERIMENTS = 5
VALUES = ["1", "2", "3", "5", "8", "2.5", "crash", "nometric", "nan", "sleep 0.2 4", "sleep 0.5 9"]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40) | st.sampled_from(
    ["--amend", "-m x", "a\tb\nc", ""]
)


def eval_pids_in(repo: Path) -> list[int]:
    """Live processes started by an eval of `repo` (they carry the run marker and run in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"AUTOEXP_RUN_ID=" not in (entry / "environ").read_bytes():
                continue
            if os.readlink(entry / "cwd") != str(repo):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


class LoopMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="autoexp-stateful-"))
        config = harness_config(timeout=5, wait=5, max_experiments=MAX_EXPERIMENTS, crashes=3)
        self.repo = init_repo(
            self.tmp / "repo", {"value.txt": "1\n", "evaluate.py": HARNESS, "autoexp.toml": config}
        ).resolve()
        self.harness = {name: (self.repo / name).read_bytes() for name in ("evaluate.py", "autoexp.toml")}
        self.exp = Experiment(self.repo)
        self.logged = 0
        self.written: str | None = None  # the target content last written and not yet committed

    def teardown(self) -> None:
        try:
            self.exp.close()
            assert eval_pids_in(self.repo) == [], "an eval outlived the server"
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def attempt(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Call a tool; refusals are part of the game, anything else is a bug."""
        try:
            return fn(*args, **kwargs)
        except AutoexpError:
            return None

    # --- the agent's moves -------------------------------------------------------------

    @rule(value=st.sampled_from(VALUES))
    def write_target(self, value: str) -> None:
        if self.attempt(self.exp.write_target, content=value + "\n") is not None:
            self.written = value + "\n"

    @rule(old=st.sampled_from(["1", "2", "crash", "x"]), new=st.sampled_from(["7", "sleep 0.1 6", ""]))
    def write_edits(self, old: str, new: str) -> None:
        before = (self.repo / "value.txt").read_bytes()
        if self.attempt(self.exp.write_target, edits=[(old, new)]) is None:
            assert (self.repo / "value.txt").read_bytes() == before, "a refused edit changes nothing"
        else:
            self.written = (self.repo / "value.txt").read_text()

    @rule(description=TEXT)
    def commit(self, description: str) -> None:
        if self.attempt(self.exp.commit, description) is not None:
            self.written = None

    @rule(wait=st.sampled_from([0.0, 0.05, 5.0]))
    def run_eval(self, wait: float) -> None:
        self.attempt(self.exp.run_eval, wait)

    @rule()
    def decide(self) -> None:
        self.attempt(self.exp.decide)

    @rule(notes=TEXT, tokens=st.integers(0, 10_000))
    def log_result(self, notes: str, tokens: int) -> None:
        if self.attempt(self.exp.log_result, notes=notes, tokens_used=tokens) is not None:
            self.logged += 1

    @rule()
    def read_only_calls(self) -> None:
        phase = self.exp.budget_status().phase
        self.attempt(self.exp.read_target)
        assert self.exp.budget_status().phase == phase

    @rule()
    def restart(self) -> None:
        running = self.exp.state.phase == Phase.RUNNING
        self.exp.close()
        self.exp = Experiment(self.repo)
        # A run still going stopped with the server: it is logged as interrupted, and counted
        # (unless it ended just before the close).
        last = self.exp.ledger.last_record()
        if running and last is not None and last.experiment == self.logged + 1:
            assert last.status == "interrupted"
            self.logged += 1

    @rule(steps=st.integers(1, 10), value=st.sampled_from(VALUES))
    def follow_the_loop(self, steps: int, value: str) -> None:
        """A diligent agent: call the tool the server names next (random calls alone rarely
        get past the baseline)."""
        for _ in range(steps):
            nxt = self.exp.next_tool()
            if nxt == "write_target":
                self.write_target(value)
            elif nxt == "commit":
                self.commit(f"try {value}")
            elif nxt == "run_eval":
                self.run_eval(5.0)
            elif nxt == "decide":
                self.decide()
            elif nxt == "log_result":
                self.log_result("", 0)
            else:
                return

    @precondition(lambda self: self.exp.state.phase == Phase.RUNNING)
    @rule()
    def finish_the_running_eval(self) -> None:
        self.attempt(self.exp.run_eval, 10)

    # --- what must hold after every step ------------------------------------------------

    @invariant()
    def budget_is_never_exceeded(self) -> None:
        status = self.exp.budget_status()
        assert status.experiments_used <= MAX_EXPERIMENTS
        assert status.experiments_used == self.logged

    @invariant()
    def ledger_rows_are_the_logged_experiments(self) -> None:
        path = self.repo / "experiments.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        assert [r["experiment"] for r in rows] == list(range(1, self.logged + 1))
        tsv = self.repo / "results.tsv"
        assert (len(tsv.read_text().splitlines()) - 1 if tsv.exists() else 0) == self.logged

    @invariant()
    def git_agrees_with_the_phase(self) -> None:
        s = self.exp.state
        head = git(self.repo, "rev-parse", "HEAD")
        assert git(self.repo, "branch", "--show-current") == "autoexp/t"
        incumbent = s.incumbent.commit if s.incumbent else s.start_commit
        if s.phase in (Phase.IDLE, Phase.EDITED, Phase.DECIDED):
            assert head == incumbent, (s.phase, head, incumbent)
        else:
            assert s.pending is not None and head == s.pending.commit, (s.phase, head)
        if s.phase == Phase.IDLE:
            assert git(self.repo, "status", "--porcelain") == "", "idle means a clean tree"
        if s.phase == Phase.EDITED and self.written is not None:
            assert (self.repo / "value.txt").read_text() == self.written, "the uncommitted edit is kept"

    @invariant()
    def harness_is_unchanged(self) -> None:
        for name, data in self.harness.items():
            assert (self.repo / name).read_bytes() == data, name

    @invariant()
    def verify_finds_nothing(self) -> None:
        assert verify(self.repo) == []

    @invariant()
    def wrong_phase_calls_name_the_next_tool(self) -> None:
        nxt = self.exp.budget_status().next
        if self.exp.state.phase == Phase.EVALUATED:
            try:
                self.exp.log_result()
            except OrderError as e:
                assert e.next_tool == nxt == "decide"
            else:
                raise AssertionError("log_result was accepted before decide")


@pytest.mark.timeout(120)
def test_random_call_sequences_keep_every_invariant() -> None:
    run_state_machine_as_test(
        LoopMachine,
        settings=settings(
            max_examples=12,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
