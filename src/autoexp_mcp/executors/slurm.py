"""Each eval run as a Slurm batch job, through the Slurm commands (sbatch, scontrol, scancel):
no Python dependency, and the same commands a user would type.

The job runs in the lane's worktree, which must be on a file system the nodes share; its
output goes to the run's log under `.autoexp/runs/`, which the server reads after the job
ends (and which a sandboxed eval cannot see). The job's time limit is the eval's timeout plus
a margin; the server itself cancels the job at the timeout, counted from when it started to
run, so time in the queue is not eval time. State is read with `scontrol show job`, which
needs no accounting database.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from ..config import ExecutorConfig
from ..errors import EvalError
from ..runs import RunPlan, describe_exit
from . import launch
from .base import JobState, RemoteRun, windowed_file

COMMAND_TIMEOUT_S = 30.0  # one sbatch/scontrol/scancel call
TIME_MARGIN_S = 60  # the job's own limit, past the eval's timeout: the server cancels first

PENDING = {"PENDING", "CONFIGURING", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED", "RESIZING"}
RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
REQUEUED = {"REQUEUED", "REQUEUE_FED"}
WHY = {
    "CANCELLED": "was cancelled by the scheduler or an administrator",
    "TIMEOUT": "reached its Slurm time limit",
    "NODE_FAIL": "was lost: its node failed",
    "PREEMPTED": "was preempted",
    "BOOT_FAIL": "could not start: its node failed to boot",
    "DEADLINE": "missed its deadline",
    "OUT_OF_MEMORY": "ran out of memory",
}


def _run(argv: list[str], what: str, whole: bool = False) -> str:
    """A Slurm command's output; EvalError saying `what` failed (with its last line of
    complaint, or all of it when `whole`) when it cannot run or exits non-zero."""
    exe = shutil.which(argv[0])
    if exe is None:
        raise EvalError(
            f"cannot {what}: the Slurm command {argv[0]!r} is not on PATH. Install the Slurm client "
            '(Debian: apt install slurm-client) or set [executor] kind = "local".'
        )
    try:
        res = subprocess.run(
            [exe, *argv[1:]],
            capture_output=True,
            encoding="utf-8",
            errors="replace",  # a job's name or comment may hold any bytes
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise EvalError(f"cannot {what}: {argv[0]} did not answer within {COMMAND_TIMEOUT_S:g}s") from None
    if res.returncode != 0:
        said = res.stderr.strip() or res.stdout.strip() or f"exit status {res.returncode}"
        raise EvalError(f"cannot {what}: {said if whole else said.splitlines()[-1]}")
    return res.stdout


def time_limit(timeout_s: float) -> str:
    """sbatch --time for an eval timeout: whole minutes, with a margin for the server's cancel."""
    return str(max(1, math.ceil((timeout_s + TIME_MARGIN_S) / 60)))


def _seconds(value: str | None) -> float | None:
    """Slurm's [D-][HH:]MM:SS as seconds."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", value or "")
    if not m:
        return None
    d, h, mi, se = (int(x) if x else 0 for x in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + se)


def _stamp(value: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(value or "", "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def parse(text: str) -> JobState:
    """A job's state from `scontrol show job -o`: Key=Value words. The job's name and comment
    are free text a run could set to look like fields, so each field read must occur exactly
    once; a record where one does not is ambiguous, and the run a crash."""
    fields: dict[str, str] = {}
    for key in ("JobState", "ExitCode", "Reason", "BatchHost", "NodeList", "RunTime", "SubmitTime", "StartTime"):
        found = re.findall(rf"(?:^|\s){key}=(\S*)", text)
        if len(found) > 1:
            return JobState(
                "ended",
                detail="cannot be read unambiguously: its name or comment holds Slurm's field names "
                f"({key}= occurs {len(found)} times); the run must not rename its job",
            )
        if found:
            fields[key] = found[0]
    state = (fields.get("JobState") or "UNKNOWN").split("+")[0]
    node = fields.get("BatchHost") or fields.get("NodeList")
    node = None if node in (None, "", "(null)", "None assigned") else node
    reason = fields.get("Reason") or "None"
    code, sig = (int(x) for x in (fields.get("ExitCode") or "0:0").split(":")[:2])
    rc = -sig if sig else code
    where = f" on {node}" if node else ""
    # Whole seconds between two truncated time stamps: up to a second more than the run took.
    # Less that second, it never counts more than the eval ran (no false timeout from it).
    ran = _seconds(fields.get("RunTime"))
    ran = max(0.0, ran - 1) if ran is not None else None
    submit, start = _stamp(fields.get("SubmitTime")), _stamp(fields.get("StartTime"))
    waited = start - submit if submit is not None and start is not None and state not in PENDING else None
    if state in PENDING:
        return JobState("pending", node, detail=f"{state} ({reason})")
    if state in RUNNING:
        return JobState("running", node, detail=state, ran_s=ran, waited_s=waited)
    if state == "COMPLETED":
        return JobState("ended", node, rc, True, f"COMPLETED{where}", ran, waited)
    because = f" ({reason})" if reason not in ("None", "NonZeroExitCode") else ""
    if state == "FAILED":
        said = f"FAILED{where}: the eval {describe_exit(rc, True)}{because}"
        return JobState("ended", node, rc, False, said, ran, waited)
    if state in REQUEUED:
        return JobState("ended", node, rc, False, f"was requeued{where} (preempted, or its node failed)", ran, waited)
    why = WHY.get(state, f"ended {state}")
    return JobState("ended", node, rc, False, f"{why}{where} (Slurm state {state}, reason {reason})", ran, waited)


class SlurmBackend:
    name = "slurm"

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path

    def look(self, job_id: str) -> JobState:
        try:
            out = _run(["scontrol", "show", "job", "-o", job_id], "ask Slurm for the job's state")
        except EvalError as e:
            if "Invalid job id" in str(e):
                return JobState("unknown", detail="is no longer known to Slurm (purged after it ended, or lost)")
            raise
        st = parse(out)
        if st.phase == "ended" and "requeued" in st.detail:
            self.cancel(job_id)  # a rerun would measure the same commit twice: stop it
        return st

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id], f"cancel Slurm job {job_id}")

    def output(self, job_id: str) -> tuple[bytes, int]:
        return windowed_file(self.log_path)

    def output_tail(self, job_id: str, n: int) -> bytes:
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read()


def scratch_dir(plan: RunPlan, name: str) -> Path:
    """The run's scratch directory, on the shared file system and named after its job."""
    return plan.root / ".autoexp" / "scratch" / name


