"""The only module that talks to git (through GitPython's command wrapper).

No string that came from the agent ever becomes an option, a ref or a path here: refs are
either the experiment branch (built from the validated config tag) or full shas the server
recorded itself; the only path is the configured target; commit messages go after `-m` as
one argv element.

The eval runs code with the server's uid, so it can write .git and $HOME. Every git process
started here therefore runs with hooks, fsmonitor, signing, replace objects, the commit graph
and system/global config off, in an environment the server built (inherited GIT_* variables
are dropped), against the git directory and work tree found when the server started.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git

from .errors import GitError

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_FALLBACK_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoexp-mcp",
    "GIT_AUTHOR_EMAIL": "autoexp-mcp@localhost",
    "GIT_COMMITTER_NAME": "autoexp-mcp",
    "GIT_COMMITTER_EMAIL": "autoexp-mcp@localhost",
}
# Paths the server writes into the user's repository; never tracked, never reset.
EXCLUDED = ("/.autoexp/", "/results.tsv", "/experiments.jsonl")

# `-c` options on every git command line: command-line config beats anything in .git/config
# (and its include.path files), so what the eval wrote there cannot run code inside the
# server's git calls. /dev/null as hooksPath: no hook exists, whatever the hook event.
SAFE_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.commitGraph=false",  # a forged commit-graph file could name another root tree
    "core.attributesFile=/dev/null",  # $XDG_CONFIG_HOME/git/attributes is writable by the eval
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "gc.auto=0",
    "maintenance.auto=false",
)
# Inherited variables git may keep: the identity (tests and users pin it this way) and
# GitPython's own switches, which git never reads. Every other GIT_* variable is dropped.
_KEEP_VARS = frozenset(_FALLBACK_IDENTITY) | {"EMAIL"}
_ENV_BIN = shutil.which("env") or "/usr/bin/env"
TREES_CACHED = 4  # recorded commits whose tree listing is kept (the incumbent, the candidate, …)


def _sha(value: str) -> str:
    if not _SHA_RE.fullmatch(value):
        raise GitError(f"internal: {value!r} is not a full commit sha recorded by the server")
    return value


class _Cmd(git.cmd.Git):
    """GitPython's command wrapper, minus the GIT_* variables the server inherited.

    GitPython starts every child from a copy of os.environ and can only add to it, so the
    variables to drop (GIT_DIR, GIT_INDEX_FILE, GIT_CONFIG_PARAMETERS, ...) are removed by
    starting git through `env -u` (only when there are any: normally none)."""

    def execute(self, command: Any, *args: Any, **kwargs: Any) -> Any:
        ours = {*self.environment(), *(kwargs.get("env") or {})}
        stray = sorted(k for k in os.environ if k.startswith("GIT_") and k not in ours and _stray(k))
        if stray and isinstance(command, (list, tuple)):
            unset = [arg for k in stray for arg in ("-u", k)]
            command = [_ENV_BIN, *unset, *command]
        return super().execute(command, *args, **kwargs)


def _chunks(paths: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """Paths in groups small enough for one command line."""
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def _stray(var: str) -> bool:
    return var not in _KEEP_VARS and not var.startswith("GIT_PYTHON_")


def drop_inherited_git_vars() -> list[str]:
    """Remove inherited GIT_* variables from this process's environment (serve does this once at
    start; evals never see them anyway), so no git call has to go through `env -u`."""
    dropped = sorted(k for k in os.environ if k.startswith("GIT_") and _stray(k))
    for k in dropped:
        del os.environ[k]
    return dropped


class _Repo(git.Repo):
    GitCommandWrapperType = _Cmd


@dataclass(frozen=True)
class TreeEntry:
    mode: str  # "100644", "100755", "120000" (symlink), "160000" (submodule)
    kind: str  # "blob" or "commit"
    sha: str
    path: str


@dataclass(frozen=True)
class IndexEntry:
    tag: str  # `git ls-files -t -v`: H cached, S skip-worktree; lower case: assume-unchanged
    mode: str
    sha: str
    stage: int
    path: str

    @property
    def flags(self) -> list[str]:
        found = []
        if self.tag.upper() == "S":
            found.append("skip-worktree")
        if self.tag.islower():
            found.append("assume-unchanged")
        return found


class Git:
    def __init__(self, path: Path) -> None:
        try:
            self.repo = _Repo(path, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(
                f"{path} is not inside a git repository. Run `git init` and commit your files, "
                "or pass --repo pointing at one."
            ) from None
        if self.repo.bare or self.repo.working_tree_dir is None:
            raise GitError(f"{path} is a bare repository; autoexp-mcp needs a working tree.")
        self.root = Path(self.repo.working_tree_dir).resolve()
        self.git_dir = Path(self.repo.git_dir).resolve()
        self.common_dir = Path(self.repo.common_dir).resolve()
        self._g = self.repo.git
        self._trees: dict[str, tuple[TreeEntry, ...]] = {}
        # Read once, before any eval has run: later the user's global config is not read at all.
        self._identity_env = self._identity()
        options = [*SAFE_CONFIG, f"safe.directory={self.root}"]
        self._g.set_persistent_git_options(c=options)
        self._argv = ["git", *(arg for opt in options for arg in ("-c", opt))]
        self._g.update_environment(
            GIT_CONFIG_NOSYSTEM="1",
            GIT_CONFIG_GLOBAL=os.devnull,
            GIT_ATTR_NOSYSTEM="1",
            GIT_NO_REPLACE_OBJECTS="1",
            GIT_TERMINAL_PROMPT="0",
            # Pinned: a .git replaced by a gitfile, or core.worktree in a rewritten config,
            # must not move the server's git calls to another repository or tree.
            GIT_DIR=str(self.git_dir),
            GIT_WORK_TREE=str(self.root),
            **self._identity_env,
        )

    def _identity(self) -> dict[str, str]:
        """The identity git would use now (environment, then the normal config chain), with the
        fallback for each part it would not find (author and committer apart)."""
        pinned = {"GIT_DIR": str(self.git_dir), "GIT_WORK_TREE": str(self.root)}
        # The user's choice of global and system config counts here (and only here).
        pinned |= {k: os.environ[k] for k in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM") if k in os.environ}

        def config(key: str) -> str:
            argv = ["git", "-c", f"safe.directory={self.root}", "config", "--get", key]
            return str(self._g.execute(argv, with_exceptions=False, env=pinned)).strip()

        name, email = config("user.name"), config("user.email")
        env: dict[str, str] = {}
        for var, fallback in _FALLBACK_IDENTITY.items():
            if var in os.environ:
                continue  # git reads it from the inherited environment
            is_email = var.endswith("_EMAIL")
            configured = email if is_email else name
            if configured:
                env[var] = configured
            elif not (is_email and "EMAIL" in os.environ):
                env[var] = fallback
        return env

    # --- queries ---------------------------------------------------------------------

    def head(self) -> str:
        """The full sha HEAD points at, read from the refs without spawning git."""
        fast = self._head_from_files()
        if fast is not None:
            return fast
        try:
            return self.repo.head.commit.hexsha
        except ValueError:
            raise GitError(
                f"{self.root} has no commits yet. Commit your target and harness first "
                "(git add -A && git commit -m 'initial')."
            ) from None

    def _head_from_files(self) -> str | None:
        """HEAD from .git/HEAD and a loose ref; None (packed ref, detached oddities) means ask GitPython."""
        try:
            ref = (Path(self.repo.git_dir) / "HEAD").read_text().strip()
            if ref.startswith("ref: "):
                ref = (Path(self.repo.common_dir) / ref[5:]).read_text().strip()
        except OSError:
            return None
        return ref if _SHA_RE.fullmatch(ref) else None

    def current_branch(self) -> str | None:
        try:
            return str(self._g.symbolic_ref("--quiet", "--short", "HEAD")).strip()
        except git.GitCommandError:
            return None

    def branch_exists(self, branch: str) -> bool:
        try:
            self._g.rev_parse("--verify", "--quiet", f"refs/heads/{branch}")
            return True
        except git.GitCommandError:
            return False

    def resolve(self, rev: str) -> str:
        """Resolve a user-given revision (CLI only, never agent input) to a full sha."""
        if rev.startswith("-"):
            raise GitError(f"{rev!r} is not a revision")
        try:
            return str(self._g.rev_parse("--verify", "--end-of-options", f"{rev}^{{commit}}")).strip()
        except git.GitCommandError:
            raise GitError(f"{rev!r} is not a commit in {self.root}") from None

    def changed(self) -> list[str]:
        """Tracked paths that differ from HEAD (staged or not), repo-relative."""
        out = self._g.status("--porcelain=v1", "-z", "--untracked-files=no", "--no-renames")
        return [entry[3:] for entry in out.split("\0") if len(entry) >= 4]

    def show_file(self, sha: str, path: str) -> bytes:
        try:
            data = self._g.show(f"{_sha(sha)}:{path}", stdout_as_string=False, strip_newline_in_stdout=False)
        except git.GitCommandError:
            raise GitError(f"{path} does not exist in commit {sha[:12]}") from None
        assert isinstance(data, bytes)
        return data

    def archive(self, sha: str) -> bytes:
        """The commit's tree as a tar archive (a run's snapshot for a remote executor)."""
        data = self._g.archive("--format=tar", _sha(sha), stdout_as_string=False, strip_newline_in_stdout=False)
        assert isinstance(data, bytes)
        return data

    def is_tracked(self, path: str) -> bool:
        return bool(str(self._g.ls_files("--error-unmatch", "--", path, with_exceptions=False)).strip())

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether recorded commit `older` is an ancestor of (or is) `newer`."""
        try:
            self._g.merge_base("--is-ancestor", _sha(older), _sha(newer))
        except git.GitCommandError:
            return False
        return True

    def paths_changed(self, a: str, b: str) -> set[str]:
        """The paths whose entry (mode or content) differs between two recorded commits' trees."""
        ea = {e.path: (e.mode, e.sha) for e in self.tree_entries(a)}
        eb = {e.path: (e.mode, e.sha) for e in self.tree_entries(b)}
        return {p for p in ea.keys() | eb.keys() if ea.get(p) != eb.get(p)}

    def tracked_files(self) -> list[str]:
        """Every path in the index, repo-relative."""
        return [p for p in str(self._g.ls_files("-z")).split("\0") if p]

    def tree_entries(self, sha: str) -> tuple[TreeEntry, ...]:
        """Every file of a recorded commit's tree (recursive), read from the object store once
        (a commit never changes: the last few are kept for the watch and the harness hash)."""
        cached = self._trees.get(sha)
        if cached is not None:
            return cached
        out = self._g.ls_tree("-r", "-z", "--full-tree", _sha(sha), strip_newline_in_stdout=False)
        entries = []
        for record in str(out).split("\0"):
            if record:
                meta, path = record.split("\t", 1)
                mode, kind, obj = meta.split(" ")
                entries.append(TreeEntry(mode, kind, obj, path))
        if len(self._trees) >= TREES_CACHED:
            self._trees.pop(next(iter(self._trees)))
        self._trees[sha] = tuple(entries)
        return self._trees[sha]

    def index_entries(self) -> list[IndexEntry]:
        """Every index entry with its flags (`git ls-files -s -t -v`): read, never refreshed."""
        out = self._g.ls_files("-s", "-t", "-v", "-z", strip_newline_in_stdout=False)
        entries = []
        for record in str(out).split("\0"):
            if record:
                meta, path = record.split("\t", 1)
                tag, mode, obj, stage = meta.split(" ")
                entries.append(IndexEntry(tag, mode, obj, int(stage), path))
        return entries

    def clear_index_flags(self, paths: Sequence[str]) -> None:
        """Clear skip-worktree and assume-unchanged on `paths` (one flag per call: given both,
        git 2.39 clears only one)."""
        for chunk in _chunks(paths):
            self._g.update_index("--no-skip-worktree", "--", *chunk)
            self._g.update_index("--no-assume-unchanged", "--", *chunk)

    def reset_paths(self, sha: str, paths: Sequence[str]) -> None:
        """Make the index entries of `paths` those of commit `sha` (removed when not in it)."""
        for chunk in _chunks(paths):
            self._g.reset("--quiet", _sha(sha), "--", *chunk)

    def blob(self, sha: str) -> bytes:
        """A blob's bytes, unfiltered. Raises GitError when the object store lacks it."""
        try:
            data = self._g.cat_file("blob", _sha(sha), stdout_as_string=False, strip_newline_in_stdout=False)
        except git.GitCommandError as e:
            raise GitError(f"cannot read blob {sha[:12]}: {str(e.stderr or '').strip()[-300:]}") from None
        assert isinstance(data, bytes)
        return data

    def config_value(self, key: str) -> str:
        """A value from the repository's config as written ("" when unset)."""
        return str(self._g.config("--get", key, with_exceptions=False)).strip()

    def config_bool(self, key: str, default: bool) -> bool:
        """A boolean from the repository's config (read with the server's options)."""
        out = str(self._g.config("--type=bool", "--get", key, with_exceptions=False)).strip()
        return default if not out else out == "true"

    def branch_commits(self, branch: str) -> set[str]:
        out = str(self._g.rev_list(f"refs/heads/{branch}"))
        return set(out.split())

    # --- changes ---------------------------------------------------------------------

    def ensure_excluded(self) -> None:
        """List the server's own files in .git/info/exclude so no reset or status sees them."""
        info = self.common_dir / "info"  # git reads info/exclude from the common dir, also in a worktree
        info.mkdir(parents=True, exist_ok=True)
        exclude = info / "exclude"
        text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        missing = [p for p in EXCLUDED if p not in text.splitlines()]
        if missing:
            sep = "" if not text or text.endswith("\n") else "\n"
            exclude.write_text(text + sep + "# autoexp-mcp\n" + "\n".join(missing) + "\n", encoding="utf-8")

    def add_worktree(self, path: Path, branch: str, start: str | None) -> None:
        """A new worktree at `path` on `branch`, created at `start` (a full sha) when given."""
        where = ["-b", branch, str(path), _sha(start)] if start is not None else [str(path), branch]
        try:
            self._g.execute([*self._argv, "worktree", "add", "--quiet", *where])
        except git.GitCommandError as e:
            raise GitError(f"could not add a worktree for {branch} at {path}: {(e.stderr or '').strip()}") from None

    def merge_file(self, ours: Path, base: Path, theirs: Path) -> bool:
        """3-way merge of one file's versions into `ours` (git merge-file); False on a conflict."""
        argv = [*self._argv, "merge-file", "--quiet", "--", str(ours), str(base), str(theirs)]
        status, _, _ = self._g.execute(argv, with_extended_output=True, with_exceptions=False)
        if status < 0 or status > 127:
            raise GitError(f"git merge-file failed on {ours.name} (exit status {status})")
        return status == 0

    def checkout_branch(self, branch: str, start: str | None = None) -> None:
        """Switch to `branch`, creating it at `start` (a full sha) when it does not exist."""
        try:
            if start is not None:
                self._g.checkout("-b", branch, _sha(start))
            else:
                self._g.checkout(branch, "--")
        except git.GitCommandError as e:
            raise GitError(f"could not switch to branch {branch}: {e.stderr.strip()}") from None

    def commit_file(self, path: str, message: str) -> str:
        """Commit exactly `path` (its working-tree content) with `message`; returns the new sha."""
        try:
            # maintenance.auto=false (SAFE_CONFIG): no `git maintenance run --auto` after every
            # experiment (a few ms each); run `git gc` after a long run if the repository feels
            # slow. --quiet: no summary, whose diff stat nobody reads.
            argv = [*self._argv, "commit", "--quiet", "--no-verify", "--cleanup=verbatim", "--only"]
            self._g.execute([*argv, "-m", message, "--", path])
        except git.GitCommandError as e:
            raise GitError(f"git commit failed: {(e.stderr or e.stdout or '').strip()[-500:]}") from None
        return self.head()

    def reset_hard(self, sha: str) -> None:
        """Move the branch and the tracked files to a recorded commit (untracked files stay)."""
        self._g.reset("--hard", "--quiet", _sha(sha))

    def restore(self, sha: str, paths: list[str]) -> None:
        """Put tracked `paths` back as they are in commit `sha` (index and working tree)."""
        if paths:
            self._g.checkout(_sha(sha), "--", *paths)

    def unstage_all(self, sha: str) -> None:
        self._g.reset("--quiet", _sha(sha))
