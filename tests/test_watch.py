"""The harness watch against an eval that attacks through git: index flags, hooks, replace refs,
config that runs code (fsmonitor, filters, signing, include.path, core.worktree), the global
config. Each attack is run by the eval itself, without a sandbox, driven through the Experiment;
and the watch is also checked directly on a repository tampered with by hand."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp import guard
from autoexp_mcp.errors import GuardError
from autoexp_mcp.gitops import Git
from autoexp_mcp.loop import Experiment
from autoexp_mcp.watch import HarnessWatch, blob_id
from conftest import MakeRepo, baseline, git, harness_config, play

NO_SANDBOX = '\n[sandbox]\nmode = "none"\n'
FORGED = 'print("score: 1000")\n'
HOOKS = (
    "pre-commit",
    "prepare-commit-msg",
    "commit-msg",
    "post-commit",
    "post-checkout",
    "post-index-change",
    "post-rewrite",
    "reference-transaction",
)

# The target's line names the attack the eval performs (a number is an honest run). Every
# piece of code the attack plants writes a marker file under MARKS (outside the repository)
# when it runs, so a test sees whether the server ever ran it.
ATTACK_HARNESS = textwrap.dedent(
    r"""
    import os, subprocess, sys
    MARKS = __MARKS__
    FORGED = 'print("score: 1000")\n'
    HOOKS = __HOOKS__
    line = open("value.txt").read().strip()

    def git(*args, stdin=None):
        argv = ["git", "-c", "user.name=e", "-c", "user.email=e@x", *args]
        return subprocess.run(argv, check=True, capture_output=True, text=True, input=stdin).stdout.strip()

    def script(name, body=""):
        path = os.path.join(MARKS, name + ".sh")
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\ntouch {MARKS}/ran-{name}\n{body}")
        os.chmod(path, 0o755)
        return path

    def forge():
        with open("evaluate.py", "w") as f:
            f.write(FORGED)

    if line == "skip-worktree":
        git("update-index", "--skip-worktree", "evaluate.py")
        forge()
    elif line == "assume-unchanged":
        git("update-index", "--assume-unchanged", "evaluate.py")
        forge()
    elif line == "hooks":
        amend = "printf '%s\\n' 'print(\"score: 1000\")' > evaluate.py\ngit add evaluate.py\n"
        amend += "git -c core.hooksPath=/dev/null commit -q --amend --no-edit\n"
        for name in HOOKS:
            with open(os.path.join(".git", "hooks", name), "w") as f:
                f.write(f"#!/bin/sh\ntouch {MARKS}/ran-hook-{name}\n" + (amend if name == "post-commit" else ""))
            os.chmod(os.path.join(".git", "hooks", name), 0o755)
    elif line == "replace":
        blob = git("hash-object", "-w", "--stdin", stdin=FORGED)
        listing = git("ls-tree", "HEAD").splitlines()
        forged = lambda ln: ln.split()[0] + " blob " + blob + "\tevaluate.py"
        listing = [forged(ln) if ln.endswith("\tevaluate.py") else ln for ln in listing]
        tree = git("mktree", stdin="\n".join(listing) + "\n")
        fake = git("commit-tree", tree, "-p", "HEAD", "-m", "fake")
        git("replace", "-f", git("rev-parse", "HEAD"), fake)
        forge()
    elif line == "fsmonitor":
        git("config", "core.fsmonitor", script("fsmonitor"))
        git("config", "core.fsmonitorHookVersion", "1")
    elif line == "filter":
        with open(os.path.join(".git", "info", "attributes"), "w") as f:
            f.write("* filter=evil\n")
        git("config", "filter.evil.clean", script("clean", "cat\n"))
        git("config", "filter.evil.smudge", script("smudge", "cat\n"))
        os.utime("evaluate.py")  # stat-dirty: a refresh would run the clean filter on it
    elif line == "gpg":
        git("config", "commit.gpgSign", "true")
        git("config", "gpg.program", script("gpg"))
    elif line == "worktree":
        elsewhere = os.path.join(MARKS, "forged-tree")
        os.makedirs(elsewhere, exist_ok=True)
        for name in ("value.txt", "autoexp.toml"):
            with open(name) as src, open(os.path.join(elsewhere, name), "w") as dst:
                dst.write(src.read())
        with open(os.path.join(elsewhere, "evaluate.py"), "w") as f:
            f.write(FORGED)
        git("config", "core.worktree", elsewhere)
    elif line == "include":
        evil = os.path.join(MARKS, "evil.gitconfig")
        with open(evil, "w") as f:
            f.write(f"[core]\n\tfsmonitor = {script('include-fsmonitor')}\n\thooksPath = {MARKS}/hooks\n")
        os.makedirs(os.path.join(MARKS, "hooks"), exist_ok=True)
        for name in HOOKS:
            os.replace(script("include-hook-" + name), os.path.join(MARKS, "hooks", name))
        git("config", "include.path", evil)
    elif line == "global-config":
        os.makedirs(os.path.join(MARKS, "hooks"), exist_ok=True)
        for name in HOOKS:
            os.replace(script("global-hook-" + name), os.path.join(MARKS, "hooks", name))
        with open(os.path.expanduser("~/.gitconfig"), "a") as f:
            f.write(f"[core]\n\thooksPath = {MARKS}/hooks\n\tfsmonitor = {script('global-fsmonitor')}\n")
            f.write(f"[commit]\n\tgpgSign = true\n[gpg]\n\tprogram = {script('global-gpg')}\n")
        print("score: 0")
        sys.exit(0)
    if not line.replace(".", "", 1).isdigit():
        print("score: 1000")
    else:
        print(f"score: {float(line)}")
    """
)

# attack -> what the refusal must name
GIT_DIR_ATTACKS = {
    "skip-worktree": "skip-worktree set on evaluate.py",
    "assume-unchanged": "assume-unchanged set on evaluate.py",
    "hooks": "hook .git/hooks/post-commit added",
    "replace": "ref refs/replace/",
    "fsmonitor": ".git/config changed",
    "filter": ".git/info/attributes added",
    "gpg": ".git/config changed",
    "worktree": ".git/config changed",
    "include": ".git/config changed",
}


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


@pytest.fixture
def attacked(make_repo: MakeRepo, marks: Path) -> Iterator[Experiment]:
    harness = ATTACK_HARNESS.replace("__MARKS__", repr(str(marks))).replace("__HOOKS__", repr(HOOKS))
    repo = make_repo(files={"evaluate.py": harness}, config=harness_config(extra=NO_SANDBOX))
    exp = Experiment(repo)
    try:
        baseline(exp)
        yield exp
    finally:
        exp.close()


def records(repo: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (repo / "experiments.jsonl").read_text().splitlines()]


def ran(marks: Path) -> list[str]:
    return sorted(p.name for p in marks.iterdir() if p.name.startswith("ran-"))


def index_tags(repo: Path) -> set[str]:
    return {line.split(" ", 1)[0] for line in git(repo, "ls-files", "-v", "-t").splitlines()}


def control_state(repo: Path) -> dict[str, bytes]:
    """.git's config, hooks, info/ and refs (but the experiment branch), as bytes."""
    gd = repo / ".git"
    files = [gd / "config", gd / "HEAD", *(p for d in ("hooks", "info", "refs") for p in (gd / d).rglob("*"))]
    return {
        str(p.relative_to(gd)): p.read_bytes()
        for p in files
        if p.is_file() and not str(p.relative_to(gd)).startswith("refs/heads/autoexp/")
    }


