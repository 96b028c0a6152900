"""Evals as jobs of a real scheduler: a one-node Slurm cluster and a local Ray head, which
`.ci/run` brings up (`.ci/slurm up`, `ray start --head`). Without them these tests are
skipped, saying how to get them. Each test runs against both engines where the behaviour is
the same: keep, discard and crash through `experiment` over stdio, a timeout whose eval
ignores SIGTERM, a cancel when the server stops, a server killed with -9 and a restart that
follows the same job, a scheduler that is down, and two lanes sharing the cluster."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from autoexp_mcp import lane
from autoexp_mcp.errors import AutoexpError
from autoexp_mcp.loop import Experiment
from autoexp_mcp.state import Phase, load_state, save_state
from autoexp_mcp.verify import verify
from conftest import (
    GIT_ENV,
    MakeRepo,
    call,
    call_error,
    cmdline_pids,
    first_eval,
    harness_config,
    init_repo,
    installed_command,
    server_env,
    stdio_params,
)

RAY_ADDRESS = os.environ.get("AUTOEXP_TEST_RAY_ADDRESS", "http://127.0.0.1:8265")
WAIT_S = 60.0  # a job's whole life on an idle one-node cluster takes about a second

# The harness the jobs run. Its modes, by the target's first word:
#   <number>            prints "score: <number>"
#   crash               exits 2
#   sleep S V           sleeps S seconds, prints its start and end times, then "score: V"
#   stubborn MARK       ignores SIGTERM, starts a child that ignores it too (MARK on its command line), hangs
#   ls                  prints the names in its working directory and beside it, then "score: 1"
#   flood N V           prints N MiB of lines, then "score: V"
#   write               writes out/result.txt (a writable dir), then "score: 1"
#   rename              (Slurm, no sandbox) renames its own job to look like a success, prints 99, exits 3
HARNESS = textwrap.dedent(
    """\
    import os, signal, subprocess, sys, time
    words = open("value.txt").read().split()
    print("evaluating", *words, flush=True)
    if words[0] == "crash":
        sys.exit(2)
    if words[0] == "sleep":
        print("start", time.time(), flush=True)
        time.sleep(float(words[1]))
        print("end", time.time())
        print("score:", float(words[2]))
    elif words[0] == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        subprocess.Popen([sys.executable, "-c", code, words[1]])
        time.sleep(600)
    elif words[0] == "rename":  # sandbox none: the eval can reach Slurm, and renames its own job
        name = "x JobState=COMPLETED ExitCode=0:0"
        subprocess.run(["scontrol", "update", f"JobId={os.environ['SLURM_JOB_ID']}", f"JobName={name}"], check=True)
        print("score: 99")
        sys.exit(3)
    elif words[0] == "ls":
        print("files:", " ".join(sorted(os.listdir("."))))
        print("beside:", " ".join(sorted(os.listdir(".."))))
        print("score: 1")
    elif words[0] == "flood":  # N MiB of output, then the metric
        line = "x" * 1023 + "\\n"
        for _ in range(int(words[1]) * 1024):
            sys.stdout.write(line)
        print("score:", float(words[2]))
    elif words[0] == "write":
        open("out/result.txt", "w").write("written")
        print("score: 1")
    else:
        print("score:", float(words[0]))
    """
)


# --- the engines ----------------------------------------------------------------------------


@functools.cache
def slurm_missing() -> str | None:
    if shutil.which("sbatch") is None:
        return (
            "Slurm is not installed here (no sbatch): `.ci/slurm up`, as root, installs and starts a one-node cluster"
        )
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if " is UP" not in ping.stdout:
        said = (ping.stdout.strip() or ping.stderr.strip()).splitlines()[:1]
        return f"no Slurm controller answers ({' '.join(said)[:80]}): start one with `.ci/slurm up` as root"
    nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout
    if not re.search(r"^(idle|mixed|allocated)", nodes, re.M):
        return f"the Slurm node is not up (sinfo: {nodes.strip()[:80]})"
    return None


@functools.cache
def ray_missing() -> str | None:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        return "the Ray job client is not installed: pip install 'autoexp-mcp[ray]'"
    try:
        JobSubmissionClient(RAY_ADDRESS).get_version()
    except Exception as e:
        return f"no Ray cluster at {RAY_ADDRESS} ({str(e)[:80]}): start one with `ray start --head` (see .ci/run)"
    return None


@pytest.fixture(params=[pytest.param("slurm", marks=pytest.mark.slurm), pytest.param("ray", marks=pytest.mark.ray)])
def engine(request: pytest.FixtureRequest) -> str:
    missing = slurm_missing() if request.param == "slurm" else ray_missing()
    if missing:
        pytest.skip(missing)
    return str(request.param)


def executor_toml(engine: str, **more: str) -> str:
    lines = ["", "[executor]", f'kind = "{engine}"', "poll_seconds = 0.2"]
    if engine == "ray":
        lines.append(f'address = "{RAY_ADDRESS}"')
    lines += [f"{k} = {v}" for k, v in more.items()]
    return "\n".join(lines) + "\n"


def cluster_repo(make_repo: MakeRepo, engine: str, value: str = "1", **cfg: Any) -> Path:
    extra = cfg.pop("extra", "") + executor_toml(engine)
    return make_repo(value=value, config=harness_config(extra=extra, **cfg), files={"evaluate.py": HARNESS})


def records(repo: Path) -> list[dict[str, Any]]:
    path = repo / "experiments.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def jobs_named(engine: str, run_id: str) -> list[str]:
    """The ids of every job the cluster knows that was submitted for run `run_id`."""
    if engine == "slurm":
        out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30).stdout
        return [
            m.group(1)
            for line in out.splitlines()
            if f"JobName=autoexp-{run_id}-" in line and (m := re.search(r"JobId=(\d+)", line))
        ]
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(RAY_ADDRESS).list_jobs()
    return [j.submission_id for j in jobs if (j.metadata or {}).get("autoexp_run") == run_id]


def job_state(engine: str, job_id: str) -> str:
    if engine == "slurm":
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
        m = re.search(r"JobState=(\S+)", out.stdout)
        return m.group(1) if m else "gone"
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(RAY_ADDRESS).get_job_status(job_id).value)


def until(what: str, check: Any, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.05)


def started(exp: Experiment) -> str:
    """Start the eval; return its scheduler job's id once the eval prints."""
    job = exp.start_eval()
    assert job is not None
    until("the job is submitted", lambda: "job_id" in (exp.state.pending.remote_run or {}))  # type: ignore[union-attr]
    job_id = exp.state.pending.remote_run["job_id"]  # type: ignore[union-attr,index]
    until("the eval prints", lambda: "evaluating" in job.tail())
    return job_id


