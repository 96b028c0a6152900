"""The harness watch: did anything but the target change since the server last looked?

The eval runs the target's code with the server's uid, so it can write anything the server
can: tracked files, git's index, .git itself. Nothing git reports is trusted here:

- tracked files are compared by bytes with the blobs of the recorded commit's tree (each
  file's git blob id, and its mode); after a verified check each path's lstat is remembered,
  and only paths whose stat changed are hashed again (ctime cannot be set back);
- index entries that hide a file from git (skip-worktree, assume-unchanged), differ from
  the tree, or are not in it at all, are reported and reset;
- .git's control files (config, hooks, info/, objects/info/, shallow, HEAD, every ref but
  the experiment's own branch) are compared with a snapshot taken before any eval of this
  server ran, and put back byte for byte.

The control files are checked first and without running git: a git command reading a
rewritten config could already run code (fsmonitor, filters, include.path).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import fsafe, guard
from .errors import GitError
from .gitops import Git, TreeEntry
from .state import STATE_DIR

_MODE_FILE = "100644"
_MODE_EXEC = "100755"
_MODE_LINK = "120000"
_TREES_CACHED = 4  # recorded commits whose listings are kept (incumbent, candidate, a few old)
# Directories (relative to the common git dir) whose every file is watched.
_CONTROL_DIRS = ("hooks", "info", "objects/info", "refs")
# Files under objects/info that git's own maintenance rewrites; core.commitGraph=false on every
# server git call makes the commit graph irrelevant to what the server reads.
_MAINTENANCE = ("objects/info/packs", "objects/info/commit-graph", "objects/info/commit-graphs/")
# Lanes' branches: other servers on this repository commit there all the time. Each lane checks
# its own branch (HEAD against the recorded commit, kept commits by `verify`).
_LANE_REFS = "refs/heads/autoexp/"
_COMMON_FILES = ("config", "config.worktree", "packed-refs", "shallow")
# Per-worktree files: a pending merge or cherry-pick changes what `git commit` records.
_WORKTREE_FILES = ("HEAD", "config.worktree", "commondir", "MERGE_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD")

StatKey = tuple[int, int, int, int, int]


def _stat_key(st: os.stat_result) -> StatKey:
    return (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def blob_id(data: bytes) -> str:
    """The sha1 git gives a blob with these bytes."""
    h = hashlib.sha1(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


@dataclass
class WatchResult:
    problems: list[str] = field(default_factory=list)  # what differed, one item each; tracked files by path
    target_changed: bool = False  # the target differs from the commit (allowed: reported apart)


@dataclass(frozen=True)
class _Tree:
    """A recorded commit's files (submodules aside) and every directory that holds them."""

    files: dict[str, TreeEntry]
    dirs: frozenset[str]
    attributes: bool = False  # it holds a .gitattributes: git may store a file other than its bytes

    @classmethod
    def of(cls, entries: Sequence[TreeEntry]) -> _Tree:
        files = {e.path: e for e in entries if e.kind == "blob"}
        dirs: set[str] = set()
        for rel in files:
            d = os.path.dirname(rel)
            while d and d not in dirs:
                dirs.add(d)
                d = os.path.dirname(d)
        attributes = any(os.path.basename(p) == ".gitattributes" for p in files)
        return cls(files, frozenset(dirs), attributes)


# A tracked path as last verified: its lstat (mode, size, mtime_ns, ctime_ns, ino), then the
# tree mode and blob it matched. A flat tuple: the fast path compares 20,000 of them per check.
_Seen = tuple[int, int, int, int, int, str, str]


# A control file's recorded state: None (absent), bytes (a regular file, with the exec bit as a
# last byte marker) or a tagged string for anything else (a symlink, a directory where a file was).
_Control = bytes | str | None