@pytest.mark.parametrize("attack", sorted(GIT_DIR_ATTACKS))
def test_an_eval_attacking_through_git_is_a_crash_and_leaves_nothing_behind(
    attacked: Experiment, marks: Path, attack: str
) -> None:
    exp = attacked
    repo = exp.root
    harness = (repo / "evaluate.py").read_bytes()
    before = control_state(repo)
    assert play(exp, attack) == ("crash", "crash")
    reason = records(repo)[-1]["reason"]
    assert reason.startswith("harness changed during the run:") and GIT_DIR_ATTACKS[attack] in reason
    # The next experiments are measured by the real harness, through the server's own git calls
    # (commit, and the revert of a discard) that every planted piece of code targets.
    assert play(exp, "2") == ("done", "keep")
    assert play(exp, "1.5") == ("done", "discard")
    assert [r["metrics"]["score"] for r in records(repo)[-2:]] == [2.0, 1.5]
    assert ran(marks) == [], "code planted by the eval ran inside the server's git calls"
    assert not any(r["status"] == "keep" and r["metrics"]["score"] == 1000.0 for r in records(repo))
    assert (repo / "evaluate.py").read_bytes() == harness
    assert exp.git.show_file(exp.git.head(), "evaluate.py") == harness
    assert index_tags(repo) == {"H"}, "index flags cleared"
    assert control_state(repo) == before
    assert git(repo, "for-each-ref", "refs/replace") == ""


