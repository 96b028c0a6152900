"""The only module that talks to git (through GitPython's command wrapper).

No string that came from the agent ever becomes an option, a ref or a path here: refs are
either the experiment branch (built from the validated config tag) or full shas the server
recorded itself; the only path is the configured target; commit messages go after `-m` as
one argv element.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


def _sha(value: str) -> str:
    if not _SHA_RE.fullmatch(value):
        raise GitError(f"internal: {value!r} is not a full commit sha recorded by the server")
    return value


class Git:
    def __init__(self, path: Path) -> None:
        try:
            self.repo = git.Repo(path, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise GitError(
                f"{path} is not inside a git repository. Run `git init` and commit your files, "
                "or pass --repo pointing at one."
            ) from None
        if self.repo.bare or self.repo.working_tree_dir is None:
            raise GitError(f"{path} is a bare repository; autoexp-mcp needs a working tree.")
        self.root = Path(self.repo.working_tree_dir).resolve()
        self._g = self.repo.git
        self._identity_env: dict[str, str] | None = None

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

    def is_tracked(self, path: str) -> bool:
        return bool(str(self._g.ls_files("--error-unmatch", "--", path, with_exceptions=False)).strip())

    def tree_listing(self, sha: str) -> str:
        """`git ls-tree -r` of a recorded commit: one line per tracked file (mode, type, object, path)."""
        return str(self._g.ls_tree("-r", "--full-tree", _sha(sha)))

    def tracked_files(self) -> list[str]:
        """Every path in the index, repo-relative."""
        return [p for p in str(self._g.ls_files("-z")).split("\0") if p]

    def branch_commits(self, branch: str) -> set[str]:
        out = str(self._g.rev_list(f"refs/heads/{branch}"))
        return set(out.split())

    # --- changes ---------------------------------------------------------------------

    def ensure_excluded(self) -> None:
        """List the server's own files in .git/info/exclude so no reset or status sees them."""
        info = Path(self.repo.git_dir) / "info"
        info.mkdir(parents=True, exist_ok=True)
        exclude = info / "exclude"
        text = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        missing = [p for p in EXCLUDED if p not in text.splitlines()]
        if missing:
            sep = "" if not text or text.endswith("\n") else "\n"
            exclude.write_text(text + sep + "# autoexp-mcp\n" + "\n".join(missing) + "\n", encoding="utf-8")

    def checkout_branch(self, branch: str, start: str | None = None) -> None:
        """Switch to `branch`, creating it at `start` (a full sha) when it does not exist."""
        try:
            if start is not None:
                self._g.checkout("-b", branch, _sha(start))
            else:
                self._g.checkout(branch, "--")
        except git.GitCommandError as e:
            raise GitError(f"could not switch to branch {branch}: {e.stderr.strip()}") from None

    def _env(self) -> dict[str, str]:
        """The fallback identity for each part git would not find (author and committer apart)."""
        if self._identity_env is None:
            name = self._g.config("--get", "user.name", with_exceptions=False).strip()
            email = self._g.config("--get", "user.email", with_exceptions=False).strip()
            env: dict[str, str] = {}
            for var, value in _FALLBACK_IDENTITY.items():
                is_email = var.endswith("_EMAIL")
                if (email if is_email else name) or var in os.environ or (is_email and "EMAIL" in os.environ):
                    continue
                env[var] = value
            self._identity_env = env
        return self._identity_env

    def commit_file(self, path: str, message: str) -> str:
        """Commit exactly `path` (its working-tree content) with `message`; returns the new sha."""
        try:
            # maintenance.auto=false: no `git maintenance run --auto` after every experiment
            # (a few ms each); run `git gc` after a long run if the repository feels slow.
            # --quiet: no summary, whose diff stat nobody reads.
            argv = ["git", "-c", "maintenance.auto=false", "commit"]
            argv += ["--quiet", "--no-verify", "--cleanup=verbatim", "--only"]
            self._g.execute([*argv, "-m", message, "--", path], env=self._env())
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
