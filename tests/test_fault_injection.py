"""Fault injection against the real stdio server (`autoexp-mcp serve`), driven by a small
JSON-RPC client: SIGKILL at every phase boundary, in the middle of tool calls and at random
points mid-eval, a restart after each kill, and the consistency checks after each restart.
Also: an eval whose grandchildren ignore SIGTERM leaves nothing behind after its timeout,
after the server's normal exit and after SIGTERM to the server."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp.verify import verify
from conftest import MakeRepo, cmdline_pids, git, harness_config, installed_command, server_env

pytestmark = pytest.mark.slow

START_S = 60.0  # the server's start and handshake (imports, recovery); ~2 s on a quiet machine
CALL_S = 60.0  # any single tool call
EXIT_S = 20.0  # a server asked to exit
GONE_S = 10.0  # killed processes disappearing from /proc
SLOW_EVAL_S = 0.8  # the evals killed at random points
KILLS_PER_RUN = 3  # kill the same (re-)run at most this often, so the loop moves on


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


class RpcError(Exception):
    pass


class StdioServer:
    """`autoexp-mcp serve` in its own session, spoken to in newline-delimited JSON-RPC."""

    def __init__(self, repo: Path, log: Path) -> None:
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [installed_command(), "serve", "--repo", str(repo)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=server_env(),
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._ids = iter(range(1, 1_000_000))
        threading.Thread(target=self._read, daemon=True).start()
        self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "fault-injection", "version": "0"},
            },
            timeout=START_S,
        )
        self._write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        # As every client does next; the server opens the repository (and recovers) after it.
        self.request("tools/list", {}, timeout=START_S)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.messages.put(json.loads(line))
        self.messages.put(None)

    def _write(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def send(self, method: str, params: dict[str, Any]) -> int:
        rid = next(self._ids)
        self._write({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        return rid

    def response(self, rid: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no response to request {rid} within {timeout:g}s") from None
            if msg is None:
                raise RpcError(f"the server closed stdout (exit code {self.proc.poll()})")
            if msg.get("id") == rid:
                if "error" in msg:
                    raise RpcError(str(msg["error"]))
                return msg["result"]

    def request(self, method: str, params: dict[str, Any], timeout: float = CALL_S) -> dict[str, Any]:
        return self.response(self.send(method, params), timeout)

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        """A tool call that must succeed; returns its structured result."""
        res = self.request("tools/call", {"name": tool, "arguments": args})
        assert not res.get("isError"), (tool, args, res["content"][0]["text"])
        return res["structuredContent"]

    def send_call(self, tool: str, **args: Any) -> int:
        return self.send("tools/call", {"name": tool, "arguments": args})

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(EXIT_S)
        self._cleanup()

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)
        self.proc.wait(EXIT_S)
        self._cleanup()

    def close(self) -> None:
        """The client goes away: stdin closes and the server exits by itself."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(EXIT_S)
        self._cleanup()

    def _cleanup(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()  # type: ignore[union-attr]
        self.log.close()


def value_for(experiment: int) -> str:
    """Every outcome, in a cycle; no value ever equals an incumbent's, so each one commits."""
    return [
        str(experiment),  # better than every earlier keep: keep
        "0.5",  # discard
        "crash",
        f"sleep {SLOW_EVAL_S} {experiment}",  # slow keep: killed mid-eval
        "nometric",
        f"sleep {SLOW_EVAL_S} 0.25",  # slow discard: killed mid-eval
    ][experiment % 6]


def expected_score(value: str) -> float | None:
    parts = value.split()
    if parts[0] == "sleep":
        return float(parts[2])
    try:
        return float(parts[0])
    except ValueError:
        return None


class FaultInjector:
    """Drives the loop to completion by always calling the tool the server names next, killing
    the server according to a plan of (tool, when) pairs, and checking everything after each
    restart."""

    def __init__(self, repo: Path, marker: str, seed: int) -> None:
        self.repo = repo
        self.marker = marker
        self.rnd = random.Random(seed)
        self.log = repo.parent / "server-stderr.log"
        self.server = StdioServer(repo, self.log)
        self.logged = 0
        self.kills: Counter[str] = Counter()
        self.interrupted_logged = 0  # runs cut short by a kill, logged as interrupted at the restart
        self.during: Counter[str] = Counter()  # whether a kill in the middle of a call came before its effect
        self.kills_of_this_run: dict[int, int] = {}
        self.harness = (repo / "evaluate.py").read_bytes()
        tools = ("write_target", "commit", "run_eval", "decide", "log_result")
        # Every phase boundary (after each tool's response) and the middle of each call, three times each.
        self.plan: Counter[tuple[str, str]] = Counter({(t, w): 3 for t in tools for w in ("after", "during")})
        self.plan[("run_eval", "mid-eval")] = 20
        for t in ("run_eval", "decide", "log_result"):  # the baseline's boundaries too
            self.plan[(f"baseline:{t}", "after")] = 1

    @property
    def total_kills(self) -> int:
        return sum(self.kills.values())

    def state(self) -> dict[str, Any]:
        return json.loads((self.repo / ".autoexp" / "state.json").read_text())

    def rows(self) -> list[int]:
        path = self.repo / "experiments.jsonl"
        return [json.loads(x)["experiment"] for x in path.read_text().splitlines()] if path.exists() else []

    # --- one step -------------------------------------------------------------------------

    def step(self) -> bool:
        """Make one move; False once the loop has run far enough and the plan is done."""
        status = self.server.call("budget_status")
        nxt = status["next"]
        st = self.state()
        baseline = st["incumbent"] is None or bool((st["pending"] or {}).get("baseline"))
        experiment = st["experiments"] + 1
        value = value_for(experiment)
        if not any(self.plan.values()) and st["phase"] == "idle":
            return False
        assert nxt != "stop", f"the budget ran out before the plan was done: {+self.plan}"
        key = f"baseline:{nxt}" if baseline else nxt
        runs_before = st["runs"]
        slow = nxt == "run_eval" and value.startswith("sleep") and not baseline
        if slow and self.plan[("run_eval", "mid-eval")] and self.kills_of_this_run.get(experiment, 0) < KILLS_PER_RUN:
            return self.kill_mid_eval(experiment)
        for when in ("after", "during"):
            if self.plan[(key, when)]:
                self.plan[(key, when)] -= 1
                return self.kill_at(nxt, when, experiment, value, runs_before)
        self.do(nxt, experiment, value)
        return True

    def args_for(self, tool: str, experiment: int, value: str) -> dict[str, Any]:
        return {
            "write_target": {"content": value + "\n"},
            "commit": {"description": f"experiment {experiment}: {value}"},
            "run_eval": {"wait_seconds": 30},
            "decide": {},
            "log_result": {"notes": f"n{experiment}"},
        }[tool]

    def do(self, tool: str, experiment: int, value: str) -> dict[str, Any]:
        res = self.server.call(tool, **self.args_for(tool, experiment, value))
        if tool == "run_eval":
            while res["status"] == "running":
                res = self.server.call("run_eval", wait_seconds=30)
            self.check_measured(res)
        if tool == "log_result":
            self.logged += 1
            assert res["experiment"] == self.logged
        return res

    def kill_at(self, tool: str, when: str, experiment: int, value: str, runs_before: int) -> bool:
        before = (self.repo / "value.txt").read_text()
        state_before = (self.repo / ".autoexp" / "state.json").read_bytes()
        if when == "after":
            self.do(tool, experiment, value)
        else:
            self.server.send_call(tool, **self.args_for(tool, experiment, value))
            time.sleep(self.rnd.uniform(0, 0.03))  # the injection point: anywhere in the call
        self.kill_and_restart(f"{tool}:{when}", maybe_logged=(tool == "log_result" and when == "during"))
        st = self.state()
        if when == "during":
            took_effect = (self.repo / ".autoexp" / "state.json").read_bytes() != state_before
            self.during["took effect" if took_effect else "before it took effect"] += 1
        target = (self.repo / "value.txt").read_text()
        if tool == "write_target":
            if when == "after":
                assert st["phase"] == "edited" and target == value + "\n", "the uncommitted edit is still there"
            else:
                assert target in (before, value + "\n"), "the write is atomic: old or new, nothing in between"
        elif tool == "commit":
            assert target == value + "\n", "a commit killed at any point keeps the edit"
            if when == "after":
                assert st["phase"] == "committed"
            else:
                assert st["phase"] in ("edited", "committed")
        elif tool == "decide" and when == "after":
            assert st["phase"] == "decided"
        elif tool == "run_eval":
            assert st["phase"] != "running", "a run cut short is logged at the restart, never left running"
        return True

    def kill_mid_eval(self, experiment: int) -> bool:
        self.kills_of_this_run[experiment] = self.kills_of_this_run.get(experiment, 0) + 1
        runs_before = self.state()["runs"]
        res = self.server.call("run_eval", wait_seconds=0)
        assert res["status"] == "running", res
        assert res["run"] == runs_before + 1, "a fresh run"
        wait_until(lambda: cmdline_pids(self.marker), GONE_S, "the eval to start")
        time.sleep(self.rnd.uniform(0, SLOW_EVAL_S))  # a random point of the eval
        self.plan[("run_eval", "mid-eval")] -= 1
        self.kill_and_restart("run_eval:mid-eval")
        return True

    def check_measured(self, res: dict[str, Any]) -> None:
        """The metric is the one of the target as committed, however often the run was killed."""
        if res["status"] == "done":
            committed = git(self.repo, "show", f"{res['commit']}:value.txt")
            assert res["metrics"] == {"score": expected_score(committed)}, (committed, res)

    # --- kill, restart, check ---------------------------------------------------------------

    def kill_and_restart(self, what: str, maybe_logged: bool = False) -> None:
        self.server.kill()
        self.kills[what] += 1
        cut_short = self.state()["phase"] == "running"  # as the killed server left it
        print(f"kill {self.total_kills}: {what}", file=sys.stderr, flush=True)
        self.server = StdioServer(self.repo, self.log)
        self.check_consistent(maybe_logged, cut_short)

    def check_consistent(self, maybe_logged: bool, cut_short: bool = False) -> None:
        status = self.server.call("budget_status")  # the server has opened the repository (and recovered)
        rows = self.rows()
        assert rows == list(range(1, len(rows) + 1)), f"rows lost or logged twice: {rows}"
        if cut_short:  # the run the kill cut short is logged, once, as interrupted, and counted
            assert len(rows) == self.logged + 1, (rows, self.logged)
            last = json.loads((self.repo / "experiments.jsonl").read_text().splitlines()[-1])
            assert last["status"] == "interrupted", last
            self.interrupted_logged += 1
        else:
            allowed = {self.logged, self.logged + 1} if maybe_logged else {self.logged}
            assert len(rows) in allowed, (rows, self.logged)
        self.logged = len(rows)
        assert status["experiments_used"] == self.logged
        st = self.state()
        assert st["experiments"] == self.logged
        head = git(self.repo, "rev-parse", "HEAD")
        assert git(self.repo, "branch", "--show-current") == "autoexp/t"
        incumbent = st["incumbent"]["commit"] if st["incumbent"] else st["start_commit"]
        if st["phase"] in ("idle", "edited", "decided"):
            assert head == incumbent, ("the branch is at the incumbent", st["phase"])
        else:
            assert head == st["pending"]["commit"], ("the branch is at the pending experiment", st["phase"])
        assert (self.repo / "evaluate.py").read_bytes() == self.harness
        wait_until(lambda: not cmdline_pids(self.marker), GONE_S, "the restart to stop the killed server's eval")


@pytest.mark.timeout(600)
def test_sigkill_at_every_phase_boundary_and_mid_eval_loses_nothing(make_repo: MakeRepo) -> None:
    marker = f"autoexp-fi-{uuid.uuid4().hex[:8]}"
    config = harness_config(timeout=20, wait=20, max_experiments=200, crashes=200).replace(
        "evaluate.py", f"evaluate.py {marker}", 1
    )
    repo = make_repo(value="1", config=config)
    started = time.monotonic()
    fi = FaultInjector(repo, marker, seed=int(os.environ.get("AUTOEXP_FI_SEED", "4")))
    try:
        for _ in range(2000):
            if not fi.step():
                break
        else:
            raise AssertionError("the loop did not finish")
    finally:
        with contextlib.suppress(Exception):
            fi.server.close()
    elapsed = time.monotonic() - started
    print(
        f"\n{fi.total_kills} kills ({dict(fi.kills)}), {fi.interrupted_logged} interrupted runs logged, "
        f"{fi.logged} experiments logged, kills during a call: {dict(fi.during)}, {elapsed:.0f}s"
    )
    assert fi.total_kills >= 50
    assert fi.kills["run_eval:mid-eval"] >= 20 and fi.interrupted_logged >= 20
    assert not any(fi.plan.values()), fi.plan
    assert fi.rows() == list(range(1, fi.logged + 1))
    assert verify(repo) == []
    wait_until(lambda: not cmdline_pids(marker), GONE_S, "no eval process to remain")


# --- an eval whose grandchildren ignore SIGTERM ----------------------------------------------

STUBBORN_HARNESS = textwrap.dedent(
    """\
    import os, signal, subprocess, sys, time
    marker = sys.argv[1]
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    subprocess.Popen([sys.executable, "-c", stubborn, marker])  # in the eval's process group
    subprocess.Popen([sys.executable, "-c", stubborn, marker], start_new_session=True)  # escaped the group
    if os.fork() == 0:  # a double-forked daemon, reparented away from the eval
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", stubborn, marker])
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("forked", flush=True)
    time.sleep(300)
    """
)


@pytest.fixture
def stubborn_repo(make_repo: MakeRepo) -> tuple[Path, str]:
    marker = f"autoexp-stubborn-{uuid.uuid4().hex[:8]}"
    # Without a sandbox: the server's own clean-up is what is tested here (test_sandbox covers
    # a sandboxed eval dying with its server).
    config = harness_config(timeout=3, wait=20, sandbox="none").replace("evaluate.py", f"evaluate.py {marker}", 1)
    return make_repo(config=config, files={"evaluate.py": STUBBORN_HARNESS}), marker


def start_stubborn_eval(repo: Path, marker: str) -> StdioServer:
    server = StdioServer(repo, repo.parent / "stderr.log")
    assert server.call("run_eval", wait_seconds=0)["status"] == "running"
    # The eval, its three stubborn descendants: all up.
    wait_until(lambda: len(cmdline_pids(marker)) >= 4, GONE_S, "the eval and its grandchildren")
    return server


def test_no_process_of_the_eval_remains_after_its_timeout(stubborn_repo: tuple[Path, str]) -> None:
    repo, marker = stubborn_repo
    server = start_stubborn_eval(repo, marker)
    try:
        res = server.call("run_eval", wait_seconds=30)
        assert res["status"] == "timeout"
        wait_until(lambda: not cmdline_pids(marker), GONE_S, "the eval's processes to be killed")
    finally:
        server.close()


@pytest.mark.parametrize("how", ["stdin closed", "SIGTERM", "SIGKILL then restart"])
def test_no_process_of_the_eval_remains_after_the_server_goes(stubborn_repo: tuple[Path, str], how: str) -> None:
    repo, marker = stubborn_repo
    server = start_stubborn_eval(repo, marker)
    if how == "stdin closed":
        server.close()
    elif how == "SIGTERM":
        server.terminate()
    else:
        server.kill()
        assert len(cmdline_pids(marker)) >= 4, "SIGKILL gives the server no chance to clean up ..."
        server = StdioServer(repo, repo.parent / "stderr.log")  # ... so the next start does
        try:
            wait_until(lambda: not cmdline_pids(marker), GONE_S, "the restart to kill the old eval")
        finally:
            server.close()
    wait_until(lambda: not cmdline_pids(marker), GONE_S, "the eval's processes to be killed")


def test_a_sandboxed_eval_dies_with_a_killed_server_before_any_restart(make_repo: MakeRepo) -> None:
    from autoexp_mcp.sandbox import available

    if not available().ok:
        pytest.skip(f"no sandbox here: {available().detail}")
    marker = f"autoexp-stubborn-{uuid.uuid4().hex[:8]}"
    config = harness_config(timeout=30, wait=20).replace("evaluate.py", f"evaluate.py {marker}", 1)
    repo = make_repo(config=config, files={"evaluate.py": STUBBORN_HARNESS})
    server = start_stubborn_eval(repo, marker)
    server.kill()
    wait_until(lambda: not cmdline_pids(marker), GONE_S, "the sandbox to take the eval's processes with it")
