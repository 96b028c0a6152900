"""The lane's working tree as the phase machine sees it: the target's text in recorded commits,
putting the target back at one of them, and what else differs from a recorded commit (the
harness watch, and the harness every commit of a stage must hold).
"""

from __future__ import annotations

from pathlib import Path

from . import guard, opening
from .errors import IntegrityError
from .gitops import Git
from .watch import HarnessWatch

TEXTS_CACHED = 4  # target versions kept (the incumbent, the candidate, their parents)


class Tree:
    """`target` is the current stage's target path (repo-relative) in every call."""

    def __init__(self, git: Git, protected: guard.Protected, branch: str, *, sealed: bool = False) -> None:
        self.git = git
        # Evals cannot reach .git (the sandbox hides it), so nothing but git itself writes its objects.
        self.sealed = sealed
        self.protected = protected
        self.branch = branch
        self._texts: dict[str, str] = {}
        self._watch: HarnessWatch | None = None  # made at the first check, before any eval of this server
        self._harness_ok: dict[str, set[str]] = {}  # commit -> the harnesses its tree was verified to hold
        self._clean: str | None = None  # the commit the last check found everything as in
        # The commit whose run starts next, made on a tree just found clean (the one-call
        # experiment): its pre-run check is that check.
        self._verified: str | None = None

    def target_path(self, target: str) -> Path:
        return guard.resolve_target(self.git.root, target)

    def text_at(self, sha: str, target: str) -> str:
        """The target's text in commit `sha` (cached: commits never change)."""
        key = f"{sha}:{target}"
        cached = self._texts.get(key)
        if cached is None:
            cached = self.git.show_file(sha, target).decode("utf-8", "replace")
            if len(self._texts) >= TEXTS_CACHED:
                self._texts.pop(next(iter(self._texts)))
            self._texts[key] = cached
        return cached

    def remember(self, sha: str, target: str, text: str) -> None:
        """The target's text as just committed in `sha` (saves reading it back from git)."""
        self._texts[f"{sha}:{target}"] = text

    def put_target(self, sha: str, target: str) -> bool:
        """Whether the target on disk differs from its version in `sha`; if so, put it back."""
        want = self.text_at(sha, target).encode("utf-8")
        path = self.target_path(target)
        if path.read_bytes() == want:
            return False
        guard.atomic_write_file(path, want)
        return True

    def own_commit(self, target: str, message: str, *, run_next: bool = False) -> str:
        """Commit the target (the server's own git operation, under the lock). `run_next`: its
        eval run starts next under the same lock, so the check just made stands for the run's."""
        before = self._watch.index_vouched() if self._watch is not None else None
        parent = self.git.head()
        clean = self._clean == parent
        self._clean = self._verified = None
        sha = self.git.commit_file(target, message)
        if clean and run_next:
            self._verified = sha
        if self._watch is not None:
            self._watch.vouch_index(before, sha)
            self._watch.committed(parent, sha, target)
        if self.sealed and parent in self._harness_ok:
            # Git built the new tree from the parent's verified tree objects, which no eval could
            # reach since: it holds the parent's harness, so need not be listed again to show it.
            self._harness_ok[sha] = set(self._harness_ok[parent])
        return sha

    def own_reset(self, commit: str) -> None:
        """Reset to `commit` (the server's own revert, under the lock)."""
        before = self._watch.index_vouched() if self._watch is not None else None
        self._clean = self._verified = None
        self.git.reset_hard(commit)
        if self._watch is not None:
            self._watch.vouch_index(before, commit)

    def problems(
        self,
        expected_head: str,
        target: str,
        harness: str | None,
        *,
        restore: bool = True,
        seen: list[str] | None = None,
        before_run: bool = False,
    ) -> list[str]:
        """What differs from `expected_head` but the target: tracked files (by bytes), git's
        index, .git's control files, changed protected data (`protect` globs, which also catch
        new untracked files that match them). With `restore` all but protected data is put back
        (watch.py). `seen` gets the target when it differs from the commit. `harness` is the
        harness recorded when the stage started, if any.

        `before_run`: the check just before an eval run, skipped for the run of a commit made
        with `run_next` (the commit's own check, a moment before under the same lock). The
        check after the run compares everything with the commit all the same."""
        vouched, self._verified, self._clean = self._verified, None, None
        if before_run and seen is None and vouched == expected_head:
            return []
        if self._watch is None:
            self._watch = HarnessWatch(self.git, self.protected, branch=self.branch)
        result = self._watch.check(expected_head, target=target, restore=restore)
        if seen is not None:
            seen[:] = [target] if result.target_changed else []
        bad = result.problems
        # Every commit of a stage holds the harness recorded when the stage started: a tree
        # that does not was read from rewritten objects in .git (git does not re-hash them).
        if harness is not None and harness not in self._harness_ok.get(expected_head, ()):
            if opening.harness_hash(self.git, expected_head, target) == harness:
                self._harness_ok.setdefault(expected_head, set()).add(harness)
            else:
                bad.append(
                    f"commit {expected_head[:12]} does not hold the harness recorded when the experiment "
                    "started (objects in .git were rewritten); restore .git from a backup or start a new tag"
                )
        if not bad and restore:
            self._clean = expected_head
        return bad


def refuse_changes(bad: list[str], when: str) -> None:
    """Refuse an operation because files other than the target changed (`bad`, already restored
    where they could be)."""
    if bad:
        shown = ", ".join(bad[:20])
        raise IntegrityError(
            f"{when}: files other than the target changed: {shown}. Tracked files were restored "
            "from the incumbent commit and .git's hooks, config and refs as recorded; untracked "
            "files are never deleted, so remove new ones or "
            "restore protected data yourself. Only the target may change, and only via write_target.",
            bad,
        )