# --- keep, discard, crash: the whole loop over stdio ----------------------------------------------


@pytest.mark.anyio
async def test_keep_discard_and_crash_run_as_jobs_through_experiment_over_stdio(
    make_repo: MakeRepo, engine: str
) -> None:
    repo = cluster_repo(make_repo, engine)
    async with Client(stdio_params(repo)) as c:

        async def experiment(value: str) -> dict[str, Any]:
            return await call(c, "experiment", content=value + "\n", description=f"try {value}", timeout=WAIT_S)

        out = await experiment("3")
        assert (out["status"], out["metrics"]) == ("keep", {"score": 3.0})
        out = await experiment("2")
        assert (out["status"], out["margin"]) == ("discard", -1.0)
        out = await experiment("crash")
        assert out["status"] == "crash" and "the eval exited with code 2" in out["reason"], out
        assert f"{engine} job" in out["reason"]
    rows = records(repo)
    assert [r["status"] for r in rows] == ["keep", "keep", "discard", "crash"]
    assert {r["executor"] for r in rows} == {engine}
    assert len({r["job_id"] for r in rows}) == 4, "one job per run"
    assert all(r["node"] and r["queue_wait_s"] >= 0 for r in rows)
    assert all(r["sandbox"] == "bwrap" for r in rows) or shutil.which("bwrap") is None
    assert "measured in" in rows[1]["reason"] or rows[1]["rule"] == "single"
    assert (repo / "value.txt").read_text() == "3\n"
    assert verify(repo) == []


# --- a timeout whose eval ignores SIGTERM ----------------------------------------------------------


