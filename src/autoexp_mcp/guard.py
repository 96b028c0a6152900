"""Target path checks, safe target writes, exact edits, and protected untracked files.

The target must resolve inside the repository, be a regular file and not a symlink, every
time it is touched. Writes are atomic. Protected untracked files (`protect` globs: data sets
outside git) are hashed once (symlinks by their link text, never followed); later checks
re-hash only files whose stat changed. The snapshot is signed with the user's key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import auth, fsafe
from .errors import GuardError, IntegrityError

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


def atomic_write_file(path: Path, data: bytes, mode: int | None = None, *, durable: bool = True) -> None:
    """Replace `path` with `data` via a temp file, fsync (unless not `durable`) and rename; keeps
    the file's mode (or uses `mode`, or 0o644 for a new file)."""
    if mode is None:
        mode = stat.S_IMODE(os.lstat(path).st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.autoexp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --- protected untracked files --------------------------------------------------------

_PROTECT_PURPOSE = "protect"  # what the snapshot's mac is for (auth.seal)
_HASH_CHUNK_BYTES = 1024 * 1024


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"  # a FIFO, socket or device: recorded by type, never opened


@dataclass
class _Entry:
    size: int
    mtime_ns: int
    ino: int
    sha: str  # of the content; of the link text for a symlink; the file type for "other"
    # mtime can be set back with os.utime after an in-place edit; ctime cannot (without
    # changing the clock), so it is part of the stat key. 0 in snapshots from before it was.
    ctime_ns: int = 0
    kind: str = "file"

    def same_stat(self, st: os.stat_result) -> bool:
        return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, _kind(st.st_mode)) == (
            self.size,
            self.mtime_ns,
            self.ino,
            self.ctime_ns,
            self.kind,
        )


def _below(path: Path) -> Iterator[Path]:
    """`path` itself, or every entry below it when it is a directory (not a link to one).
    Symlinks are listed, never followed: a link added inside a protected directory is one
    more entry, and what it points to is not the data."""
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            yield path
            return
    except OSError:
        return
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:  # unreadable: the files it held show as deleted
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            else:
                yield Path(e.path)


def _type_digest(st: os.stat_result) -> str:
    return f"type {stat.S_IFMT(st.st_mode):o}"


def _hash_file(path: Path) -> tuple[os.stat_result, str]:
    # O_NOFOLLOW: no link swapped in since the lstat; O_NONBLOCK: nor a FIFO that hangs the open.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced since the lstat
            return st, _type_digest(st)
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(_HASH_CHUNK_BYTES), b""):
            h.update(chunk)
    return st, h.hexdigest()


class Protected:
    """Hashes of the untracked files matching the `protect` globs, with a stat cache.

    The snapshot (`store`) is signed with the user's key (`auth`): the eval could delete or
    rewrite it along with the data. Once an eval has run, a snapshot that is missing or not
    signed by this server is refused rather than taken again."""

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
                # a matched directory protects every entry below it.
                for f in _below(p):
                    rel = f.relative_to(self.root).as_posix()
                    never = rel.startswith(_NEVER_PROTECTED_DIRS) or rel in _NEVER_PROTECTED_FILES
                    if not never and rel not in self.exclude:
                        found.add(rel)
        return sorted(found)

    def _hash(self, rel: str, now: fsafe.Clock) -> _Entry:
        """The entry as it is; its stat is kept for the next look only when older than `now`
        (fsafe.fs_now): a change within the same timestamp tick would leave it unchanged."""
        path = self.root / rel
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            digest = sha256(os.fsencode(os.readlink(path)))
        elif stat.S_ISREG(st.st_mode):
            st, digest = _hash_file(path)
        else:
            digest = _type_digest(st)
        ctime = st.st_ctime_ns if now.settled(st) else -1  # -1 matches no stat: hashed again
        return _Entry(st.st_size, st.st_mtime_ns, st.st_ino, digest, ctime, _kind(st.st_mode))

    def load_or_snapshot(self, *, under_way: bool = False) -> None:
        """Reuse the hashes recorded at the first start (so changes made while the server was
        down are caught); hash everything on the very first start, and when the (committed)
        globs changed. `under_way`: an eval has run in this experiment, so a snapshot that is
        missing or not signed by this server is refused (IntegrityError), not taken again:
        the eval could have changed the data and deleted the snapshot."""
        if not self.globs:
            return
        raw = self._load(under_way)
        if raw is not None and raw.get("globs") == self.globs:
            self._entries = {k: _Entry(**v) for k, v in raw["files"].items() if k not in self.exclude}
            return
        now = fsafe.fs_now(self.store.parent)
        self._entries = {rel: self._hash(rel, now) for rel in self._files()}
        self._save()

    def _load(self, under_way: bool) -> dict[str, Any] | None:
        """The signed snapshot; None when there is none to trust and nothing has run yet."""
        verdict: auth.Verdict | None = None  # None: there is no snapshot at all
        payload: Any = None
        try:
            payload = json.loads(self.store.read_bytes())
        except FileNotFoundError:
            pass
        except ValueError:
            verdict = auth.Verdict.MISSING
        else:
            verdict = auth.unseal(payload, _PROTECT_PURPOSE) if isinstance(payload, dict) else auth.Verdict.MISSING
        if verdict is auth.Verdict.OK:
            return payload
        if not under_way:
            return None  # no eval has run: nothing in the data can be its doing
        rel = self._store_rel()
        why = f"{rel} is missing" if verdict is None else auth.explain(rel, verdict)
        raise IntegrityError(
            f"{why}, although evals have run in this experiment. The server will not take a fresh snapshot of the "
            "protected data: an eval could have changed the data and removed the snapshot with it. Restore the "
            f"{rel} the server wrote, and check the protected data ({', '.join(self.globs)}) against your own "
            "copy. To give this experiment up instead, move .autoexp/state.json, .autoexp/protect.json, "
            "results.tsv and experiments.jsonl aside and start a new tag.",
            [rel],
        )

    def _store_rel(self) -> str:
        try:
            return self.store.relative_to(self.root).as_posix()
        except ValueError:
            return str(self.store)

    def _save(self) -> None:
        from .state import atomic_write

        payload = {"globs": self.globs, "files": {k: vars(v) for k, v in self._entries.items()}}
        atomic_write(self.store, json.dumps(auth.seal(payload, _PROTECT_PURPOSE)).encode())

    def violations(self) -> list[str]:
        """Protected entries that changed, appeared or disappeared since the snapshot."""
        if not self.globs:
            return []
        bad: list[str] = []
        current = set(self._files())
        recorded = set(self._entries)
        bad += [f"{p} (new)" for p in sorted(current - recorded)]
        bad += [f"{p} (deleted)" for p in sorted(recorded - current)]
        refreshed = False
        now = fsafe.fs_now(self.store.parent)
        for rel in sorted(current & recorded):
            e = self._entries[rel]
            try:
                if e.same_stat(os.lstat(self.root / rel)):
                    continue
                fresh = self._hash(rel, now)
            except OSError:
                bad.append(f"{rel} (unreadable)")
                continue
            if fresh.kind != e.kind:
                bad.append(f"{rel} ({e.kind} replaced by a {fresh.kind})")
            elif fresh.sha != e.sha:
                bad.append(f"{rel} ({'symlink target' if e.kind == 'symlink' else 'content'} changed)")
            else:  # touched but identical: remember the new stat so it is not re-hashed
                self._entries[rel] = fresh
                refreshed = True
        if refreshed:
            self._save()
        return bad
