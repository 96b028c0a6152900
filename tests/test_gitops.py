"""gitops against real temporary repositories: branches, exact commits, resets, argument guards."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from autoexp_mcp.errors import GitError
from autoexp_mcp.gitops import _FALLBACK_IDENTITY, EXCLUDED, Git, _sha
from conftest import git, init_repo

IDENTITY_VARS = ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One committed repository per module; each test gets a copy (much faster than git init)."""
    home = tmp_path_factory.mktemp("template-home")
    (home / ".gitconfig").write_text("")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        repo = init_repo(
            tmp_path_factory.mktemp("template") / "repo",
            {"value.txt": "1\n", "evaluate.py": "print('score: 1')\n", "data/train.csv": "a,b\n"},
        )
    for sample in (repo / ".git" / "hooks").glob("*.sample"):
        sample.unlink()  # fewer files to copy per test
    return repo


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "repo", symlinks=True))


def plain_git(repo: Path, *args: str) -> str:
    """git with the environment exactly as the test left it (no pinned identity added)."""
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def status(repo: Path) -> str:
    return git(repo, "status", "--porcelain", "--untracked-files=all")


# --- opening a repository ------------------------------------------------------------------


def test_opens_from_a_subdirectory(repo: Path) -> None:
    g = Git(repo / "data")
    assert g.root == repo.resolve()


def test_not_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="is not inside a git repository. Run `git init`"):
        Git(tmp_path)


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="is not inside a git repository"):
        Git(tmp_path / "nope")


def test_bare_repository_is_refused(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "bare.git")], check=True)
    with pytest.raises(GitError, match="bare repository"):
        Git(tmp_path / "bare.git")


def test_repo_without_commits_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    git(tmp_path / "empty", "init", "-q", "-b", "main")
    g = Git(tmp_path / "empty")
    with pytest.raises(GitError) as info:
        g.head()
    assert "has no commits yet" in str(info.value)
    assert "git commit" in str(info.value)


# --- branches ------------------------------------------------------------------------------


def test_checkout_branch_creates_it_at_a_sha_and_switches(repo: Path) -> None:
    g = Git(repo)
    base = g.head()
    assert g.current_branch() == "main"
    assert not g.branch_exists("autoexp/t")
    g.checkout_branch("autoexp/t", base)
    assert g.current_branch() == "autoexp/t"
    assert g.branch_exists("autoexp/t")
    assert g.head() == base
    g.checkout_branch("main")
    assert g.current_branch() == "main"
    g.checkout_branch("autoexp/t")
    assert g.current_branch() == "autoexp/t"


def test_creating_an_existing_branch_is_a_git_error(repo: Path) -> None:
    g = Git(repo)
    g.checkout_branch("autoexp/t", g.head())
    with pytest.raises(GitError, match="could not switch to branch autoexp/t"):
        g.checkout_branch("autoexp/t", g.head())


def test_checkout_of_a_missing_branch_is_a_git_error(repo: Path) -> None:
    with pytest.raises(GitError, match="could not switch to branch nope"):
        Git(repo).checkout_branch("nope")


def test_detached_head_has_no_current_branch(repo: Path) -> None:
    g = Git(repo)
    git(repo, "checkout", "-q", "--detach")
    assert g.current_branch() is None


def test_branch_commits_lists_the_branch_history(repo: Path) -> None:
    g = Git(repo)
    first = g.head()
    g.checkout_branch("autoexp/t", first)
    (repo / "value.txt").write_text("2\n")
    second = g.commit_file("value.txt", "two")
    assert g.branch_commits("autoexp/t") == {first, second}
    assert g.branch_commits("main") == {first}


# --- commits ---------------------------------------------------------------------------------