@pytest.mark.parametrize("sandbox", ["auto", "none"])
def test_a_timeout_cancels_the_job_and_leaves_nothing_running(make_repo: MakeRepo, engine: str, sandbox: str) -> None:
    repo = cluster_repo(make_repo, engine, timeout=3, sandbox=sandbox)
    exp = Experiment(repo)
    try:
        assert exp.run_eval(WAIT_S).status == "done"
        exp.decide()
        exp.log_result()
        mark = f"autoexp-stubborn-{uuid.uuid4().hex[:8]}"
        exp.write_target(content=f"stubborn {mark}\n")
        exp.commit("hang and ignore SIGTERM")
        view = exp.run_eval(WAIT_S)
        assert view.status == "timeout", view
        # The job has ended by the time the server reports the run: nothing of it runs on.
        assert cmdline_pids(mark) == []
        d = exp.decide()
        assert d.status == "timeout" and "timeout of 3s" in d.reason
        exp.log_result()
    finally:
        exp.close()
    row = records(repo)[-1]
    assert job_state(engine, row["job_id"]) in ("CANCELLED", "STOPPED", "gone")
    assert row["wall_time_s"] < 3 + 10, "queue wait is not eval time, and the cancel came at the timeout"


def occupy_the_cluster(engine: str, seconds: float) -> str:
    """A job of someone else's that takes both CPUs of the one node for `seconds`."""
    if engine == "slurm":
        out = subprocess.run(
            ["sbatch", "--parsable", "--cpus-per-task=2", "--output=/dev/null", f"--wrap=sleep {seconds}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        job_id = out.stdout.strip().split(";")[0]
    else:
        from ray.job_submission import JobSubmissionClient

        job_id = JobSubmissionClient(RAY_ADDRESS).submit_job(entrypoint=f"sleep {seconds}", entrypoint_num_cpus=2)
    until("the other job runs", lambda: job_state(engine, job_id) == "RUNNING")
    return job_id


def test_time_in_the_queue_does_not_count_against_the_timeout(make_repo: MakeRepo, engine: str) -> None:
    cpus = {"cpus_per_task": "2"} if engine == "slurm" else {"num_cpus": "2"}
    config = harness_config(timeout=2, extra=executor_toml(engine, **cpus))
    repo = make_repo(value="sleep 0.5 4", config=config, files={"evaluate.py": HARNESS})
    occupy_the_cluster(engine, 5)
    exp = Experiment(repo)
    try:
        view = exp.run_eval(1)
        assert view.status == "running" and f"queued as {engine} job" in view.reason, view
        view = exp.run_eval(WAIT_S)
        assert (view.status, view.metrics) == ("done", {"score": 4.0}), view
        r = exp.state.pending.result  # type: ignore[union-attr]
        assert r is not None and r.remote is not None
        assert r.remote.queue_wait_s >= 2, "it waited longer than its timeout in the queue, and still ran"
        assert r.elapsed_s < 2
    finally:
        exp.close()


def test_the_timeout_holds_however_rarely_the_server_looks(make_repo: MakeRepo, engine: str) -> None:
    """With looks 20 s apart, a run of 9 s against a timeout of 3 s is still a timeout, and is
    cancelled at the timeout, not at the next look."""
    config = harness_config(timeout=3, extra=executor_toml(engine).replace("poll_seconds = 0.2", "poll_seconds = 20"))
    repo = make_repo(value="sleep 9 5", config=config, files={"evaluate.py": HARNESS})
    exp = Experiment(repo)
    try:
        t0 = time.monotonic()
        view = exp.run_eval(WAIT_S)
        assert view.status == "timeout", view
        assert time.monotonic() - t0 < 9, "cancelled at the timeout"
    finally:
        exp.close()


def test_a_jobs_output_is_capped_as_a_local_runs_log_is(make_repo: MakeRepo, engine: str) -> None:
    config = harness_config(extra=executor_toml(engine)).replace(
        "[experiment]\n", "[experiment]\nmax_log_bytes = 1048576\n"
    )
    repo = make_repo(value="flood 40 6", config=config, files={"evaluate.py": HARNESS})
    exp = Experiment(repo)
    try:
        view = exp.run_eval(WAIT_S)
        assert (view.status, view.metrics) == ("done", {"score": 6.0}), view
        exp.decide()
        exp.log_result()
    finally:
        exp.close()
    assert (repo / ".autoexp" / "runs" / "1.log").stat().st_size <= 1048576 + 4096
    assert records(repo)[-1]["log_truncated"] is True


# --- cancelled when the server stops ----------------------------------------------------------------


def test_a_stopping_server_cancels_its_job_and_the_next_logs_it_interrupted(make_repo: MakeRepo, engine: str) -> None:
    repo = cluster_repo(make_repo, engine, value="sleep 300 1")
    exp = Experiment(repo)
    try:
        job_id = started(exp)
        until("the view says the job runs", lambda: f"running as {engine} job {job_id}" in exp.eval_view().reason)
        assert "Running entrypoint" not in exp.eval_view().tail, "the agent sees the eval's output, not Ray's"
    finally:
        exp.close()
    until("the job is cancelled", lambda: job_state(engine, job_id) in ("CANCELLED", "STOPPED", "gone"), 30)
    again = Experiment(repo)
    try:
        assert again.state.phase == Phase.IDLE
    finally:
        again.close()
    assert [(r["status"], r["experiment"]) for r in records(repo)] == [("interrupted", 1)]


def test_a_job_the_scheduler_cancels_is_a_crash_with_the_schedulers_words(make_repo: MakeRepo, engine: str) -> None:
    repo = cluster_repo(make_repo, engine, value="sleep 300 99")
    exp = Experiment(repo)
    try:
        job_id = started(exp)
        if engine == "slurm":  # an administrator's scancel, or a preemption without requeue
            subprocess.run(["scancel", job_id], check=True, timeout=30)
        else:
            from ray.job_submission import JobSubmissionClient

            JobSubmissionClient(RAY_ADDRESS).stop_job(job_id)
        view = exp.run_eval(WAIT_S)
        assert view.status == "crash", view
        d = exp.decide()
        assert d.status == "crash"
        said = "was cancelled by the scheduler" if engine == "slurm" else "was stopped"
        assert f"{engine} job {job_id} {said}" in d.reason, d.reason
        exp.log_result()
    finally:
        exp.close()
    assert [r["status"] for r in records(repo)] == ["crash"]


# --- kill -9, then a restart follows the same job --------------------------------------------------------

STARTER = textwrap.dedent(
    """\
    import sys, time
    from pathlib import Path
    from autoexp_mcp.loop import Experiment
    exp = Experiment(Path(sys.argv[1]))
    exp.start_eval()
    deadline = time.monotonic() + 60
    while "job_id" not in (exp.state.pending.remote_run or {}) and time.monotonic() < deadline:
        time.sleep(0.02)
    print(exp.state.pending.run_id, exp.state.pending.remote_run["job_id"], flush=True)
    time.sleep(600)
    """
)


def measured_then_committed(repo: Path, value: str) -> None:
    """The baseline measured and logged, then `value` committed for the next server to run."""
    exp = Experiment(repo)
    try:
        assert exp.run_eval(WAIT_S).status == "done"
        exp.decide()
        exp.log_result()
        exp.write_target(content=value + "\n")
        exp.commit(f"try {value}")
    finally:
        exp.close()


@contextlib.contextmanager
def a_server_to_kill(repo: Path) -> Iterator[tuple[str, str]]:
    """A server in a process of its own that starts the eval: yields the run's id and its job's
    once the job is submitted, and is killed with -9 on leaving."""
    env = {**os.environ, **GIT_ENV}
    with subprocess.Popen(
        [sys.executable, "-c", STARTER, str(repo)], stdout=subprocess.PIPE, text=True, env=env, cwd=repo
    ) as proc:
        try:
            assert proc.stdout is not None
            run_id, job_id = proc.stdout.readline().split()
            yield run_id, job_id
        finally:
            proc.kill()


@pytest.mark.parametrize("id_recorded", [True, False], ids=["id-recorded", "killed-before-the-id-was-recorded"])
def test_a_server_killed_mid_run_is_followed_by_one_that_attaches_to_the_same_job(
    make_repo: MakeRepo, engine: str, id_recorded: bool
) -> None:
    repo = cluster_repo(make_repo, engine, value="1")
    measured_then_committed(repo, "sleep 4 5")
    with a_server_to_kill(repo) as (run_id, job_id):
        pass
    assert job_state(engine, job_id) in ("PENDING", "RUNNING", "CONFIGURING")
    if not id_recorded:  # as if killed between the submission and the write of its id: only the name is known
        st = load_state(repo)
        assert st.pending is not None and st.pending.remote_run is not None
        st.pending.remote_run.pop("job_id", None)  # (the kill may have come before it was written anyway)
        save_state(repo, st)
    again = Experiment(repo)
    try:
        view = again.run_eval(WAIT_S)
        assert (view.status, view.metrics) == ("done", {"score": 5.0}), view
        assert again.decide().status == "keep"
        again.log_result()
    finally:
        again.close()
    row = records(repo)[-1]
    assert (row["experiment"], row["job_id"]) == (2, job_id)
    assert jobs_named(engine, run_id) == [job_id], "the restart started no second job"
    assert verify(repo) == []


def test_a_restart_does_not_reset_the_eval_clock(make_repo: MakeRepo, engine: str) -> None:
    """Killed 4 s into a 9 s run with a 6 s timeout: the next server follows the job and still
    finds it past its timeout, so killing servers cannot buy an eval more time."""
    repo = cluster_repo(make_repo, engine, value="1", timeout=6)
    measured_then_committed(repo, "sleep 9 5")
    with a_server_to_kill(repo) as (_, job_id):
        log = repo / ".autoexp" / "runs" / "2.log"
        until("the eval runs", lambda: log.exists() and "start" in log.read_text())
        time.sleep(4)  # the eval's own time passing, which the test is about
    again = Experiment(repo)
    try:
        view = again.run_eval(WAIT_S)
        assert view.status == "timeout", view
        assert again.decide().status == "timeout"
        again.log_result()
    finally:
        again.close()
    assert records(repo)[-1]["job_id"] == job_id


# --- a scheduler that is down ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_scheduler_that_is_down_is_a_clear_error_that_spends_nothing(
    make_repo: MakeRepo, engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if engine == "slurm":  # the controller this client is pointed at does not listen
        conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
        down = tmp_path / "slurm-down.conf"
        down.write_text(re.sub(r"(?m)^SlurmctldPort=.*\n", "", conf) + "SlurmctldPort=9\n")
        monkeypatch.setenv("SLURM_CONF", str(down))
        repo = cluster_repo(make_repo, engine)
    else:
        repo = make_repo(config=harness_config(extra='\n[executor]\nkind = "ray"\naddress = "http://127.0.0.1:9"\n'))
    params = stdio_params(repo)
    params.env = {**(params.env or {}), **({"SLURM_CONF": os.environ["SLURM_CONF"]} if engine == "slurm" else {})}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    async with Client(params) as c:
        for tool, args in (("run_eval", {}), ("experiment", {"content": "2\n", "description": "two"})):
            err = await call_error(c, tool, timeout=WAIT_S, **args)
            assert "nothing was run or counted" in err.lower(), err
            assert ("slurm" if engine == "slurm" else "ray") in err.lower()
        status = await call(c, "budget_status")
        assert (status["experiments_used"], status["phase"]) == (0, "idle")
    assert records(repo) == []
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout == head
    assert (repo / "value.txt").read_text() == "1\n"


# --- two lanes share the cluster --------------------------------------------------------------------------


def test_two_lanes_run_their_jobs_on_the_cluster_at_once(make_repo: MakeRepo, engine: str) -> None:
    repo = cluster_repo(make_repo, engine, value="sleep 3 1")
    a, b = lane.open_lane(repo, "a"), lane.open_lane(repo, "b")
    try:
        views: dict[str, Any] = {}
        threads = [
            threading.Thread(target=lambda e=e, t=t: views.__setitem__(t, e.run_eval(WAIT_S)))
            for e, t in ((a, "a"), (b, "b"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT_S + 10)
        assert {t: v.status for t, v in views.items()} == {"a": "done", "b": "done"}
        spans = []
        for e in (a, b):
            log = (e.root / ".autoexp" / "runs" / "1.log").read_text()
            start, end = re.search(r"^start (\S+)", log, re.M), re.search(r"^end (\S+)", log, re.M)
            assert start is not None and end is not None, log
            spans.append((float(start[1]), float(end[1])))
        assert max(s for s, _ in spans) < min(e for _, e in spans), f"the two evals ran one after the other: {spans}"
        assert a.state.pending.result.remote.job_id != b.state.pending.result.remote.job_id  # type: ignore[union-attr]
    finally:
        a.close()
        b.close()


def test_repeats_and_the_holdout_run_as_jobs_of_their_own(make_repo: MakeRepo, engine: str) -> None:
    extra = '\n[policy]\nrepeats = 2\n\n[holdout]\neval = "python holdout.py"\nfiles = ["holdout.py"]\n'
    repo = make_repo(
        value="3",
        config=harness_config(extra=extra + executor_toml(engine)),
        files={"evaluate.py": HARNESS, "holdout.py": "print('score: 7')\n"},
    )
    exp = Experiment(repo)
    try:
        view = exp.run_eval(WAIT_S)
        assert view.status == "done", view
        p = exp.state.pending
        assert p is not None and p.result is not None and p.run_id is not None
        assert p.result.values == {"score": [3.0, 3.0]} and p.result.holdout == 7.0
        assert len(jobs_named(engine, p.run_id)) == 3, "two repeats and the hold-out, a job each"
    finally:
        exp.close()


# --- what the job sees, and `check` ---------------------------------------------------------------------------


@pytest.mark.ray
def test_a_ray_job_runs_in_a_snapshot_without_git_state_ledger_or_holdout(make_repo: MakeRepo) -> None:
    if ray_missing():
        pytest.skip(ray_missing())
    extra = '\n[holdout]\neval = "python secret_eval.py"\n'
    repo = make_repo(
        value="ls",
        config=harness_config(extra=extra + executor_toml("ray")),
        files={"evaluate.py": HARNESS, "secret_eval.py": "print('score: 1')\n"},
    )
    view = first_eval(repo, WAIT_S)
    assert view.status == "done", view
    listed = re.search(r"files: (.*)", (repo / ".autoexp" / "runs" / "1.log").read_text())
    assert listed is not None
    names = set(listed.group(1).split())
    assert {"evaluate.py", "value.txt", "autoexp.toml"} <= names
    assert not names & {".git", ".autoexp", "results.tsv", "experiments.jsonl", "secret_eval.py"}, names
    beside = re.search(r"beside: (.*)", (repo / ".autoexp" / "runs" / "1.log").read_text())
    assert beside is not None and len(beside.group(1).split()) == 1, "other jobs' working dirs are out of sight"


@pytest.mark.ray
def test_a_sandboxed_ray_job_writes_its_writable_dir(make_repo: MakeRepo) -> None:
    if ray_missing():
        pytest.skip(ray_missing())
    extra = '\n[sandbox]\nwritable = ["out"]\n' + executor_toml("ray")
    repo = make_repo(value="write", config=harness_config(extra=extra), files={"evaluate.py": HARNESS})
    view = first_eval(repo, WAIT_S)
    assert view.status == "done", view  # the harness's write into out/ did not fail


def test_check_submits_one_run_through_the_configured_executor(make_repo: MakeRepo, engine: str) -> None:
    repo = cluster_repo(make_repo, engine, value="4")
    res = subprocess.run(
        [installed_command(), "check", "--repo", str(repo)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=WAIT_S,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{engine} job" in res.stdout and "score = 4" in res.stdout
    assert ("Slurm jobs" if engine == "slurm" else "Ray jobs") in res.stdout


@pytest.mark.slurm
def test_a_slurm_job_hands_back_a_metric_file_and_the_metric_channel(make_repo: MakeRepo) -> None:
    if slurm_missing():
        pytest.skip(slurm_missing())
    harness = textwrap.dedent(
        """\
        import os
        v = float(open("value.txt").read())
        open("out/metrics.txt", "w").write(f"acc: {v}\\n")
        os.write(int(os.environ["AUTOEXP_METRIC_FD"]), f"loss: {1 / v}\\n".encode())
        print("score: 999")  # stdout is not where these metrics are read
        """
    )
    config = harness_config(extra=executor_toml("slurm") + '\n[sandbox]\nwritable = ["out"]\n')
    config = config.replace('name = "score"', 'name = "acc"\nfile = "out/metrics.txt"', 1)
    config += '\n[[metric]]\nname = "loss"\ndirection = "min"\nchannel = "fd"\nat_most = 10.0\n'
    repo = make_repo(value="4", config=config, files={"evaluate.py": harness, "out/.keep": ""})
    view = first_eval(repo, WAIT_S)
    assert (view.status, view.metrics) == ("done", {"acc": 4.0, "loss": 0.25}), view


def test_unreachable_ray_or_missing_client_never_starts_a_local_run(make_repo: MakeRepo) -> None:
    repo = make_repo(config=harness_config(extra='\n[executor]\nkind = "ray"\naddress = "http://127.0.0.1:9"\n'))
    exp = Experiment(repo)
    try:
        with pytest.raises(AutoexpError, match="(?i)ray"):
            exp.run_eval(5)
        assert exp.state.phase == Phase.IDLE and exp.state.runs == 0
    finally:
        exp.close()
    assert not (repo / ".autoexp" / "runs").exists() or not any((repo / ".autoexp" / "runs").iterdir())


@pytest.mark.slurm
def test_a_job_renamed_to_look_like_a_success_is_a_crash(make_repo: MakeRepo) -> None:
    if slurm_missing():
        pytest.skip(slurm_missing())
    repo = cluster_repo(make_repo, "slurm", value="rename", sandbox="none")
    exp = Experiment(repo)
    try:
        view = exp.run_eval(WAIT_S)
        assert view.status == "crash", view
        assert "JobState= occurs 2 times" in exp.decide().reason
    finally:
        exp.close()


def test_a_slurm_record_with_fields_in_its_name_or_comment_is_ambiguous_not_a_success() -> None:
    from autoexp_mcp.executors.slurm import parse

    honest = (
        "JobId=7 JobName=autoexp-x UserId=root(0) JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0 RunTime=00:01:05"
    )
    st = parse(honest)
    assert (st.phase, st.ok, st.returncode, st.ran_s) == ("ended", False, 3, 64.0)  # never more than it ran
    for forged in (
        honest.replace("JobName=autoexp-x", "JobName=x JobState=COMPLETED ExitCode=0:0"),
        honest + " Comment=c\n   JobState=COMPLETED",
    ):
        st = parse(forged)
        assert (st.phase, st.ok) == ("ended", False) and "cannot be read unambiguously" in st.detail


@pytest.mark.parametrize(
    "arg",
    ["--job-name=mine", "-Jmine", "-vJmine", "--outp=/dev/null", "-o/dev/null", "--array=0-2", "-a0-2", "--wrap=x",
     "--exp=ALL", "--requeue", "--parsable", "-W", "--hold", "-D/tmp", "--open-mode=append"],
)  # fmt: skip
def test_sbatch_options_the_server_controls_are_refused_however_spelt(arg: str) -> None:
    from autoexp_mcp.config import parse_config
    from autoexp_mcp.errors import ConfigError

    data = {
        "experiment": {"tag": "t", "target": "t.txt", "eval": "python e.py"},
        "metric": [{"name": "score", "direction": "max"}],
        "executor": {"kind": "slurm", "extra_args": [arg]},
    }
    with pytest.raises(ConfigError, match="sets what the server must control"):
        parse_config(data, "autoexp.toml")
    for fine in (["--qos=short"], ["--exclude=node7"], ["-pgpu"], ["--mem=8G", "-c4"], ["--constraint=a100"]):
        data["executor"] = {"kind": "slurm", "extra_args": fine}
        parse_config(data, "autoexp.toml")


def test_ray_with_the_sandboxs_network_on_is_refused() -> None:
    from autoexp_mcp.config import parse_config
    from autoexp_mcp.errors import ConfigError

    data: dict[str, Any] = {
        "experiment": {"tag": "t", "target": "t.txt", "eval": "python e.py"},
        "metric": [{"name": "score", "direction": "max"}],
        "executor": {"kind": "ray"},
        "sandbox": {"network": True},
    }
    with pytest.raises(ConfigError, match="submit jobs of its own"):
        parse_config(data, "autoexp.toml")
    data["sandbox"]["mode"] = "none"
    parse_config(data, "autoexp.toml")


@pytest.mark.slurm
def test_a_repository_path_with_percent_signs_and_spaces_runs_on_slurm(tmp_path: Path) -> None:
    if slurm_missing():
        pytest.skip(slurm_missing())
    files = {"value.txt": "2\n", "evaluate.py": HARNESS, "autoexp.toml": harness_config(extra=executor_toml("slurm"))}
    repo = init_repo(tmp_path / "runs of 100%j 'q'", files)  # (two % make GitPython warn)
    view = first_eval(repo, WAIT_S)
    assert (view.status, view.metrics) == ("done", {"score": 2.0}), view
