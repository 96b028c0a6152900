"""Where eval runs execute: `local` (this machine, sandboxed), `slurm` or `ray`. An executor
starts one run and hands back a handle (`base.RunHandle`); the measurement, the metric
extraction and every decision stay in the server, whatever the executor."""

from __future__ import annotations

import os
import re
from typing import Protocol

from ..config import ExecutorConfig
from ..runs import RunPlan
from .base import JobFacts, RunHandle


class Executor(Protocol):
    name: str

    def ready(self) -> None:
        """Raises EvalError, saying what to do, when runs cannot be started now."""
        ...

    def describe(self) -> str: ...

    def start(self, plan: RunPlan, name: str, commit: str) -> RunHandle:
        """Start one run; `name` names its job on the scheduler (see `job_name`)."""
        ...

    def find(self, name: str) -> str | None:
        """The id of the job called `name`, if the scheduler knows one: a server killed between
        submitting it and recording its id finds it again by the name it recorded first."""
        ...

    def cancel(self, job_id: str) -> None:
        """Stop a job by its id, if it still runs (errors are swallowed: best effort)."""
        ...

    def attach(self, plan: RunPlan, job_id: str, name: str) -> RunHandle:
        """Follow a run an earlier server started (a scheduler's job, by its id)."""
        ...


class LocalExecutor:
    """The eval as a child process of the server (in the sandbox, where bubblewrap runs)."""

    name = "local"

    def ready(self) -> None:
        return None

    def describe(self) -> str:
        return "this machine"

    def start(self, plan: RunPlan, name: str, commit: str) -> RunHandle:
        return plan.start()

    def find(self, name: str) -> str | None:
        return None

    def cancel(self, job_id: str) -> None:
        return None

    def attach(self, plan: RunPlan, job_id: str, name: str) -> RunHandle:
        raise NotImplementedError("a local run dies with its server: there is nothing to attach to")


def make(cfg: ExecutorConfig) -> Executor:
    if cfg.kind == "slurm":
        from .slurm import SlurmExecutor

        return SlurmExecutor(cfg)
    if cfg.kind == "ray":
        from .ray import RayExecutor

        return RayExecutor(cfg)
    return LocalExecutor()


def job_name(run_id: str, label: str) -> str:
    """A run's job name, recorded before it is submitted: unique (a re-run of a label after a
    restart gets a new one), and a valid Slurm job name and Ray submission id."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "-", label.removesuffix(".log"))
    return f"autoexp-{run_id}-{stem}-{os.urandom(3).hex()}"


def facts(handle: RunHandle) -> JobFacts | None:
    """The scheduler's facts about a run (None for a local one)."""
    got = getattr(handle, "facts", None)
    return got if isinstance(got, JobFacts) else None


__all__ = ["Executor", "JobFacts", "LocalExecutor", "RunHandle", "facts", "job_name", "make"]