class HarnessWatch:
    """Compares the working tree, the index and .git's control files with recorded truth."""

    def __init__(self, git: Git, protected: guard.Protected, *, branch: str) -> None:
        self.git = git
        self.root = git.root
        self.protected = protected
        self.branch_ref = f"refs/heads/{branch}"
        self._dirs = {"common": git.common_dir, "worktree": git.git_dir}
        self._head_file = str(git.git_dir / "HEAD")
        # Control files by path string (a Path per file per check costs more than its lstat).
        self._control: dict[str, _Control] | None = None
        self._control_stats: dict[str, StatKey] = {}
        self._listings: dict[str, tuple[StatKey, list[str], list[str]]] = {}  # dir -> its stat, files, subdirs
        # The file systems' clocks, read at the start of each check (fsafe.fs_now): a stat is
        # remembered only when it settled before, since a second change within the same
        # timestamp tick would leave it unchanged. Until the first check nothing has settled.
        self._now_git = fsafe.Clock()
        self._now_tree = fsafe.Clock()
        self._dir_ids: dict[Path, tuple[int, int]] = {}
        self._trees: dict[str, _Tree] = {}
        self._seen: dict[str, _Seen] = {}
        self._index_key: bytes | None = None
        self._index_commit: str | None = None
        self._filemode: bool | None = None
        self._autocrlf: str | None = None

    # --- the .git control files ------------------------------------------------------------

    def snapshot(self) -> None:
        """Record .git's control files as they are now (before any eval of this server)."""
        self._control = dict(self._read_control())
        self._dir_ids = {d: _dir_id(d) for d in self._dirs.values()}
        self._control_stats = {}

    def control_digest(self) -> str:
        """A digest of the recorded control files, for a restarted server to compare with the
        one it recorded (a snapshot is taken now if none was)."""
        if self._control is None:
            self.snapshot()
        assert self._control is not None
        h = hashlib.sha256()
        for path in sorted(self._control):
            value = self._control[path]
            h.update(self._shown(path).encode() + b"\0")
            h.update(value.encode() if isinstance(value, str) else b"\1" + value if value is not None else b"\2")
            h.update(b"\0")
        return h.hexdigest()

    def _watched_files(self) -> Iterator[str]:
        common, wt = f"{self._dirs['common']}{os.sep}", f"{self._dirs['worktree']}{os.sep}"
        for name in _COMMON_FILES:
            yield common + name
        for name in _WORKTREE_FILES:
            yield wt + name
        own = common + self.branch_ref
        skip = tuple(common + x for x in (*_MAINTENANCE, _LANE_REFS))
        for sub in _CONTROL_DIRS:
            for path in self._walk(common + sub):
                if path != own and not path.startswith(skip):
                    yield path

    def _walk(self, top: str) -> Iterator[str]:
        """Every non-directory under `top` (and `top` itself if it is not a real directory),
        never following a symlink. A directory's listing is read again only when its stat
        changed (adding, removing or renaming an entry changes it; a stat not older than the
        file system's clock is not remembered)."""
        try:
            st = os.lstat(top)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode):
            yield top
            return
        key = _stat_key(st)
        cached = self._listings.get(top)
        if cached is not None and cached[0] == key:
            files, dirs = cached[1], cached[2]
        else:
            with os.scandir(top) as it:
                entries = list(it)
            files = [e.path for e in entries if not e.is_dir(follow_symlinks=False)]
            dirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
            if self._now_git.settled(st):
                self._listings[top] = (key, files, dirs)
        yield from files
        for d in dirs:
            yield from self._walk(d)

    def _read_control(self) -> Iterator[tuple[str, _Control]]:
        for path in self._watched_files():
            value = _read_entry(path)
            if path == self._head_file and isinstance(value, bytes) and not value.startswith(b"ref: "):
                continue  # a detached HEAD moves with every commit; the HEAD check covers it
            yield path, value

    def _control_changes(self, restore: bool) -> list[str]:
        if self._control is None:
            self.snapshot()
            return []
        recorded = self._control
        problems = [f"{self._shown(d)} was replaced" for d, ident in self._dir_ids.items() if _dir_id(d) != ident]
        if problems:
            return [p + " (the server cannot put a git directory back: restore it by hand)" for p in problems]
        current: dict[str, _Control] = {}
        for path in self._watched_files():
            try:
                st = os.lstat(path)
            except OSError:
                current[path] = None
                continue
            key = _stat_key(st)
            if self._control_stats.get(path) == key and path in recorded:
                current[path] = recorded[path]
                continue
            current[path] = _read_entry(path)
            if current[path] == recorded.get(path) and self._now_git.settled(st):
                self._control_stats[path] = key
        for path in sorted(set(recorded) | set(current)):
            before, now = recorded.get(path), current.get(path)
            if before == now or (path == self._head_file and path not in recorded):
                continue
            if os.path.basename(path) == "packed-refs" and self._packed(before) == self._packed(now):
                continue
            what = "added" if before is None else "removed" if now is None else "changed"
            problems.append(f"{self._described(Path(path))} {what}")
            if restore:
                self._put_back(Path(path), before)
                self._control_stats.pop(path, None)
        return problems

    def _packed(self, value: _Control) -> set[str]:
        """packed-refs' lines but the experiment branch's (which moves with every commit)."""
        if not isinstance(value, bytes):
            return {repr(value)}
        lines = value[:-1].decode(errors="replace").splitlines()
        return {ln for ln in lines if not ln.endswith(" " + self.branch_ref) and f" {_LANE_REFS}" not in ln}

    def _shown(self, path: Path | str) -> str:
        return os.path.relpath(path, self.root)

    def _described(self, path: Path) -> str:
        rel = path.relative_to(self._dirs["common"]).as_posix() if path.is_relative_to(self._dirs["common"]) else ""
        if rel.startswith("refs/"):
            return f"ref {rel}"
        if rel.startswith("hooks/"):
            return f"hook {self._shown(path)}"
        return self._shown(path)

    def _put_back(self, path: Path, value: _Control) -> None:
        """Make `path` (inside .git) hold its recorded state again; never follows a symlink."""
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)
            elif value is None or not isinstance(value, bytes) or not stat.S_ISREG(st.st_mode):
                os.unlink(path)
        if isinstance(value, bytes):
            _real_dirs(path.parent)
            guard.atomic_write_file(path, value[:-1], 0o755 if value[-1:] == b"x" else 0o644)
        elif isinstance(value, str) and value.startswith("symlink:"):
            _real_dirs(path.parent)
            os.symlink(value[len("symlink:") :], path)

    # --- the index -----------------------------------------------------------------------

    def _index_digest(self) -> bytes | None:
        try:
            return hashlib.sha256((self.git.git_dir / "index").read_bytes()).digest()
        except OSError:
            return None

    def index_vouched(self) -> bytes | None:
        """The index's digest when it is the one the last check verified, else None: taken
        just before the server's own git operation (see `vouch_index`)."""
        key = self._index_digest()
        return key if key is not None and key == self._index_key else None

    def vouch_index(self, before: bytes | None, commit: str) -> None:
        """The server's own commit of the target, or reset to `commit`, has just rewritten an
        index the last check verified (`before`, from `index_vouched`), under the lock with no
        eval alive: its entries are now those of `commit`'s tree, with no flags, so the next
        check need not list it again. Anything else leaves it to be listed and checked."""
        self._index_key = self._index_digest() if before is not None else None
        self._index_commit = commit

    def _index_changes(self, commit: str, tree: _Tree, target: str, restore: bool) -> list[str]:
        # Keyed by the index's content, not its stat: a rewrite within the same clock tick
        # cannot hide, and a quick loop need not wait out the racy-stat window.
        key = self._index_digest()
        if key is not None and key == self._index_key and commit == self._index_commit:
            return []
        problems: list[str] = []
        flagged: list[str] = []
        reset: list[str] = []
        in_index: set[str] = set()
        for e in self.git.index_entries():
            in_index.add(e.path)
            for flag in e.flags:
                problems.append(f"{flag} set on {e.path}")
                flagged.append(e.path)
            want = tree.files.get(e.path)
            if e.stage != 0:
                problems.append(f"{e.path} (unmerged in the index)")
                reset.append(e.path)
            elif want is None:
                problems.append(f"{e.path} (added to the index, not in the commit)")
                reset.append(e.path)
            elif (e.mode, e.sha) != (want.mode, want.sha) and e.path != target:
                problems.append(f"{e.path} (staged)")
                reset.append(e.path)
        missing = [p for p in tree.files if p not in in_index]
        problems += [f"{p} (removed from the index)" for p in missing]
        if problems and restore:
            self.git.clear_index_flags(sorted(set(flagged)))
            self.git.reset_paths(commit, sorted(set(reset + missing)))
        if not problems and key is not None:
            self._index_key, self._index_commit = key, commit
        else:
            self._index_key = None
        return problems

    # --- tracked files ---------------------------------------------------------------------

    def _tree(self, commit: str) -> _Tree:
        tree = self._trees.pop(commit, None)  # back in as the most recently used (the incumbent stays)
        if tree is None:
            tree = _Tree.of(self.git.tree_entries(commit))
            if len(self._trees) >= _TREES_CACHED:
                self._trees.pop(next(iter(self._trees)))
        self._trees[commit] = tree
        return tree

    def committed(self, parent: str, commit: str, target: str) -> None:
        """The server's own `git commit --only target` just made `commit` on `parent` (under the
        lock, no eval alive): its tree is the parent's with the target as git records the file
        now, so it need not be listed again. An unknown parent leaves it to be listed."""
        tree = self._trees.get(parent)
        old = tree.files.get(target) if tree is not None else None
        if tree is None or old is None or not self._stored_as_is(tree, target):
            return
        try:
            have = self._working(target, os.lstat(f"{self.root}{os.sep}{target}"))
        except OSError:
            return
        if have is None:
            return
        # With core.fileMode=false git keeps the recorded exec bit; so does the comparison.
        mode = old.mode if self._same_mode(have[0], old.mode) else have[0]
        files = {**tree.files, target: TreeEntry(mode, "blob", have[1], target)}
        if len(self._trees) >= _TREES_CACHED:
            self._trees.pop(next(iter(self._trees)))
        self._trees[commit] = _Tree(files, tree.dirs, tree.attributes)

    def _stored_as_is(self, tree: _Tree, target: str) -> bool:
        """Whether git stores the target's bytes unchanged: no attributes that could apply to it
        (a .gitattributes in the tree, an untracked one above the target, .git/info/attributes:
        eol conversion, filters, ident) and no core.autocrlf. Anything else is listed by git."""
        if tree.attributes or os.path.basename(target) == ".gitattributes":
            return False
        d = os.path.dirname(target)
        while True:
            if os.path.lexists(os.path.join(self.root, d, ".gitattributes")):
                return False
            if not d:
                break
            d = os.path.dirname(d)
        with contextlib.suppress(OSError):
            if os.stat(self._dirs["common"] / "info" / "attributes").st_size:
                return False
        if self._autocrlf is None:  # .git/config is a watched control file: read once
            self._autocrlf = self.git.config_value("core.autocrlf").lower()
        return self._autocrlf in ("", "false", "no", "off", "0")

    def _file_mode(self) -> bool:
        if self._filemode is None:
            self._filemode = self.git.config_bool("core.fileMode", True)
        return self._filemode

    def _working(self, rel: str, st: os.stat_result) -> tuple[str, str] | None:
        """(mode, blob id) of the working file, as git would record it; None if not a file."""
        path = self.root / rel
        if stat.S_ISLNK(st.st_mode):
            return _MODE_LINK, blob_id(os.fsencode(os.readlink(path)))
        if not stat.S_ISREG(st.st_mode):
            return None
        h = hashlib.sha1(b"blob %d\0" % st.st_size)
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return (_MODE_EXEC if st.st_mode & stat.S_IXUSR else _MODE_FILE), h.hexdigest()

    def _file_changes(self, tree: _Tree, target: str, restore: bool) -> tuple[list[str], bool]:
        changed: list[str] = []
        target_changed = False
        now = self._now_tree
        bad_dirs = _not_directories(self.root, tree.dirs)
        prefix = f"{self.root}{os.sep}"  # plain strings: a Path per file costs more than its lstat
        seen_get = self._seen.get
        lstat = os.lstat
        for rel, want in tree.files.items():
            try:
                st = lstat(prefix + rel) if not bad_dirs or _parent_ok(rel, bad_dirs) else None
            except OSError:
                st = None
            if st is not None and seen_get(rel) == (
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_ino,
                want.mode,
                want.sha,
            ):
                continue
            have = self._working(rel, st) if st is not None else None
            same = have is not None and have[1] == want.sha and self._same_mode(have[0], want.mode)
            if same:
                assert st is not None
                if now.settled(st):
                    self._seen[rel] = (*_stat_key(st), want.mode, want.sha)
                continue
            self._seen.pop(rel, None)
            if rel == target:
                target_changed = True
                continue
            changed.append(rel)
            if restore:
                changed += self._restore_file(rel, want, bad_dirs)
        return changed, target_changed

    def _same_mode(self, have: str, want: str) -> bool:
        if have == want:
            return True
        # With core.fileMode=false git ignores the exec bit: so does the comparison.
        return not self._file_mode() and {have, want} == {_MODE_FILE, _MODE_EXEC}

    def _restore_file(self, rel: str, want: TreeEntry, bad_dirs: set[str]) -> list[str]:
        """Write the blob's bytes back; returns a problem if that cannot be done safely."""
        if not _parent_ok(rel, bad_dirs):
            return [f"{rel} not restored: a directory above it is a symlink now; remove the symlink"]
        path = self.root / rel
        try:
            data = self.git.blob(want.sha)
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    return [f"{rel} not restored: it is a directory now; move it away"]
            if want.mode == _MODE_LINK:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.symlink(os.fsdecode(data), path)
            else:
                guard.atomic_write_file(path, data, 0o755 if want.mode == _MODE_EXEC else 0o644)
        except OSError as e:
            return [f"{rel} not restored: {e.strerror or e}"]
        except GitError as e:  # the blob is gone from .git: nothing to restore it from
            return [f"{rel} not restored: {e}"]
        return []

    # --- the whole check -------------------------------------------------------------------

    def check(self, expected_commit: str, *, target: str, restore: bool = True) -> WatchResult:
        """Everything but `target` must be as in `expected_commit`, and .git as recorded.
        With `restore`, what differs is put back (untracked files are never deleted)."""
        self._now_git = fsafe.fs_now(self._dirs["common"])
        self._now_tree = fsafe.fs_now(self.root / STATE_DIR)
        problems = self._control_changes(restore)
        if any(p.endswith("by hand)") for p in problems):
            return WatchResult(problems)
        head = self.git.head()
        if head != expected_commit:
            problems.append(f"HEAD moved to {head[:12]} (expected {expected_commit[:12]})")
            if restore:
                self.git.unstage_all(expected_commit)
        tree = self._tree(expected_commit)
        problems += self._index_changes(expected_commit, tree, target, restore)
        changed, target_changed = self._file_changes(tree, target, restore)
        # Tracked files first, by path alone: callers list them as the files that changed.
        problems = changed + problems
        problems += self.protected.violations()
        return WatchResult(list(dict.fromkeys(problems)), target_changed)


