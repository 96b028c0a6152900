"""Eval slots: at most N evals at once on this machine, across every lane (server process) of
one repository.

A slot is a file lock under the repository's `.autoexp/slots/` (the main checkout's, shared by
its worktrees). flock is released by the kernel when its holder dies, so a killed server never
leaves a slot taken. With `[resources] gpus = [...]` each slot is one device, handed to the
run as CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import ResourcesConfig
from .errors import EvalError
from .gitops import Git

SLOTS_DIR = "slots"
POLL_S = 0.02  # how often a waiting run tries the slots again; small next to any eval


@dataclass(frozen=True)
class Slot:
    """The slot a run held: its number, its device (if any) and how long the run waited for it."""

    index: int
    device: str | None
    waited_s: float

    @property
    def name(self) -> str:
        return f"gpu {self.device}" if self.device is not None else f"slot {self.index}"

    @property
    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": self.device} if self.device is not None else {}


def shared_state_dir(git: Git) -> Path:
    """The repository's own `.autoexp/` (the main checkout's), also for a lane's worktree."""
    common = git.common_dir
    return common.parent / ".autoexp" if common.name == ".git" else common / "autoexp"


class SlotPool:
    def __init__(self, directory: Path, resources: ResourcesConfig) -> None:
        self.dir = directory
        self.count = resources.count
        self.devices = resources.gpus

    @classmethod
    def for_repo(cls, git: Git, resources: ResourcesConfig) -> SlotPool:
        return cls(shared_state_dir(git) / SLOTS_DIR, resources)

    def _try(self, index: int) -> int | None:
        path = self.dir / f"{index}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        mine = f"{os.getpid()}\n".encode()
        if os.pread(fd, 64, 0) != mine:  # the holder's pid, for people; rewritten only when it changes
            os.ftruncate(fd, 0)
            os.pwrite(fd, mine, 0)
        return fd

    @contextlib.contextmanager
    def hold(self, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Slot]:
        """Wait for a free slot (no timeout: the eval's timeout starts once it has one), hold
        it for the block. Raises EvalError when `cancelled()` turns true while waiting."""
        self.dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        while True:
            for i in range(self.count):
                fd = self._try(i)
                if fd is not None:
                    try:
                        device = self.devices[i] if self.devices else None
                        yield Slot(i, device, round(time.monotonic() - start, 3))
                    finally:
                        os.close(fd)
                    return
            if cancelled():
                raise EvalError("the run was cancelled while it waited for an eval slot")
            time.sleep(POLL_S)

    def busy(self) -> int:
        """How many slots are held now (by any process)."""
        taken = 0
        for i in range(self.count):
            fd = self._try(i) if self.dir.is_dir() else None
            if fd is None:
                taken += self.dir.is_dir()
            else:
                os.close(fd)
        return taken
