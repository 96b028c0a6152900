"""Where eval runs execute: `local` (this machine, sandboxed), `slurm` or `ray`. An executor
starts one run and hands back a handle (`base.RunHandle`); the measurement, the metric
extraction and every decision stay in the server, whatever the executor."""

from __future__ import annotations

from pathlib import Path
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

    def start(self, plan: RunPlan, title: str, commit: str) -> RunHandle: ...

    def attach(self, plan: RunPlan, job_id: str, scratch: Path | None = None) -> RunHandle:
        """Follow a run an earlier server started (a scheduler's job, by its id)."""
        ...


class LocalExecutor:
    """The eval as a child process of the server (in the sandbox, where bubblewrap runs)."""

    name = "local"

    def ready(self) -> None:
        return None

    def describe(self) -> str:
        return "this machine"

    def start(self, plan: RunPlan, title: str, commit: str) -> RunHandle:
        return plan.start()

    def attach(self, plan: RunPlan, job_id: str, scratch: Path | None = None) -> RunHandle:
        raise NotImplementedError("a local run dies with its server: there is nothing to attach to")


def make(cfg: ExecutorConfig) -> Executor:
    if cfg.kind == "slurm":
        from .slurm import SlurmExecutor

        return SlurmExecutor(cfg)
    if cfg.kind == "ray":
        from .ray import RayExecutor

        return RayExecutor(cfg)
    return LocalExecutor()


def facts(handle: RunHandle) -> JobFacts | None:
    """The scheduler's facts about a run (None for a local one)."""
    got = getattr(handle, "facts", None)
    return got if isinstance(got, JobFacts) else None


__all__ = ["Executor", "JobFacts", "LocalExecutor", "RunHandle", "facts", "make"]