def test_an_eval_editing_the_global_git_config_changes_nothing_the_server_runs(
    attacked: Experiment, marks: Path
) -> None:
    exp = attacked
    repo = exp.root
    assert play(exp, "global-config") == ("done", "discard")  # outside .git: not the watch's concern
    assert play(exp, "2") == ("done", "keep")
    assert play(exp, "1.5") == ("done", "discard")
    assert ran(marks) == [], "the global config the eval wrote was read by the server's git"
    head = exp.git.head()
    assert (
        "gpgsig"
        not in subprocess.run(
            ["git", "-c", "core.hooksPath=/dev/null", "cat-file", "commit", head],
            cwd=repo,
            capture_output=True,
            text=True,
        ).stdout
    )


def test_the_refusal_lists_each_control_file_and_the_forged_harness(attacked: Experiment) -> None:
    exp = attacked
    play(exp, "replace")
    reason = records(exp.root)[-1]["reason"]
    assert "evaluate.py" in reason.split(": ", 1)[1].split(", ")
    assert any(p.startswith("ref refs/replace/") and p.endswith(" added") for p in reason.split(", "))


# --- the watch on its own ------------------------------------------------------------------------


@pytest.fixture
def watched(make_repo: MakeRepo, tmp_path: Path) -> tuple[Path, Git, HarnessWatch]:
    repo = make_repo(files={"tools/helper.py": "print('help')\n", "tools/lookup.csv": "1,1\n"})
    g = Git(repo)
    g.ensure_excluded()  # as the server does: its own files under .autoexp/ are no change
    protected = guard.Protected(repo, [], tmp_path / "protect.json")
    watch = HarnessWatch(g, protected, branch="main")
    watch.snapshot()
    return repo, g, watch


def test_check_is_clean_on_an_untouched_repository(watched: tuple[Path, Git, HarnessWatch]) -> None:
    repo, g, watch = watched
    assert watch.check(g.head(), target="value.txt").problems == []
    (repo / "value.txt").write_text("7\n")
    result = watch.check(g.head(), target="value.txt")
    assert result.problems == [] and result.target_changed


def test_control_files_are_reported_and_put_back_byte_for_byte(watched: tuple[Path, Git, HarnessWatch]) -> None:
    repo, g, watch = watched
    gd = repo / ".git"
    config = (gd / "config").read_bytes()
    head = g.head()
    (gd / "hooks" / "post-commit").write_text("#!/bin/sh\nexit 0\n")
    with (gd / "config").open("a") as f:
        f.write("[core]\n\tfsmonitor = /bin/true\n")
    (gd / "info" / "attributes").write_text("* filter=x\n")
    (gd / "refs" / "replace").mkdir()
    (gd / "refs" / "replace" / head).write_text(head + "\n")
    (gd / "packed-refs").write_text(f"# pack-refs with: peeled fully-peeled sorted\n{head} refs/tags/forged\n")
    (gd / "objects" / "info" / "alternates").write_text("/tmp/elsewhere/objects\n")
    (gd / "shallow").write_text(head + "\n")
    problems = watch.check(head, target="value.txt").problems
    assert set(problems) == {
        "hook .git/hooks/post-commit added",
        ".git/config changed",
        ".git/info/attributes added",
        f"ref refs/replace/{head} added",
        ".git/packed-refs added",
        ".git/objects/info/alternates added",
        ".git/shallow added",
    }
    assert (gd / "config").read_bytes() == config
    for gone in ("hooks/post-commit", "info/attributes", f"refs/replace/{head}", "packed-refs", "shallow"):
        assert not (gd / gone).exists(), gone
    assert watch.check(head, target="value.txt").problems == []


def test_a_removed_or_replaced_control_file_comes_back(watched: tuple[Path, Git, HarnessWatch]) -> None:
    repo, g, watch = watched
    gd = repo / ".git"
    exclude = (gd / "info" / "exclude").read_bytes()
    (gd / "info" / "exclude").unlink()
    shutil.rmtree(gd / "hooks")
    (gd / "hooks").symlink_to(repo / "tools")
    problems = watch.check(g.head(), target="value.txt").problems
    assert ".git/info/exclude removed" in problems and ".git/hooks added" in problems
    assert (gd / "info" / "exclude").read_bytes() == exclude
    assert (gd / "hooks").is_dir() and not (gd / "hooks").is_symlink()
    assert (repo / "tools" / "helper.py").exists(), "the symlink is removed, never followed"