def _dir_id(path: Path) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else (0, 0)


# What git reads that can make it run code (filters, textconv, include of another file) in the
# commands a restarting server runs before it watches anything: compared with the digest the
# last server recorded in its authenticated state.
_CODE_FILES = ("config", "config.worktree", "info/attributes")


def code_config_digest(git: Git) -> str:
    """A digest of the .git files that could make git run code (see _CODE_FILES)."""
    h = hashlib.sha256()
    for base in dict.fromkeys((git.common_dir, git.git_dir)):
        for name in _CODE_FILES:
            value = _read_entry(base / name)
            h.update(name.encode() + b"\0")
            h.update(value.encode() if isinstance(value, str) else b"\1" + value if value is not None else b"\2")
    return h.hexdigest()


def _read_entry(path: Path | str) -> _Control:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "symlink:" + os.readlink(path)
    if not stat.S_ISREG(st.st_mode):
        return f"special:{stat.S_IFMT(st.st_mode)}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return "unreadable"
    return data + (b"x" if st.st_mode & stat.S_IXUSR else b"-")


def _real_dirs(path: Path) -> None:
    """Make `path` a real directory, replacing a symlink (inside .git only) on the way."""
    if path.is_symlink():
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)


def _not_directories(root: Path, dirs: frozenset[str]) -> set[str]:
    """Directories of tracked files that are no longer real directories (lstat on a file
    would follow a symlinked directory to a forged copy)."""
    bad = set()
    prefix = f"{root}{os.sep}"
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.lstat(prefix + d).st_mode):
                bad.add(d)
    return bad


def _parent_ok(rel: str, bad_dirs: set[str]) -> bool:
    d = os.path.dirname(rel)
    while d:
        if d in bad_dirs:
            return False
        d = os.path.dirname(d)
    return True
