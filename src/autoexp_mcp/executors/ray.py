"""Each eval run as a Ray job, submitted to the cluster's job API (the optional extra
`autoexp-mcp[ray]` installs the client).

The job's `working_dir` is a snapshot of the run's commit (plus the target as the run has
it), made for this run alone: no `.git`, `.autoexp/`, ledger or hold-out files, and the
run's launch script, named after its job, so that Ray unpacks it afresh instead of reusing a
directory an earlier run could have written into. Data too large to ship belongs on storage the nodes share, named by an
absolute path or an environment variable. Where the node has bubblewrap and the server
sandboxes its evals, the job's command runs in the same sandbox around its working dir.
The output is read back from Ray's job logs when the job ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import shlex
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import ExecutorConfig
from ..errors import EvalError
from ..runs import RunPlan, describe_exit
from . import launch
from .base import JobState, RemoteRun, windowed

# The run's launch script, in its working dir: unique to the run, so the snapshot's content hash,
# and with it Ray's unpacked copy, is new; and the job's entrypoint stays one short line in its log.
LAUNCH_FILE = ".autoexp-run.sh"
ENTRYPOINT_LINE = b"Running entrypoint for job "  # the last line Ray writes before the eval's output
# Ray unpacks a job's working dir at <temp dir>/session_<id>/runtime_resources/...: the temp dir,
# found from the working dir on the node, stands in the sandbox's command line for this word.
RAY_TEMP_WORD = Path("/autoexp-ray-temp-dir")
RAY_TEMP_LINES = (
    'ray_session="${PWD%/runtime_resources/*}"',
    'RAY_TEMP="${ray_session%/*}"',
    'case "$RAY_TEMP" in ""|/) RAY_TEMP="$PWD" ;; esac',  # an unknown layout: cover nothing but the working dir
)


def _client_class() -> Any:
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise EvalError(
            '[executor] kind = "ray" needs the Ray job client: pip install "autoexp-mcp[ray]" '
            "(or ray[default]) in the server's environment."
        ) from None
    # The client logs each upload at INFO on the server's stderr, a line per run: keep it to warnings.
    for name in ("ray", "ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return JobSubmissionClient


def _gist(message: str) -> str:
    """The line of a client error that says what went wrong: the last of a server's traceback
    (the client passes the dashboard's whole traceback on), else the first."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return f"{lines[0].split(':')[0]}: {lines[-1]}" if "Traceback" in message and len(lines) > 1 else lines[0]


def _ask(what: str, fn: Any, *args: Any) -> Any:
    """`fn(*args)` of the Ray client; EvalError saying `what` failed, LookupError for an unknown job."""
    try:
        return fn(*args)
    except Exception as e:  # the client raises RuntimeError, ConnectionError, requests errors
        text = _gist(str(e)) or type(e).__name__
        if "does not exist" in text or "not found" in text.lower():
            raise LookupError(text) from None
        raise EvalError(f"cannot {what}: {text}") from None


class RayBackend:
    name = "ray"

    def __init__(self, client: Any, log_path: Path) -> None:
        self.client = client
        self.log_path = log_path

    def look(self, job_id: str) -> JobState:
        try:
            info = _ask("ask Ray for the job's state", self.client.get_job_info, job_id)
        except LookupError:
            return JobState("unknown", detail="is not known to the Ray cluster (restarted, or the job was deleted)")
        status = str(getattr(info.status, "value", info.status))
        node = (info.driver_node_id or "")[:12] or None
        rc = info.driver_exit_code
        # Ray records when the job was submitted, not when its command started: an upper bound
        # of the run time, for a job an earlier server started.
        since = None
        if info.start_time:
            since = max(0.0, (info.end_time or time.time() * 1000) - info.start_time) / 1000
        if status == "PENDING":
            return JobState("pending", node, detail=info.message or status)
        if status == "RUNNING":
            return JobState("running", node, detail=status, since_submit_s=since)
        if status == "SUCCEEDED":
            return JobState("ended", node, rc if rc is not None else 0, ok=True, detail=status, since_submit_s=since)
        if status == "FAILED" and rc is not None:
            said = f"FAILED: the eval {describe_exit(rc, True)}"
            return JobState("ended", node, rc, detail=said, since_submit_s=since)
        why = "was stopped" if status == "STOPPED" else f"ended {status}"
        said = f"{why} ({(info.message or '').strip()[:300]})"
        return JobState("ended", node, rc, detail=said, since_submit_s=since)

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(LookupError):
            _ask(f"stop Ray job {job_id}", self.client.stop_job, job_id)

    def output(self, job_id: str) -> tuple[bytes, int]:
        try:
            text = _ask("read the Ray job's logs", self.client.get_job_logs, job_id)
        except LookupError as e:
            raise EvalError(str(e)) from None
        data = _eval_part(str(text).encode("utf-8", errors="replace"))
        with open(self.log_path, "wb") as f:  # the run's record, as for a local run
            f.write(data)
        return windowed(data), len(data)

    def output_tail(self, job_id: str, n: int) -> bytes:
        try:
            text = _ask("read the Ray job's logs", self.client.get_job_logs, job_id)
        except LookupError:
            return b""
        return _eval_part(str(text).encode("utf-8", errors="replace"))[-n:]


def _eval_part(log: bytes) -> bytes:
    """The job's log without Ray's own lines before the eval's output (they end with the line
    naming the entrypoint, which Ray writes before the eval starts, so the eval cannot move it)."""
    at = log.find(ENTRYPOINT_LINE)
    if at < 0:
        return log
    end = log.find(b"\n", at)
    return b"" if end < 0 else log[end + 1 :]


def snapshot(plan: RunPlan, commit: str, dest: Path) -> None:
    """The run's working dir: the commit's tree without what the eval must not see, the target
    as the worktree has it now (a drift run measures the incumbent's version)."""
    from ..gitops import Git

    try:
        data = Git(plan.root).archive(commit)
    except Exception as e:
        raise EvalError(f"cannot snapshot commit {commit[:12]} for Ray: {e}") from None
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    for hidden in plan.hidden():
        with contextlib.suppress(ValueError):
            inside = dest / hidden.relative_to(plan.root)
            if inside.is_dir() and not inside.is_symlink():
                shutil.rmtree(inside)
            elif inside.exists() or inside.is_symlink():
                inside.unlink()
    target = plan.cfg.experiment.target
    (dest / target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plan.root / target, dest / target, follow_symlinks=False)


class RayExecutor:
    """Submits each run as a Ray job and follows it until it ends."""

    name = "ray"

    def __init__(self, cfg: ExecutorConfig) -> None:
        self.cfg = cfg
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            cls = _client_class()
            try:
                self._client = cls(self.cfg.address)
            except Exception as e:
                raise EvalError(
                    f"cannot reach the Ray cluster at {self.cfg.address}: {_gist(str(e))}. "
                    "Nothing was run or counted. Start it (ray start --head), or fix [executor] address."
                ) from None
        return self._client

    def ready(self) -> None:
        _ask(f"reach the Ray cluster at {self.cfg.address}", self.client().get_version)

    def describe(self) -> str:
        res = [f"{k}={v}" for k, v in (("num_cpus", self.cfg.num_cpus), ("num_gpus", self.cfg.num_gpus)) if v]
        res += [f"{k}={v}" for k, v in self.cfg.entrypoint_resources.items()]
        return f"Ray jobs at {self.cfg.address}" + (f" ({', '.join(res)})" if res else "")

    def start(self, plan: RunPlan, name: str, commit: str) -> RemoteRun:
        client = self.client()
        scratch = plan.root / ".autoexp" / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="autoexp-ray-", dir=scratch))
        work = tmp / "snapshot"
        # Ray's own files (its logs, other jobs' working dirs: a hold-out's among them) lie around
        # the job's working dir, wherever Ray keeps them: covered, and the working dir bound again.
        inner = dataclasses.replace(plan, root=work, log_root=plan.root, cover=(RAY_TEMP_WORD,))
        try:
            snapshot(plan, commit, work)
            spec = inner.prepare(scratch_at=tmp / "run")
            writable = [f'mkdir -p "$PWD"/{shlex.quote(w)}' for w in plan.cfg.sandbox.writable]
            found = launch.from_spec(
                spec,
                sandboxed=plan.iso.active,
                places=((str(work), "$PWD"), (str(RAY_TEMP_WORD), "$RAY_TEMP")),
                prelude=(*RAY_TEMP_LINES, *writable),
            )
            body = launch.script(found, f"autoexp {name}")
            (work / LAUNCH_FILE).write_text(body)
            backend = RayBackend(client, spec.log_path)
            kwargs: dict[str, Any] = {
                "entrypoint": f"bash {LAUNCH_FILE}",
                "submission_id": name,
                "runtime_env": {"working_dir": str(work)},
                "metadata": {"autoexp_run": plan.run_id},
            }
            if self.cfg.num_cpus is not None:
                kwargs["entrypoint_num_cpus"] = self.cfg.num_cpus
            if self.cfg.num_gpus is not None:
                kwargs["entrypoint_num_gpus"] = self.cfg.num_gpus
            if self.cfg.entrypoint_resources:
                kwargs["entrypoint_resources"] = dict(self.cfg.entrypoint_resources)
            job_id = _ask("submit the eval to Ray", lambda: client.submit_job(**kwargs))
        finally:  # Ray has uploaded the snapshot by now: the node unpacks its own copy
            inner.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return RemoteRun(backend, str(job_id), spec, poll_s=self.cfg.poll_seconds)

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(EvalError), contextlib.suppress(LookupError):
            _ask(f"stop Ray job {job_id}", self.client().stop_job, job_id)

    def find(self, name: str) -> str | None:
        try:
            _ask("look the job up", self.client().get_job_info, name)
        except LookupError:
            return None
        return name

    def attach(self, plan: RunPlan, job_id: str, name: str) -> RemoteRun:
        spec = plan.spec_for_attach(None)
        backend = RayBackend(self.client(), spec.log_path)
        return RemoteRun(backend, job_id, spec, poll_s=self.cfg.poll_seconds, attached=True)