def test_control_digest_is_stable_and_ignores_the_experiment_branch(watched: tuple[Path, Git, HarnessWatch]) -> None:
    repo, g, watch = watched
    digest = watch.control_digest()
    (repo / "value.txt").write_text("2\n")
    g.commit_file("value.txt", "moves main, the watched branch's own ref")
    fresh = HarnessWatch(g, watch.protected, branch="main")
    assert fresh.control_digest() == digest
    (repo / ".git" / "hooks" / "post-commit").write_text("#!/bin/sh\n")
    assert HarnessWatch(g, watch.protected, branch="main").control_digest() != digest
    assert watch.control_digest() == digest, "the digest is of the recorded snapshot"


def test_a_file_rewritten_with_its_mtime_put_back_is_caught(watched: tuple[Path, Git, HarnessWatch]) -> None:
    repo, g, watch = watched
    path = repo / "evaluate.py"
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # old: the next verified stat is remembered
    head = g.head()
    assert watch.check(head, target="value.txt").problems == []
    st = path.stat()
    original = path.read_bytes()
    path.write_bytes(original.replace(b"score", b"SCORE"))  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert watch.check(head, target="value.txt").problems == ["evaluate.py"]
    assert path.read_bytes() == original


def test_mode_symlink_and_deletion_are_changes_and_are_undone(watched: tuple[Path, Git, HarnessWatch]) -> None:
    repo, g, watch = watched
    head = g.head()
    original = (repo / "evaluate.py").read_bytes()
    (repo / "tools" / "helper.py").chmod(0o755)
    (repo / "forged.py").write_text(FORGED)
    (repo / "evaluate.py").unlink()
    (repo / "evaluate.py").symlink_to(repo / "forged.py")
    (repo / "tools" / "lookup.csv").unlink()
    problems = watch.check(head, target="value.txt").problems
    assert sorted(problems) == ["evaluate.py", "tools/helper.py", "tools/lookup.csv"]
    assert not (repo / "evaluate.py").is_symlink() and (repo / "evaluate.py").read_bytes() == original
    assert not (repo / "tools" / "helper.py").stat().st_mode & stat.S_IXUSR
    assert (repo / "tools" / "lookup.csv").read_text() == "1,1\n"
    assert (repo / "forged.py").read_text() == FORGED, "untracked files are never deleted"


def test_a_directory_swapped_for_a_symlink_is_not_followed(
    watched: tuple[Path, Git, HarnessWatch], tmp_path: Path
) -> None:
    repo, g, watch = watched
    forged = tmp_path / "forged-tools"
    shutil.copytree(repo / "tools", forged)
    (forged / "lookup.csv").write_text("9,9\n")
    shutil.rmtree(repo / "tools")
    (repo / "tools").symlink_to(forged)
    problems = watch.check(g.head(), target="value.txt").problems
    assert "tools/lookup.csv" in problems and "tools/helper.py" in problems
    assert any("not restored: a directory above it is a symlink" in p for p in problems)
    assert (forged / "lookup.csv").read_text() == "9,9\n", "nothing written through the symlink"


def test_index_entries_that_differ_from_the_tree_are_reset(watched: tuple[Path, Git, HarnessWatch]) -> None:
    repo, g, watch = watched
    head = g.head()
    (repo / "extra.txt").write_text("new\n")
    git(repo, "add", "extra.txt")
    git(repo, "rm", "-q", "--cached", "tools/lookup.csv")
    git(repo, "update-index", "--skip-worktree", "tools/helper.py")
    git(repo, "update-index", "--assume-unchanged", "evaluate.py")
    problems = watch.check(head, target="value.txt").problems
    assert set(problems) == {
        "extra.txt (added to the index, not in the commit)",
        "tools/lookup.csv (removed from the index)",
        "skip-worktree set on tools/helper.py",
        "assume-unchanged set on evaluate.py",
    }
    assert git(repo, "status", "--porcelain") == "?? extra.txt"
    assert index_tags(repo) == {"H"}
    assert watch.check(head, target="value.txt").problems == []