class SlurmExecutor:
    """Submits each run with sbatch and follows it until it ends."""

    name = "slurm"

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg

    def ready(self) -> None:
        """Raises EvalError, saying what to do, when the Slurm controller does not answer."""
        try:
            out = _run(["scontrol", "ping"], "reach the Slurm controller", whole=True)
        except EvalError as e:
            said = str(e)
        else:
            if re.search(r"\bis UP\b", out):
                return
            said = out
        first = next((line.strip() for line in said.splitlines() if line.strip()), said)
        raise EvalError(
            f"the Slurm controller does not answer ({first}), so no run can be submitted; nothing was run or "
            'counted. Start slurmctld (or check SLURM_CONF), then call again; or set [executor] kind = "local".'
        )

    def describe(self) -> str:
        opts = " ".join(self._options(60.0)) or "default options"
        return f"Slurm jobs (sbatch {opts})"

    def _options(self, timeout_s: float) -> list[str]:
        c = self.cfg
        opts = [f"--time={c.time or time_limit(timeout_s)}"]
        for flag, value in (("partition", c.partition), ("account", c.account), ("gres", c.gres)):
            if value:
                opts.append(f"--{flag}={value}")
        if c.cpus_per_task:
            opts.append(f"--cpus-per-task={c.cpus_per_task}")
        return [*opts, *c.extra_args]

    def start(self, plan: RunPlan, name: str, commit: str) -> RemoteRun:
        spec = plan.prepare(scratch_at=scratch_dir(plan, name))
        scratch = plan.scratch
        assert scratch is not None
        channel = scratch / "channel" if spec.metric_channel else None
        body = launch.script(
            launch.from_spec(spec, sandboxed=plan.iso.active, channel=str(channel) if channel else None),
            f"autoexp {name}",
        )
        script = scratch / "job.sh"
        script.write_text(body)
        argv = [
            "sbatch",
            "--parsable",
            "--no-requeue",
            "--export=NONE",
            f"--job-name={name}",
            f"--chdir={plan.root}",
            f"--output={str(spec.log_path).replace('%', '%%')}",  # sbatch expands %j, %x, ... in it
            *self._options(spec.timeout_s),
            str(script),
        ]
        job_id = _run(argv, "submit the eval to Slurm").strip().split(";")[0]
        if not job_id.isdigit():
            raise EvalError(f"cannot submit the eval to Slurm: sbatch answered {job_id!r}, not a job id")
        return RemoteRun(SlurmBackend(spec.log_path), job_id, spec, poll_s=self.cfg.poll_seconds, channel=channel)

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(EvalError):
            _run(["scancel", job_id], f"cancel Slurm job {job_id}")

    def find(self, name: str) -> str | None:
        """The id of the job named `name`, if Slurm knows one (running, or ended lately)."""
        out = _run(["squeue", "-h", "-t", "all", "-n", name, "-o", "%i"], "look the job up in Slurm")
        ids = [w for w in out.split() if w.isdigit()]
        return ids[0] if ids else None

    def attach(self, plan: RunPlan, job_id: str, name: str) -> RemoteRun:
        """Follow a job an earlier server submitted for this run (its log is where it was)."""
        scratch = scratch_dir(plan, name)
        spec = plan.spec_for_attach(scratch)
        channel = scratch / "channel" if scratch.is_dir() and spec.metric_channel else None
        return RemoteRun(
            SlurmBackend(spec.log_path), job_id, spec, poll_s=self.cfg.poll_seconds, channel=channel, attached=True
        )