def test_commit_file_commits_only_the_target(repo: Path) -> None:
    g = Git(repo)
    before = g.head()
    (repo / "value.txt").write_text("2\n")
    (repo / "evaluate.py").write_text("print('score: 99')\n")
    (repo / "data/train.csv").write_text("tampered\n")
    git(repo, "add", "evaluate.py")  # staged harness change
    sha = g.commit_file("value.txt", "try 2")
    assert sha == g.head() != before
    assert git(repo, "show", "--name-only", "--format=", sha).splitlines() == ["value.txt"]
    assert g.show_file(sha, "evaluate.py") == b"print('score: 1')\n"
    # The other changes are left exactly as they were: still modified, still staged.
    assert git(repo, "diff", "--cached", "--name-only").splitlines() == ["evaluate.py"]
    assert git(repo, "diff", "--name-only").splitlines() == ["data/train.csv"]
    assert sorted(g.changed()) == ["data/train.csv", "evaluate.py"]


def test_commit_message_is_kept_verbatim(repo: Path) -> None:
    g = Git(repo)
    (repo / "value.txt").write_text("2\n")
    message = "-m --amend # not a comment\n\nbody line"
    sha = g.commit_file("value.txt", message)
    assert git(repo, "log", "-1", "--format=%B", sha) == message
    assert git(repo, "rev-list", "--count", "HEAD") == "2"


def test_commit_skips_hooks(repo: Path) -> None:
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    (repo / "value.txt").write_text("2\n")
    Git(repo).commit_file("value.txt", "hooks do not run")


def test_commit_with_nothing_changed_is_a_git_error(repo: Path) -> None:
    with pytest.raises(GitError, match="git commit failed"):
        Git(repo).commit_file("value.txt", "no change")


def test_changed_lists_tracked_changes_only(repo: Path) -> None:
    g = Git(repo)
    assert g.changed() == []
    (repo / "new file.txt").write_text("untracked\n")
    (repo / "value.txt").write_text("2\n")
    (repo / "evaluate.py").unlink()
    assert sorted(g.changed()) == ["evaluate.py", "value.txt"]


def test_reset_hard_returns_to_a_recorded_sha(repo: Path) -> None:
    g = Git(repo)
    first = g.head()
    (repo / "value.txt").write_text("2\n")
    g.commit_file("value.txt", "two")
    (repo / "evaluate.py").write_text("changed\n")
    (repo / "untracked.txt").write_text("keep me\n")
    g.reset_hard(first)
    assert g.head() == first
    assert (repo / "value.txt").read_text() == "1\n"
    assert (repo / "evaluate.py").read_text() == "print('score: 1')\n"
    assert (repo / "untracked.txt").read_text() == "keep me\n"


def test_restore_and_unstage(repo: Path) -> None:
    g = Git(repo)
    head = g.head()
    (repo / "evaluate.py").write_text("changed\n")
    (repo / "value.txt").write_text("2\n")
    git(repo, "add", "value.txt")
    g.unstage_all(head)
    assert git(repo, "diff", "--cached", "--name-only") == ""
    g.restore(head, ["evaluate.py"])
    assert (repo / "evaluate.py").read_text() == "print('score: 1')\n"
    assert g.changed() == ["value.txt"]
    g.restore(head, [])  # nothing to do


def test_queries_on_recorded_shas(repo: Path) -> None:
    g = Git(repo)
    first = g.head()
    (repo / "value.txt").write_text("2\n3\n")
    second = g.commit_file("value.txt", "two")
    assert second != first and g.head() == second
    assert g.show_file(first, "value.txt") == b"1\n"
    assert g.is_tracked("value.txt")
    assert not g.is_tracked("nope.txt")
    with pytest.raises(GitError, match="does not exist in commit"):
        g.show_file(first, "nope.txt")


# --- argument guards --------------------------------------------------------------------------

BAD_REFS = ["--output=x", "HEAD", "main", "HEAD~1", "a" * 39, "A" * 40, "a" * 40 + "\n", ""]

SHA_METHODS: dict[str, Callable[[Git, str], object]] = {
    "reset_hard": lambda g, s: g.reset_hard(s),
    "show_file": lambda g, s: g.show_file(s, "value.txt"),
    "restore": lambda g, s: g.restore(s, ["value.txt"]),
    "unstage_all": lambda g, s: g.unstage_all(s),
    "checkout_branch": lambda g, s: g.checkout_branch("autoexp/x", s),
}