def test_no_filter_runs_before_the_config_is_put_back(watched: tuple[Path, Git, HarnessWatch], marks: Path) -> None:
    repo, g, watch = watched
    head = g.head()
    # A moved HEAD and a changed file make the watch run git (reset, cat-file) after its check.
    (repo / "value.txt").write_text("5\n")
    git(repo, "commit", "-qam", "moved")
    (repo / "evaluate.py").write_text(FORGED)
    clean = marks / "clean.sh"
    clean.write_text(f"#!/bin/sh\ntouch {marks}/ran-clean\ncat\n")
    clean.chmod(0o755)
    (repo / ".git" / "info" / "attributes").write_text("* filter=evil\n")
    git(repo, "config", "filter.evil.clean", str(clean))
    # The attack works on plain git: hashing a file runs the clean filter.
    git(repo, "hash-object", "--path", "value.txt", "value.txt")
    assert ran(marks) == ["ran-clean"]
    (marks / "ran-clean").unlink()
    problems = watch.check(head, target="value.txt").problems
    assert ".git/config changed" in problems and ".git/info/attributes added" in problems
    assert "evaluate.py" in problems and any(p.startswith("HEAD moved") for p in problems)
    assert ran(marks) == []
    assert g.head() == head


def test_blob_id_is_gits() -> None:
    data = b"hello\n"
    out = subprocess.run(["git", "hash-object", "--stdin"], input=data, capture_output=True, check=True)
    assert blob_id(data) == out.stdout.decode().strip()


@pytest.mark.parametrize("when", ["after the commit", "after the revert"])
def test_the_index_the_server_left_vouches_for_nothing_that_changes_it_later(make_repo: MakeRepo, when: str) -> None:
    """The index the server's own commit or revert just wrote is not listed again, but any
    change to it afterwards (a flag, a staged harness) is still found before the next step."""
    repo = make_repo(config=harness_config(extra=NO_SANDBOX))
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content="0.5\n")
        exp.commit("worse")
        if when == "after the revert":
            assert exp.run_eval(30).status == "done"
            assert exp.decide().status == "discard"
            exp.log_result()
        git(repo, "update-index", "--assume-unchanged", "evaluate.py")
        (repo / "evaluate.py").write_text("print('score: 1000')\n")
        if when == "after the commit":
            view = exp.run_eval(30)
            assert view.status == "crash" and "assume-unchanged set on evaluate.py" in view.reason, view
        else:
            exp.write_target(content="2\n")
            with pytest.raises(GuardError, match="assume-unchanged set on evaluate.py"):
                exp.commit("better")
    finally:
        exp.close()
    assert "score: 1000" not in (repo / "evaluate.py").read_text()
    assert "h" not in index_tags(repo), "the flag was cleared"


def _clock_ahead(monkeypatch: pytest.MonkeyPatch, ns: int) -> None:
    """The file systems' clock as the watch reads it, `ns` ahead of the real one."""
    from autoexp_mcp import fsafe

    real = fsafe.fs_now
    monkeypatch.setattr(fsafe, "fs_now", lambda directory: fsafe.Clock(real(directory).dev, real(directory).ns + ns))


@pytest.mark.parametrize("where", ["hooks/post-commit", "refs/tags/v9", "info/sparse-checkout", "refs/replace/x/y"])
def test_a_control_file_added_after_its_directory_listing_was_remembered_is_found(
    watched: tuple[Path, Git, HarnessWatch], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    repo, g, watch = watched
    _clock_ahead(monkeypatch, 2_000_000_000)  # every stat is old: listings are remembered at once
    head = g.head()
    assert watch.check(head, target="value.txt").problems == []
    assert watch.check(head, target="value.txt").problems == []  # from the remembered listings
    assert watch._listings, "the listings are remembered"
    path = repo / ".git" / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + "\n")
    problems = watch.check(head, target="value.txt").problems
    assert len(problems) == 1 and where in problems[0] and problems[0].endswith(" added"), problems
    assert not path.exists()
    assert watch.check(head, target="value.txt").problems == []


