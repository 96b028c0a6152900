"""Opening files under the repository without following symlinks the eval may have planted.

An eval that runs without a sandbox can replace `.autoexp/runs` (or a metric file) with a
symlink to anywhere; the server must then neither write through it nor read through it. Each
component below the root is opened with O_NOFOLLOW, relative to its parent's descriptor.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parent_fd(root: Path, rel: str, make_dirs: bool) -> tuple[int, str]:
    """An fd of the directory holding `rel` (every component opened without following
    symlinks), and the last component's name."""
    p = PurePosixPath(rel)
    if not p.parts or p.is_absolute() or ".." in p.parts:
        raise ValueError(f"{rel!r} is not a path inside the repository")
    dfd = os.open(root, _DIR_FLAGS)
    try:
        for part in p.parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=dfd)
            except FileNotFoundError:
                if not make_dirs:
                    raise
                os.mkdir(part, 0o700, dir_fd=dfd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=dfd)
            os.close(dfd)
            dfd = nxt
    except BaseException:
        os.close(dfd)
        raise
    return dfd, p.parts[-1]


def open_beneath(root: Path, rel: str, flags: int, mode: int = 0o600, *, make_dirs: bool = False) -> int:
    """An fd for `root/rel`, refusing (OSError ELOOP or ENOTDIR) a symlink anywhere below `root`."""
    dfd, name = _parent_fd(root, rel, make_dirs)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    finally:
        os.close(dfd)


def create_beneath(root: Path, rel: str) -> int:
    """A fresh, empty file opened for reading and writing; whatever was at `rel` (a file, or a
    symlink planted there) is removed first, so nothing outside is ever written through it."""
    dfd, name = _parent_fd(root, rel, make_dirs=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            return os.open(name, flags, 0o600, dir_fd=dfd)
        except FileExistsError:
            os.unlink(name, dir_fd=dfd)
            return os.open(name, flags, 0o600, dir_fd=dfd)
    finally:
        os.close(dfd)


def read_beneath(root: Path, rel: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a regular file under `root`, never through a symlink."""
    fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or a device would block or never end
            raise OSError(f"{rel} is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


CLOCK_FILE = "autoexp-clock"  # touched to read the file system's own clock (fs_now)


@dataclass(frozen=True)
class Clock:
    """A file system's clock at one moment (fs_now): its device and a marker's ctime."""

    dev: int = -1
    ns: int = 0

    def settled(self, st: os.stat_result) -> bool:
        """Whether a stat can stand for the file's content from now on: last changed before this
        moment, on this file system (another one keeps time with its own granularity). A file
        changed since, or again within the same timestamp tick, could keep this very stat."""
        return st.st_dev == self.dev and st.st_ctime_ns < self.ns


def fs_now(directory: Path) -> Clock:
    """The clock of the file system holding `directory`, in its own timestamp granularity: the
    ctime of a marker there, just touched (git's rule for racy entries). A clock that settles
    nothing when the marker cannot be touched."""
    path = directory / CLOCK_FILE
    try:
        try:
            os.utime(path, follow_symlinks=False)
        except FileNotFoundError:
            directory.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        st = os.lstat(path)
    except OSError:
        return Clock()
    return Clock(st.st_dev, st.st_ctime_ns) if stat.S_ISREG(st.st_mode) else Clock()