@pytest.mark.parametrize("bad", BAD_REFS)
def test_sha_refuses_anything_but_a_full_sha(bad: str) -> None:
    with pytest.raises(GitError, match="is not a full commit sha"):
        _sha(bad)


def test_sha_accepts_a_full_sha() -> None:
    assert _sha("0123456789abcdef" * 2 + "01234567") == "0123456789abcdef" * 2 + "01234567"


@pytest.mark.parametrize("method", sorted(SHA_METHODS))
def test_sha_taking_methods_refuse_refs_and_options(repo: Path, method: str) -> None:
    g = Git(repo)
    head = g.head()
    for bad in ["--output=x", "HEAD", "main"]:
        with pytest.raises(GitError, match="is not a full commit sha"):
            SHA_METHODS[method](g, bad)
    assert not (repo / "x").exists()
    assert g.head() == head
    assert not g.branch_exists("autoexp/x")


def test_resolve_gives_full_shas(repo: Path) -> None:
    g = Git(repo)
    head = g.head()
    assert g.resolve("HEAD") == head
    assert g.resolve("main") == head
    assert g.resolve(head[:10]) == head


@pytest.mark.parametrize("bad", ["-x", "--output=x", "--all"])
def test_resolve_refuses_a_leading_dash(repo: Path, bad: str) -> None:
    with pytest.raises(GitError, match="is not a revision"):
        Git(repo).resolve(bad)
    assert not (repo / "x").exists()


def test_resolve_unknown_revision_is_a_clear_error(repo: Path) -> None:
    with pytest.raises(GitError, match="'nope' is not a commit in"):
        Git(repo).resolve("nope")


# --- the server's own files ---------------------------------------------------------------------


def test_ensure_excluded_hides_the_servers_files_from_status(repo: Path) -> None:
    g = Git(repo)
    (repo / "results.tsv").write_text("commit\n")
    (repo / "experiments.jsonl").write_text("{}\n")
    (repo / ".autoexp" / "runs").mkdir(parents=True)
    (repo / ".autoexp" / "runs" / "1.log").write_text("log\n")
    assert status(repo) != ""
    g.ensure_excluded()
    assert status(repo) == ""
    # Only at the root: a same-named file deeper in the tree is the user's.
    (repo / "data" / "results.tsv").write_text("x\n")
    assert status(repo) == "?? data/results.tsv"


def test_ensure_excluded_is_idempotent(repo: Path) -> None:
    g = Git(repo)
    exclude = repo / ".git" / "info" / "exclude"
    exclude.write_text("*.bak")  # the user's own entry, without a final newline
    g.ensure_excluded()
    once = exclude.read_text()
    g.ensure_excluded()
    Git(repo).ensure_excluded()
    assert exclude.read_text() == once
    lines = once.splitlines()
    assert lines[0] == "*.bak"
    for entry in EXCLUDED:
        assert lines.count(entry) == 1


def test_ensure_excluded_creates_info_dir(repo: Path) -> None:
    info = repo / ".git" / "info"
    for p in info.iterdir():
        p.unlink()
    info.rmdir()
    Git(repo).ensure_excluded()
    assert set(EXCLUDED) <= set((info / "exclude").read_text().splitlines())


# --- identity --------------------------------------------------------------------------------------