@pytest.mark.parametrize("filemode", [True, False])
@pytest.mark.parametrize("executable", [False, True])
def test_the_tree_of_the_servers_own_commit_is_what_git_lists(
    watched: tuple[Path, Git, HarnessWatch], filemode: bool, executable: bool
) -> None:
    """The watch takes the tree of the server's own commit of the target from its parent's
    listing, with the target's entry as git records it: exactly what `git ls-tree` says."""
    from autoexp_mcp.tree import Tree
    from autoexp_mcp.watch import _Tree

    repo, g, watch = watched
    git(repo, "config", "core.fileMode", str(filemode).lower())
    watch = HarnessWatch(g, watch.protected, branch="main")  # the config as it now is, recorded
    watch.snapshot()
    tree = Tree(g, watch.protected, "main")
    tree._watch = watch
    head = g.head()
    assert watch.check(head, target="value.txt").problems == []
    path = repo / "value.txt"
    path.write_text("3\n")
    if executable:
        path.chmod(0o755)
    sha = tree.own_commit("value.txt", "a new value")
    assert sha in watch._trees, "taken from the parent's listing"
    assert watch._trees[sha] == _Tree.of(g.tree_entries(sha))
    assert watch.check(sha, target="value.txt").problems == []


@pytest.mark.parametrize(
    "setting", ["tracked .gitattributes", "untracked .gitattributes", "info/attributes", "core.autocrlf"]
)
def test_the_tree_of_a_commit_git_may_convert_is_listed_by_git(
    watched: tuple[Path, Git, HarnessWatch], setting: str
) -> None:
    """With eol conversion (or any attribute) git stores other bytes than the file's: the tree
    is then listed by git, never taken from the parent's listing."""
    from autoexp_mcp.tree import Tree
    from autoexp_mcp.watch import _Tree

    repo, g, watch = watched
    if setting == "tracked .gitattributes":
        (repo / ".gitattributes").write_text("*.txt text eol=lf\n")
        git(repo, "add", ".gitattributes")
        git(repo, "commit", "-qm", "attributes")
    elif setting == "untracked .gitattributes":
        (repo / ".gitattributes").write_text("*.txt text eol=lf\n")
    elif setting == "info/attributes":
        (repo / ".git" / "info" / "attributes").write_text("*.txt text eol=lf\n")
    else:
        git(repo, "config", "core.autocrlf", "input")
    watch = HarnessWatch(g, watch.protected, branch="main")
    watch.snapshot()
    tree = Tree(g, watch.protected, "main")
    tree._watch = watch
    head = g.head()
    assert watch.check(head, target="value.txt").problems == []
    (repo / "value.txt").write_bytes(b"3\r\n")
    sha = tree.own_commit("value.txt", "a CRLF value")
    assert sha not in watch._trees, "left to git"
    assert watch.check(sha, target="value.txt").problems == []
    assert watch._trees[sha] == _Tree.of(g.tree_entries(sha))
    assert watch._trees[sha].files["value.txt"].sha == blob_id(b"3\n"), "git stored the converted bytes"


def test_a_stat_as_new_as_the_file_systems_clock_is_never_remembered(
    watched: tuple[Path, Git, HarnessWatch], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system with coarse timestamps (one second, say) a file changed twice within a
    tick keeps its stat: only a stat older than the file system's own clock is remembered, so
    a rewrite that puts size and mtime back is still hashed and found."""
    from autoexp_mcp import fsafe

    repo, g, watch = watched
    head = g.head()
    path = repo / "evaluate.py"
    dev, ctime = path.stat().st_dev, path.stat().st_ctime_ns
    monkeypatch.setattr(fsafe, "fs_now", lambda directory: fsafe.Clock(dev, ctime))  # the tick of its last change
    assert watch.check(head, target="value.txt").problems == []
    assert "evaluate.py" not in watch._seen
    st = path.stat()
    original = path.read_bytes()
    path.write_bytes(original.replace(b"score", b"SCORE"))  # same size, mtime put back
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(fsafe, "fs_now", lambda directory: fsafe.Clock(dev, path.stat().st_ctime_ns))
    assert watch.check(head, target="value.txt").problems == ["evaluate.py"]
    assert path.read_bytes() == original
    monkeypatch.setattr(fsafe, "fs_now", lambda directory: fsafe.Clock(dev, path.stat().st_ctime_ns + 1))  # a tick on
    assert watch.check(head, target="value.txt").problems == []
    assert "evaluate.py" in watch._seen, "remembered once older than the clock"

    other = fsafe.Clock(dev + 1, path.stat().st_ctime_ns + 1_000_000_000)  # another file system's clock
    monkeypatch.setattr(fsafe, "fs_now", lambda directory: other)
    watch._seen.clear()
    assert watch.check(head, target="value.txt").problems == []
    assert "evaluate.py" not in watch._seen, "a clock of another file system settles nothing here"
