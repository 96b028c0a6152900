"""Target path checks, safe target writes, exact edits, and protected untracked files.

The target must resolve inside the repository, be a regular file and not a symlink, every
time it is touched. Writes are atomic. Protected untracked files (`protect` globs: data sets
outside git) are hashed once; later checks re-hash only files whose stat changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import GuardError

MAX_EDITS = 100
# The server's own files change on every call; a broad glob ("**") must not count them as data.
_NEVER_PROTECTED_DIRS = (".git/", ".autoexp/")
_NEVER_PROTECTED_FILES = ("results.tsv", "experiments.jsonl")


def resolve_target(root: Path, rel: str) -> Path:
    """The target's absolute path, refusing anything outside the repo or not a regular file."""
    root = root.resolve()
    path = root / rel
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise GuardError(
            f"target {rel} does not exist in {root}. Create and commit it, or fix [experiment].target."
        ) from None
    if stat.S_ISLNK(st.st_mode):
        raise GuardError(f"target {rel} is a symlink; the target must be a regular file inside the repository.")
    if not stat.S_ISREG(st.st_mode):
        raise GuardError(f"target {rel} is not a regular file.")
    real = Path(os.path.realpath(path))
    if real != path or not real.is_relative_to(root):
        raise GuardError(f"target {rel} resolves to {real}, outside {root} or through a symlinked directory.")
    if real.is_relative_to(root / ".git"):
        raise GuardError("the target may not be inside .git.")
    return real


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_content(content: str, max_bytes: int) -> bytes:
    if "\x00" in content:
        raise GuardError("the new content contains a NUL byte; the target must be text. Nothing was written.")
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError as e:
        raise GuardError(f"the new content is not valid UTF-8 ({e.reason}). Nothing was written.") from None
    if len(data) > max_bytes:
        raise GuardError(
            f"the new content is {len(data)} bytes, over the limit of {max_bytes} "
            "([experiment].max_target_bytes). Nothing was written."
        )
    return data


def read_text(path: Path, max_bytes: int) -> str:
    data = path.read_bytes()
    if len(data) > max_bytes:
        raise GuardError(f"the target is {len(data)} bytes, over max_target_bytes = {max_bytes}.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GuardError("the target is not valid UTF-8 text; autoexp-mcp only edits text files.") from None


def apply_edits(text: str, edits: Sequence[tuple[str, str]]) -> str:
    """Apply exact `(old, new)` replacements in order; each `old` must occur exactly once."""
    if not edits:
        raise GuardError("edits is empty: give at least one {old, new} pair, or pass content instead.")
    if len(edits) > MAX_EDITS:
        raise GuardError(f"at most {MAX_EDITS} edits per call; pass the whole content instead.")
    for i, (old, new) in enumerate(edits, 1):
        if old == "":
            raise GuardError(f"edit {i}: `old` is empty; quote the exact text to replace.")
        count = text.count(old)
        if count != 1:
            where = "does not occur" if count == 0 else f"occurs {count} times"
            raise GuardError(
                f"edit {i}: `old` {where} in the target (it must occur exactly once). "
                "Call read_target for the current text and quote more context. Nothing was written."
            )
        text = text.replace(old, new, 1)
    return text


def atomic_write_file(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` via a temp file, fsync and rename; keeps the file's mode
    (or uses `mode`, or 0o644 for a new file)."""
    if mode is None:
        mode = stat.S_IMODE(os.lstat(path).st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.autoexp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- protected untracked files --------------------------------------------------------


@dataclass
class _Entry:
    size: int
    mtime_ns: int
    ino: int
    sha: str
    # mtime can be set back with os.utime after an in-place edit; ctime cannot (without
    # changing the clock), so it is part of the stat key. 0 in snapshots from before it was.
    ctime_ns: int = 0

    def same_stat(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns) == (
            self.size,
            self.mtime_ns,
            self.ino,
            self.ctime_ns,
        )


class Protected:
    """Hashes of the untracked files matching the `protect` globs, with a stat cache."""

    def __init__(self, root: Path, globs: Sequence[str], store: Path, exclude: Sequence[str] = ()) -> None:
        self.root = root
        self.globs = list(globs)
        self.store = store
        # Paths a glob may match but that are not data: the target(s), which change by design.
        self.exclude = frozenset(exclude)
        self._entries: dict[str, _Entry] = {}

    def _files(self) -> list[str]:
        found: set[str] = set()
        for g in self.globs:
            for p in self.root.glob(g):
                # Before Python 3.13 a glob ending in `**` ("data/**") yields only directories:
                # a matched directory protects every file below it.
                below = p.rglob("*") if p.is_dir() and not p.is_symlink() else (p,)
                for f in below:
                    if f.is_file() and not f.is_symlink():
                        rel = f.relative_to(self.root).as_posix()
                        never = rel.startswith(_NEVER_PROTECTED_DIRS) or rel in _NEVER_PROTECTED_FILES
                        if not never and rel not in self.exclude:
                            found.add(rel)
        return sorted(found)

    def _hash(self, rel: str) -> _Entry:
        path = self.root / rel
        st = path.stat()
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1024 * 1024), b""):
                h.update(chunk)
        return _Entry(st.st_size, st.st_mtime_ns, st.st_ino, h.hexdigest(), st.st_ctime_ns)

    def load_or_snapshot(self) -> None:
        """Reuse the hashes recorded at the first start (so changes made while the server was
        down are caught); hash everything on the very first start."""
        if not self.globs:
            return
        if self.store.exists():
            raw = json.loads(self.store.read_text(encoding="utf-8"))
            if raw.get("globs") == self.globs:
                self._entries = {k: _Entry(**v) for k, v in raw["files"].items() if k not in self.exclude}
                return
        self._entries = {rel: self._hash(rel) for rel in self._files()}
        self._save()

    def _save(self) -> None:
        from .state import atomic_write

        payload = {"globs": self.globs, "files": {k: vars(v) for k, v in self._entries.items()}}
        atomic_write(self.store, json.dumps(payload).encode())

    def violations(self) -> list[str]:
        """Protected files that changed, appeared or disappeared since the snapshot."""
        if not self.globs:
            return []
        bad: list[str] = []
        current = set(self._files())
        recorded = set(self._entries)
        bad += [f"{p} (new)" for p in sorted(current - recorded)]
        bad += [f"{p} (deleted)" for p in sorted(recorded - current)]
        refreshed = False
        for rel in sorted(current & recorded):
            e = self._entries[rel]
            try:
                st = (self.root / rel).stat()
            except OSError:
                bad.append(f"{rel} (unreadable)")
                continue
            if e.same_stat(st):
                continue
            fresh = self._hash(rel)
            if fresh.sha != e.sha:
                bad.append(f"{rel} (content changed)")
            else:  # touched but identical: remember the new stat so it is not re-hashed
                self._entries[rel] = fresh
                refreshed = True
        if refreshed:
            self._save()
        return bad