@pytest.fixture
def no_identity(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No identity anywhere: no GIT_* or EMAIL variables, an empty global config, no system config."""
    for var in IDENTITY_VARS:
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty.gitconfig"
    empty.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def author_and_committer(repo: Path) -> str:
    return plain_git(repo, "log", "-1", "--format=%an <%ae> / %cn <%ce>")


@pytest.mark.usefixtures("no_identity")
def test_commit_works_with_no_git_identity(repo: Path) -> None:
    (repo / "value.txt").write_text("2\n")
    Git(repo).commit_file("value.txt", "no identity")
    name, email = _FALLBACK_IDENTITY["GIT_AUTHOR_NAME"], _FALLBACK_IDENTITY["GIT_AUTHOR_EMAIL"]
    assert author_and_committer(repo) == f"{name} <{email}> / {name} <{email}>"


@pytest.mark.usefixtures("no_identity")
def test_commit_uses_the_repos_configured_identity(repo: Path) -> None:
    plain_git(repo, "config", "user.name", "Repo User")
    plain_git(repo, "config", "user.email", "repo@example.com")
    (repo / "value.txt").write_text("2\n")
    Git(repo).commit_file("value.txt", "configured")
    assert author_and_committer(repo) == "Repo User <repo@example.com> / Repo User <repo@example.com>"


FALLBACK = f"{_FALLBACK_IDENTITY['GIT_AUTHOR_NAME']} <{_FALLBACK_IDENTITY['GIT_AUTHOR_EMAIL']}>"


@pytest.mark.usefixtures("no_identity")
@pytest.mark.parametrize(
    ("env", "config", "expected"),
    [
        (
            {"GIT_AUTHOR_NAME": "Env", "GIT_AUTHOR_EMAIL": "env@example.com"},
            {},
            f"Env <env@example.com> / {FALLBACK}",
        ),
        ({"EMAIL": "mail@example.com"}, {}, "autoexp-mcp <mail@example.com> / autoexp-mcp <mail@example.com>"),
        ({}, {"user.email": "cfg@example.com"}, "autoexp-mcp <cfg@example.com> / autoexp-mcp <cfg@example.com>"),
        ({}, {"user.name": "Cfg"}, "Cfg <autoexp-mcp@localhost> / Cfg <autoexp-mcp@localhost>"),
    ],
    ids=["author-from-env", "EMAIL-var", "email-configured", "name-configured"],
)
def test_commit_fills_in_only_the_missing_parts_of_the_identity(
    repo: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], config: dict[str, str], expected: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k, v in config.items():
        plain_git(repo, "config", k, v)
    (repo / "value.txt").write_text("2\n")
    Git(repo).commit_file("value.txt", "partial identity")
    assert author_and_committer(repo) == expected


def test_pinned_identity_is_used_when_present(repo: Path) -> None:
    assert os.environ["GIT_AUTHOR_NAME"] == "Test Author"
    (repo / "value.txt").write_text("2\n")
    Git(repo).commit_file("value.txt", "pinned")
    assert author_and_committer(repo) == "Test Author <author@example.com> / Test Author <author@example.com>"


# --- git the eval cannot steer --------------------------------------------------------------------

EVENTS = (
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-checkout",
    "post-index-change",
    "post-rewrite",
    "reference-transaction",
    "pre-auto-gc",
)


def marker_script(marks: Path, name: str, body: str = "") -> Path:
    path = marks / f"{name}.sh"
    path.write_text(f"#!/bin/sh\ntouch {marks}/ran-{name}\n{body}")
    path.chmod(0o755)
    return path


def ran(marks: Path) -> list[str]:
    return sorted(p.name for p in marks.iterdir() if p.name.startswith("ran-"))


def every_write(g: Git, repo: Path) -> str:
    """Each git call the server makes that writes the index, a ref or a commit; returns the commit made."""
    head = g.head()
    g.changed()
    (repo / "value.txt").write_text("2\n")
    second = g.commit_file("value.txt", "two")
    g.checkout_branch("autoexp/x", second)
    g.reset_hard(head)
    (repo / "evaluate.py").write_text("changed\n")
    g.restore(head, ["evaluate.py"])
    g.unstage_all(head)
    g.clear_index_flags(["evaluate.py"])
    g.reset_paths(head, ["evaluate.py"])
    return second


def test_hooks_fsmonitor_and_signing_in_the_repository_never_run_in_the_servers_git(repo: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    for event in EVENTS:
        shutil.copy(marker_script(marks, f"hook-{event}"), repo / ".git" / "hooks" / event)
    git(repo, "config", "core.fsmonitor", str(marker_script(marks, "fsmonitor")))
    git(repo, "config", "core.fsmonitorHookVersion", "1")
    git(repo, "config", "commit.gpgSign", "true")
    git(repo, "config", "gpg.program", str(marker_script(marks, "gpg")))
    g = Git(repo)
    plain_git(repo, "status", "--porcelain")  # the attack works on plain git
    assert ran(marks) == ["ran-fsmonitor", "ran-hook-post-index-change"]
    for p in marks.glob("ran-*"):
        p.unlink()
    second = every_write(g, repo)
    assert ran(marks) == []
    assert "gpgsig" not in git(repo, "cat-file", "commit", second)


def test_replace_refs_do_not_change_what_the_server_reads(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"],
        cwd=repo,
        input="print('score: 1000')\n",
        text=True,
        capture_output=True,
        check=True,
    ).stdout.strip()
    listing = git(repo, "ls-tree", "HEAD").replace(git(repo, "rev-parse", "HEAD:evaluate.py"), blob)
    tree = subprocess.run(
        ["git", "mktree"], cwd=repo, input=listing + "\n", text=True, capture_output=True, check=True
    ).stdout.strip()
    fake = git(repo, "commit-tree", tree, "-m", "fake")
    git(repo, "replace", head, fake)
    assert git(repo, "show", "HEAD:evaluate.py") == "print('score: 1000')", "the attack works on plain git"
    g = Git(repo)
    assert g.show_file(head, "evaluate.py") == b"print('score: 1')\n"
    entries = {e.path: e.sha for e in g.tree_entries(head)}
    assert entries["evaluate.py"] == git(repo, "--no-replace-objects", "rev-parse", "HEAD:evaluate.py")
    assert g.changed() == ["evaluate.py"] or (repo / "evaluate.py").read_text() == "print('score: 1')\n"


def test_inherited_git_variables_do_not_reach_the_servers_git(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    for event in EVENTS:
        shutil.copy(marker_script(marks, f"hook-{event}"), hooks / event)
    other = tmp_path / "other-index"
    monkeypatch.setenv("GIT_INDEX_FILE", str(other))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.hookspath'='{hooks}'")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.hooksPath")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(hooks))
    g = Git(repo)
    second = every_write(g, repo)
    assert ran(marks) == []
    assert not other.exists(), "the server's git used another index"
    monkeypatch.delenv("GIT_INDEX_FILE")
    assert git(repo, "show", f"{second}:value.txt") == "2"
    assert git(repo, "status", "--porcelain") == "", "the real index is the one the server updated"


def test_global_config_is_read_for_the_identity_once_and_never_again(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in IDENTITY_VARS:
        monkeypatch.delenv(var, raising=False)
    marks = tmp_path / "marks"
    marks.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("[user]\n\tname = Global User\n\temail = global@example.com\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("GIT_CONFIG_GLOBAL")
    (repo / ".git" / "info" / "attributes").write_text("*.txt filter=evil\n")
    g = Git(repo)
    # What the eval can write to the user's config later: a filter (no -c option turns those
    # off) for files the attributes already name, and another identity.
    clean = marker_script(marks, "clean", "cat\n")
    gitconfig.write_text(f'[user]\n\tname = Eval\n\temail = eval@example.com\n[filter "evil"]\n\tclean = {clean}\n')
    second = every_write(g, repo)
    assert ran(marks) == []
    identity = plain_git(repo, "log", "-1", "--format=%an <%ae> / %cn <%ce>", second)
    assert identity == "Global User <global@example.com> / Global User <global@example.com>"
    plain_git(repo, "hash-object", "--path", "value.txt", "value.txt")
    assert ran(marks) == ["ran-clean"], "the filter would run in git that reads the global config"


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a repository's owner needs root")
def test_a_repository_owned_by_another_user_still_opens(repo: Path) -> None:
    subprocess.run(["chown", "-R", "12345:12345", str(repo)], check=True)
    plain = subprocess.run(["git", "status"], cwd=repo, capture_output=True, text=True)
    assert "dubious ownership" in plain.stderr, "the check this test relies on is not in this git"
    g = Git(repo)
    assert g.changed() == []
    (repo / "value.txt").write_text("2\n")
    assert g.commit_file("value.txt", "owned by someone else") == g.head()
