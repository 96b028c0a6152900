"""What the server refuses, and what it leaves untouched when it does: paths, symlinks, the
harness and protected data changed behind its back, bad content, hostile text, calls out of
order or at once, runaway output, the eval's environment and resource limits."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from autoexp_mcp.errors import (
    AutoexpError,
    ConfigError,
    DirtyTreeError,
    GuardError,
    IntegrityError,
    OrderError,
)
from autoexp_mcp.loop import Experiment
from autoexp_mcp.server import build_server
from autoexp_mcp.state import Phase, load_state, save_state
from autoexp_mcp.verify import verify
from conftest import GIT_ENV, HARNESS, MakeRepo, baseline, cmdline_pids, git, harness_config, init_repo, play

CALL_TIMEOUT_S = 30.0
SCORE_1000 = "print('score: 1000')\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def head(repo: Path) -> str:
    return git(repo, "rev-parse", "HEAD")


def records(repo: Path) -> list[dict[str, Any]]:
    path = repo / "experiments.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def with_experiment_keys(keys: str, **cfg: Any) -> str:
    """harness_config with extra [experiment] keys (appending would land them in [budget])."""
    return harness_config(**cfg).replace("[[metric]]", keys.strip() + "\n\n[[metric]]", 1)


@pytest.fixture
def exp_after_baseline(make_repo: MakeRepo) -> Iterator[Experiment]:
    exp = Experiment(make_repo())
    try:
        baseline(exp)
        yield exp
    finally:
        exp.close()


# --- the target's path ---------------------------------------------------------------------


@pytest.mark.parametrize("target", ["../x.txt", "/etc/passwd", "sub/../../x.txt", "-x.txt"])
def test_config_refuses_a_target_outside_the_repository(make_repo: MakeRepo, target: str) -> None:
    repo = make_repo(config=harness_config().replace('target = "value.txt"', f'target = "{target}"'))
    with pytest.raises(ConfigError, match="target must be a path relative to the repository root"):
        Experiment(repo)
    assert git(repo, "branch", "--show-current") == "main", "nothing was set up"


def test_start_refuses_a_target_inside_git(make_repo: MakeRepo) -> None:
    repo = make_repo(config=harness_config().replace('target = "value.txt"', 'target = ".git/config"'))
    with pytest.raises(GuardError, match="inside .git"):
        Experiment(repo)


def test_start_refuses_a_committed_symlink_target(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    repo = init_repo(tmp_path / "r", {"evaluate.py": HARNESS, "autoexp.toml": harness_config()})
    (repo / "value.txt").symlink_to(secret)
    git(repo, "add", "value.txt")
    git(repo, "commit", "-qm", "a symlink target")
    with pytest.raises(GuardError, match="symlink"):
        Experiment(repo)
    assert secret.read_text() == "top secret\n"


def swap_for_symlink(path: Path, to: Path) -> None:
    path.unlink()
    path.symlink_to(to)


def test_every_tool_refuses_a_target_swapped_for_a_symlink_before_a_restart(
    make_repo: MakeRepo, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    repo = make_repo()
    exp = Experiment(repo)
    baseline(exp)
    exp.close()
    swap_for_symlink(repo / "value.txt", secret)
    exp = Experiment(repo)
    try:
        with pytest.raises(GuardError, match="symlink"):
            exp.read_target()
        with pytest.raises(GuardError, match="symlink"):
            exp.write_target(content="2\n")
        assert exp.budget_status().phase == "idle", "a refused write starts no experiment"
    finally:
        exp.close()
    assert secret.read_text() == "top secret\n"
    assert (repo / "value.txt").is_symlink()


def test_write_read_and_commit_refuse_a_target_swapped_for_a_symlink_between_calls(
    exp_after_baseline: Experiment, tmp_path: Path
) -> None:
    exp = exp_after_baseline
    repo = exp.root
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    exp.write_target(content="2\n")
    commit_before = head(repo)
    swap_for_symlink(repo / "value.txt", secret)
    with pytest.raises(GuardError, match="symlink"):
        exp.read_target()
    with pytest.raises(GuardError, match="symlink"):
        exp.write_target(content="3\n")
    with pytest.raises(GuardError, match="symlink"):
        exp.write_target(edits=[("top secret", "pwned")])
    with pytest.raises(GuardError, match="symlink"):
        exp.commit("through the link")
    assert secret.read_text() == "top secret\n", "the link was never followed"
    assert head(repo) == commit_before
    assert git(repo, "ls-files", "-s", "value.txt").startswith("100644"), "no symlink was staged"
    # Put a regular file back: the loop goes on.
    (repo / "value.txt").unlink()
    (repo / "value.txt").write_text("2\n")
    exp.commit("two")
    assert exp.run_eval(30).metrics == {"score": 2.0}


def test_run_eval_refuses_a_target_swapped_for_a_symlink_after_commit(
    exp_after_baseline: Experiment, tmp_path: Path
) -> None:
    exp = exp_after_baseline
    repo = exp.root
    secret = tmp_path / "secret.txt"
    secret.write_text("score: 999\n")
    exp.write_target(content="2\n")
    exp.commit("two")
    swap_for_symlink(repo / "value.txt", secret)
    view = exp.run_eval(30)
    assert view.status == "crash" and "symlink" in view.reason
    assert exp.decide().status == "crash"
    exp.log_result()
    assert secret.read_text() == "score: 999\n"
    assert not (repo / "value.txt").is_symlink() and (repo / "value.txt").read_text() == "1\n"
    assert verify(repo) == []


def test_tools_refuse_a_target_reached_through_a_symlinked_directory(make_repo: MakeRepo, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "value.txt").write_text("5\n")
    config = harness_config().replace('target = "value.txt"', 'target = "sub/value.txt"')
    harness = HARNESS.replace('open("value.txt")', 'open("sub/value.txt")')
    repo = make_repo(config=config, files={"sub/value.txt": "1\n", "evaluate.py": harness})
    exp = Experiment(repo)
    try:
        baseline(exp)
        shutil.rmtree(repo / "sub")
        (repo / "sub").symlink_to(outside)
        with pytest.raises(GuardError, match="symlinked directory"):
            exp.read_target()
        with pytest.raises(GuardError, match="symlinked directory"):
            exp.write_target(content="9\n")
    finally:
        exp.close()
    assert (outside / "value.txt").read_text() == "5\n"


@pytest.mark.anyio
async def test_mcp_read_target_through_a_symlink_is_an_error_that_leaks_nothing(
    exp_after_baseline: Experiment, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n")
    swap_for_symlink(exp_after_baseline.root / "value.txt", secret)
    async with Client(build_server(exp_after_baseline, close_on_exit=False)) as c:
        for tool, args in [("read_target", {}), ("write_target", {"content": "x\n"})]:
            with anyio.fail_after(CALL_TIMEOUT_S):
                res = await c.call_tool(tool, args)
            assert res.is_error
            text = res.content[0].text  # type: ignore[union-attr]
            assert "symlink" in text and "top secret" not in text
    assert secret.read_text() == "top secret\n"


# --- the harness, changed behind the server's back ------------------------------------------


def test_commit_refuses_a_harness_edited_before_commit_and_lists_it(exp_after_baseline: Experiment) -> None:
    exp = exp_after_baseline
    repo = exp.root
    original = (repo / "evaluate.py").read_text()
    config = (repo / "autoexp.toml").read_text()
    exp.write_target(content="2\n")
    (repo / "evaluate.py").write_text(SCORE_1000)
    (repo / "autoexp.toml").write_text(config.replace("max_experiments = 50", "max_experiments = 5000"))
    incumbent = head(repo)
    with pytest.raises(IntegrityError, match="before commit") as e:
        exp.commit("two")
    assert set(e.value.files) == {"evaluate.py", "autoexp.toml"}
    assert "evaluate.py" in str(e.value) and "autoexp.toml" in str(e.value), "the message names them too"
    assert (repo / "evaluate.py").read_text() == original
    assert (repo / "autoexp.toml").read_text() == config
    assert head(repo) == incumbent
    assert exp.read_target().content == "2\n", "the target edit survives the refusal"
    exp.commit("two")
    assert exp.run_eval(30).metrics == {"score": 2.0}


def test_run_eval_refuses_a_harness_edited_between_commit_and_eval(exp_after_baseline: Experiment) -> None:
    exp = exp_after_baseline
    repo = exp.root
    original = (repo / "evaluate.py").read_text()
    exp.write_target(content="2\n")
    exp.commit("two")
    (repo / "evaluate.py").write_text(SCORE_1000)
    view = exp.run_eval(30)
    assert view.status == "crash"
    assert view.reason.startswith("harness changed before the run") and "evaluate.py" in view.reason
    assert view.metrics.get("score") != 1000.0
    assert (repo / "evaluate.py").read_text() == original
    assert exp.decide().status == "crash"
    exp.log_result()
    assert "harness changed before the run" in records(repo)[-1]["reason"]


def test_run_eval_refuses_a_harness_deleted_between_commit_and_eval(exp_after_baseline: Experiment) -> None:
    exp = exp_after_baseline
    repo = exp.root
    exp.write_target(content="2\n")
    exp.commit("two")
    (repo / "evaluate.py").unlink()
    view = exp.run_eval(30)
    assert view.status == "crash" and "evaluate.py" in view.reason
    assert (repo / "evaluate.py").read_text() == HARNESS


# The tests of in-eval tampering run without the sandbox (which would refuse the writes):
# they test the defences that hold when there is none.


def test_run_eval_refuses_a_harness_that_edits_itself_during_the_eval(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo(sandbox="none"))
    try:
        baseline(exp)
        status, decision = play(exp, "touch evaluate.py")
    finally:
        exp.close()
    assert (status, decision) == ("crash", "crash")
    assert "harness changed during the run: evaluate.py" in records(exp.root)[-1]["reason"]
    assert (exp.root / "evaluate.py").read_text() == HARNESS


HELPER_HARNESS = textwrap.dedent(
    """\
    import subprocess, sys
    value = open("value.txt").read().strip()
    if value == "tamper":
        subprocess.run([sys.executable, "tools/helper.py"], check=True)
    print("score: 5" if value == "tamper" else f"score: {value}")
    """
)
HELPER = 'open("tools/lookup.csv", "a").write("9,9\\n")\n'


def test_run_eval_refuses_a_helper_script_that_edits_a_tracked_file_during_the_eval(make_repo: MakeRepo) -> None:
    files = {"evaluate.py": HELPER_HARNESS, "tools/helper.py": HELPER, "tools/lookup.csv": "1,1\n"}
    repo = make_repo(sandbox="none", files=files)
    exp = Experiment(repo)
    try:
        baseline(exp)
        status, decision = play(exp, "tamper")
        assert (status, decision) == ("crash", "crash")
        assert "tools/lookup.csv" in records(repo)[-1]["reason"]
        assert (repo / "tools/lookup.csv").read_text() == "1,1\n"
    finally:
        exp.close()


def test_run_eval_refuses_an_eval_that_moves_head(make_repo: MakeRepo) -> None:
    harness = HARNESS.replace(
        'print("evaluating", line, flush=True)',
        'print("evaluating", line, flush=True)\n'
        'if line == "sneak":\n'
        '    import subprocess; subprocess.run(["git", "-c", "user.name=e", "-c", "user.email=e@x", '
        '"commit", "-q", "--allow-empty", "-m", "sneaky"], check=True)\n'
        '    print("score: 100"); sys.exit(0)',
    )
    repo = make_repo(sandbox="none", files={"evaluate.py": harness})
    exp = Experiment(repo)
    try:
        baseline(exp)
        incumbent = head(repo)
        status, decision = play(exp, "sneak")
        assert (status, decision) == ("crash", "crash")
        assert "HEAD moved" in records(repo)[-1]["reason"]
        assert head(repo) == incumbent
        assert "sneaky" not in git(repo, "log", "--format=%s")
    finally:
        exp.close()


def test_commit_refuses_after_the_agent_committed_with_git_itself(exp_after_baseline: Experiment) -> None:
    exp = exp_after_baseline
    repo = exp.root
    incumbent = head(repo)
    exp.write_target(content="2\n")
    git(repo, "commit", "-qam", "by hand")
    with pytest.raises(IntegrityError, match="HEAD moved"):
        exp.commit("two")
    assert head(repo) == incumbent, "the branch is back at the incumbent"
    assert exp.read_target().content == "2\n", "the edit is kept, uncommitted"
    c = exp.commit("two")
    assert git(repo, "rev-parse", "HEAD~1") == incumbent and head(repo).startswith(c.commit)


def test_run_eval_refuses_an_eval_that_rewrites_the_target(make_repo: MakeRepo) -> None:
    repo = make_repo(value="-1", sandbox="none")
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content="touch value.txt\n")
        exp.commit("the eval appends to its own input")
        view = exp.run_eval(30)
        d = exp.decide()
        exp.log_result()
        # What was measured is not what was committed: a crash, and the tree is back at the incumbent.
        assert view.status == "crash" and "value.txt" in view.reason
        assert d.status == "crash" and d.reverted
        assert (repo / "value.txt").read_text() == "-1\n"
        assert not git(repo, "status", "--porcelain"), "the incumbent's tree is what is on disk"
    finally:
        exp.close()


FILE_HARNESS = textwrap.dedent(
    """\
    import os
    value = open("value.txt").read().strip()
    if value != "skip":  # "skip": exits 0 without writing its metric file
        os.makedirs("out", exist_ok=True)
        open("out/metrics.txt", "w").write(f"score: {value}\\n")
    """
)


def test_run_eval_refuses_a_metric_file_not_written_by_this_run(make_repo: MakeRepo) -> None:
    config = harness_config().replace('direction = "max"', 'direction = "max"\nfile = "out/metrics.txt"')
    repo = make_repo(config=config, files={"evaluate.py": FILE_HARNESS})
    exp = Experiment(repo)
    try:
        baseline(exp)
        assert exp.budget_status().best.metrics == {"score": 1.0}  # type: ignore[union-attr]
        exp.write_target(content="skip\n")
        exp.commit("writes no metric")
        (repo / "out" / "metrics.txt").write_text("score: 100\n")  # planted with the agent's own shell
        view = exp.run_eval(30)
        assert view.status == "crash" and "out/metrics.txt" in view.reason, view
    finally:
        exp.close()


# --- protected untracked data ----------------------------------------------------------------


@pytest.fixture
def data_repo(make_repo: MakeRepo) -> Path:
    repo = make_repo(config=with_experiment_keys('protect = ["data/**"]', sandbox="none"))
    (repo / "data").mkdir()
    (repo / "data" / "train.csv").write_text("x,y\n1,2\n")
    (repo / "data" / "sub").mkdir()
    (repo / "data" / "sub" / "test.csv").write_text("x,y\n3,4\n")
    return repo


def test_commit_refuses_changed_protected_data_and_never_deletes_it(data_repo: Path) -> None:
    exp = Experiment(data_repo)
    try:
        baseline(exp)
        exp.write_target(content="2\n")
        (data_repo / "data" / "train.csv").write_text("x,y\n1,200\n")
        (data_repo / "data" / "new.csv").write_text("extra\n")
        (data_repo / "data" / "sub" / "test.csv").unlink()
        with pytest.raises(IntegrityError) as e:
            exp.commit("two")
        assert set(e.value.files) == {
            "data/train.csv (content changed)",
            "data/new.csv (new)",
            "data/sub/test.csv (deleted)",
        }
        assert "untracked files are never deleted" in str(e.value)
        # Untracked user files are neither deleted nor rewritten.
        assert (data_repo / "data" / "train.csv").read_text() == "x,y\n1,200\n"
        assert (data_repo / "data" / "new.csv").read_text() == "extra\n"
        # The user puts the data back: the loop goes on.
        (data_repo / "data" / "train.csv").write_text("x,y\n1,2\n")
        (data_repo / "data" / "new.csv").unlink()
        (data_repo / "data" / "sub" / "test.csv").write_text("x,y\n3,4\n")
        exp.commit("two")
    finally:
        exp.close()


def test_touching_protected_data_without_changing_it_is_not_refused(data_repo: Path) -> None:
    exp = Experiment(data_repo)
    try:
        baseline(exp)
        path = data_repo / "data" / "train.csv"
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
        path.write_text(path.read_text())  # rewritten with the same bytes: new mtime, same hash
        exp.write_target(content="2\n")
        exp.commit("two")
    finally:
        exp.close()


def test_run_eval_refuses_protected_data_changed_during_the_eval(data_repo: Path) -> None:
    exp = Experiment(data_repo)
    try:
        baseline(exp)
        assert play(exp, "touch data/train.csv") == ("crash", "crash")
        assert "data/train.csv (content changed)" in records(data_repo)[-1]["reason"]
        assert (data_repo / "data" / "train.csv").read_text().endswith("tampered\n"), "not rewritten by the server"
    finally:
        exp.close()


def test_commit_refuses_protected_data_changed_while_the_server_was_down(data_repo: Path) -> None:
    exp = Experiment(data_repo)
    baseline(exp)
    exp.close()
    (data_repo / "data" / "train.csv").write_text("x,y\n1,2\n5,5\n")
    exp = Experiment(data_repo)
    try:
        exp.write_target(content="2\n")
        with pytest.raises(IntegrityError, match=r"data/train.csv \(content changed\)"):
            exp.commit("two")
    finally:
        exp.close()


def test_commit_refuses_protected_data_edited_in_place_with_its_mtime_put_back(data_repo: Path) -> None:
    exp = Experiment(data_repo)
    try:
        baseline(exp)
        exp.write_target(content="2\n")
        path = data_repo / "data" / "train.csv"
        st = path.stat()
        with path.open("r+") as f:  # same size, same inode ...
            f.write("a")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime: only ctime tells
        with pytest.raises(IntegrityError, match=r"data/train.csv \(content changed\)"):
            exp.commit("two")
    finally:
        exp.close()


def test_protect_globs_never_count_the_servers_own_files(make_repo: MakeRepo) -> None:
    # "**/*.json" also matches .autoexp/state.json, rewritten on every call.
    repo = make_repo(config=with_experiment_keys('protect = ["**/*.json", "**/*.jsonl", "**/*.tsv"]'))
    (repo / "data").mkdir()
    (repo / "data" / "labels.json").write_text("{}\n")
    exp = Experiment(repo)
    try:
        baseline(exp)
        assert play(exp, "2") == ("done", "keep")
        (repo / "data" / "labels.json").write_text('{"x": 1}\n')
        exp.write_target(content="3\n")
        with pytest.raises(IntegrityError, match=r"data/labels.json \(content changed\)"):
            exp.commit("three")
    finally:
        exp.close()


def test_protected_excludes_the_paths_it_is_told_even_from_an_older_snapshot(tmp_path: Path) -> None:
    from autoexp_mcp.guard import Protected

    (tmp_path / "value.txt").write_text("1\n")
    (tmp_path / "data.txt").write_text("d\n")
    store = tmp_path / ".autoexp" / "protect.json"
    Protected(tmp_path, ["*.txt"], store).load_or_snapshot()  # a snapshot that includes the target
    p = Protected(tmp_path, ["*.txt"], store, exclude=["value.txt"])
    p.load_or_snapshot()
    (tmp_path / "value.txt").write_text("2\n")
    assert p.violations() == []
    (tmp_path / "data.txt").write_text("changed\n")
    assert p.violations() == ["data.txt (content changed)"]


def test_commit_refuses_nothing_when_a_protect_glob_also_matches_the_target(make_repo: MakeRepo) -> None:
    repo = make_repo(config=with_experiment_keys('protect = ["*.txt"]'))
    (repo / "notes.txt").write_text("untracked data\n")
    exp = Experiment(repo)
    try:
        baseline(exp)
        assert play(exp, "2") == ("done", "keep")
        (repo / "notes.txt").write_text("changed\n")
        exp.write_target(content="3\n")
        with pytest.raises(IntegrityError, match=r"notes.txt \(content changed\)"):
            exp.commit("three")
    finally:
        exp.close()


# --- content -------------------------------------------------------------------------------

BAD_CONTENT = {
    "oversized": "7" * 1001,
    "oversized in bytes, not characters": "é" * 501,
    "a NUL byte": "7\x00\n",
    "a lone surrogate": "7\udcff\n",
    "a lone high surrogate": "\ud800",
}


@pytest.mark.parametrize("what", list(BAD_CONTENT))
def test_write_target_refuses_bad_content_and_leaves_the_file_untouched(make_repo: MakeRepo, what: str) -> None:
    repo = make_repo(config=with_experiment_keys("max_target_bytes = 1000"))
    exp = Experiment(repo)
    try:
        baseline(exp)
        before = (repo / "value.txt").read_bytes()
        stat_before = os.stat(repo / "value.txt")
        with pytest.raises(GuardError, match="Nothing was written"):
            exp.write_target(content=BAD_CONTENT[what])
        with pytest.raises(GuardError, match="Nothing was written"):
            exp.write_target(edits=[("1", BAD_CONTENT[what])])
        assert (repo / "value.txt").read_bytes() == before
        assert os.stat(repo / "value.txt").st_ino == stat_before.st_ino, "not even rewritten"
        assert exp.budget_status().phase == "idle", "a refused write starts no experiment"
        assert not list(repo.glob(".value.txt.autoexp-*")), "no temp file left behind"
    finally:
        exp.close()


def test_write_target_accepts_content_of_exactly_the_limit(make_repo: MakeRepo) -> None:
    repo = make_repo(config=with_experiment_keys("max_target_bytes = 1000"))
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content="7" * 999 + "\n")
        assert (repo / "value.txt").stat().st_size == 1000
    finally:
        exp.close()


@pytest.mark.anyio
async def test_mcp_write_target_refuses_nul_and_invalid_utf8(exp_after_baseline: Experiment) -> None:
    before = (exp_after_baseline.root / "value.txt").read_bytes()
    async with Client(build_server(exp_after_baseline, close_on_exit=False)) as c:
        for content in ("2\x00\n", "2\udcff\n"):
            with anyio.fail_after(CALL_TIMEOUT_S):
                res = await c.call_tool("write_target", {"content": content})
            assert res.is_error
    assert (exp_after_baseline.root / "value.txt").read_bytes() == before


# --- hostile text in descriptions and notes -------------------------------------------------

HOSTILE = [
    "--amend",
    "-m x",
    "--no-verify\t-m\tpwned",
    "line one\nline two\r\n\nSigned-off-by: Mallory <m@example.com>\nCo-authored-by: Eve <e@example.com>",
    "\x1b[31mred\x1b[0m\u2028next\u0085nel\x00nul",
    "-" * 10 + "x" * 100_000 + "\t" * 10,
]


@pytest.mark.parametrize("text", HOSTILE, ids=["amend", "dash-m", "tabs", "newlines-trailers", "control", "100KB"])
def test_commit_and_log_result_store_hostile_text_as_one_bounded_line(
    exp_after_baseline: Experiment, text: str
) -> None:
    exp = exp_after_baseline
    repo = exp.root
    incumbent = head(repo)
    exp.write_target(content="2\n")
    c = exp.commit(text)
    assert git(repo, "rev-parse", "HEAD~1") == incumbent, "no --amend: the experiment sits on the incumbent"
    assert head(repo).startswith(c.commit)
    message = git(repo, "log", "-1", "--format=%B").strip()
    assert "\n" not in message and message.startswith("autoexp #2: ")
    assert git(repo, "log", "-1", "--format=%(trailers)") == "", "no forged trailers"
    assert git(repo, "log", "-1", "--format=%an") == GIT_ENV["GIT_AUTHOR_NAME"]
    assert len(c.description) <= 500
    assert all(ch.isprintable() and ch != "\t" for ch in c.description)
    exp.run_eval(30)
    exp.decide()
    row = exp.log_result(notes=text).row
    assert len(row.description) <= 500
    rec = records(repo)[-1]
    assert len(rec["notes"]) <= 2000 and "\n" not in rec["notes"] and "\t" not in rec["notes"]
    assert all(ch.isprintable() for ch in rec["notes"] + rec["description"])
    lines = (repo / "results.tsv").read_text().split("\n")
    assert len(lines) == 4 and lines[-1] == "", "one header, two rows, nothing more"
    assert len(lines[2].split("\t")) == 4
    assert verify(repo) == []


def test_log_result_replaces_the_description_with_cleaned_text(exp_after_baseline: Experiment) -> None:
    exp = exp_after_baseline
    exp.write_target(content="2\n")
    exp.commit("two")
    exp.run_eval(30)
    exp.decide()
    row = exp.log_result(description="a\tb\nc " + "y" * 10_000).row
    assert row.description.startswith("a b c y") and len(row.description) <= 500
    assert verify(exp.root) == []


@pytest.mark.anyio
async def test_mcp_commit_with_a_leading_dash_and_newlines_is_one_line(exp_after_baseline: Experiment) -> None:
    repo = exp_after_baseline.root
    async with Client(build_server(exp_after_baseline, close_on_exit=False)) as c:
        with anyio.fail_after(CALL_TIMEOUT_S):
            await c.call_tool("write_target", {"content": "2\n"})
            res = await c.call_tool("commit", {"description": "--amend\n\nSigned-off-by: x <x@y>\n" + "z" * 100_000})
    assert not res.is_error, res.content
    assert git(repo, "log", "-1", "--format=%B").strip().count("\n") == 0
    assert len(git(repo, "log", "-1", "--format=%s")) <= 520


def test_log_result_refuses_an_infinite_cost_with_a_clear_error(exp_after_baseline: Experiment) -> None:
    exp = exp_after_baseline
    exp.write_target(content="2\n")
    exp.commit("two")
    exp.run_eval(30)
    exp.decide()
    with pytest.raises(GuardError, match="cost_usd"):
        exp.log_result(cost_usd=float("inf"))


# --- every tool in every wrong phase --------------------------------------------------------

PHASES = ["baseline", "idle", "edited", "committed", "running", "evaluated", "decided"]
NEXT = {
    "baseline": "run_eval",
    "idle": "write_target",
    "edited": "commit",
    "committed": "run_eval",
    "running": "run_eval",
    "evaluated": "decide",
    "decided": "log_result",
}
ALLOWED = {
    "write_target": {"idle", "edited"},
    "commit": {"edited"},
    "run_eval": {"baseline", "committed", "running", "evaluated"},
    "decide": {"evaluated"},
    "log_result": {"decided"},
}
TOOLS: dict[str, Callable[[Experiment], object]] = {
    "write_target": lambda e: e.write_target(content="7\n"),
    "commit": lambda e: e.commit("seven"),
    "run_eval": lambda e: e.run_eval(0),
    "decide": lambda e: e.decide(),
    "log_result": lambda e: e.log_result(notes="n"),
}
TOOL_ARGS: dict[str, dict[str, Any]] = {
    "write_target": {"content": "7\n"},
    "commit": {"description": "seven"},
    "run_eval": {"wait_seconds": 0},
    "decide": {},
    "log_result": {"notes": "n"},
}
WRONG = [(phase, tool) for phase in PHASES for tool in TOOLS if phase not in ALLOWED[tool]]


def drive_to(exp: Experiment, phase: str, start_run: bool = True) -> None:
    if phase == "baseline":
        return
    baseline(exp)
    if phase == "idle":
        return
    exp.write_target(content="sleep 30 2\n" if phase == "running" else "2\n")
    if phase == "edited":
        return
    exp.commit("two")
    if phase == "committed" or not start_run:
        return
    if phase == "running":
        assert exp.run_eval(0).status == "running"
        return
    exp.run_eval(30)
    if phase == "decided":
        exp.decide()


@pytest.fixture(scope="module")
def phase_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A closed repository stopped at each phase, built once; tests open copies."""
    home = tmp_path_factory.mktemp("phases-home")
    out: dict[str, Path] = {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in GIT_ENV.items():
            mp.setenv(k, v)
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        base = tmp_path_factory.mktemp("phases")
        for phase in PHASES:
            repo = init_repo(
                base / phase, {"value.txt": "1\n", "evaluate.py": HARNESS, "autoexp.toml": harness_config()}
            )
            exp = Experiment(repo)
            try:
                # A closed server's run is over (logged as interrupted when it opens again): a
                # running copy is started from a committed template when it is opened.
                drive_to(exp, phase, start_run=phase != "running")
            finally:
                exp.close()
            out[phase] = repo
        yield out


def snapshot(repo: Path) -> tuple[bytes, str, bytes, bytes]:
    ledger = repo / "experiments.jsonl"
    return (
        (repo / ".autoexp" / "state.json").read_bytes(),
        head(repo),
        (repo / "value.txt").read_bytes(),
        ledger.read_bytes() if ledger.exists() else b"",
    )


@pytest.fixture
def open_at(phase_templates: dict[str, Path], tmp_path: Path) -> Iterator[Callable[[str], Experiment]]:
    opened: list[Experiment] = []

    def open_(phase: str) -> Experiment:
        repo = tmp_path / phase
        shutil.copytree(phase_templates[phase], repo, symlinks=True)
        exp = Experiment(repo)
        opened.append(exp)
        if phase == "running":
            assert exp.run_eval(0).status == "running"
        return exp

    yield open_
    for exp in opened:
        exp.close()


@pytest.mark.parametrize(("phase", "tool"), WRONG)
def test_tool_refuses_a_wrong_phase_and_names_the_next_tool(
    open_at: Callable[[str], Experiment], phase: str, tool: str
) -> None:
    exp = open_at(phase)
    before = snapshot(exp.root)
    with pytest.raises(OrderError) as e:
        TOOLS[tool](exp)
    assert e.value.next_tool == NEXT[phase]
    assert NEXT[phase] in str(e.value)
    assert snapshot(exp.root) == before, "a refused call changes nothing"
    assert exp.budget_status().next == NEXT[phase]


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.anyio
async def test_mcp_tools_refuse_a_wrong_phase_with_the_next_tool(
    open_at: Callable[[str], Experiment], phase: str
) -> None:
    exp = open_at(phase)
    async with Client(build_server(exp, close_on_exit=False)) as c:
        for tool in TOOLS:
            if phase in ALLOWED[tool]:
                continue
            with anyio.fail_after(CALL_TIMEOUT_S):
                res = await c.call_tool(tool, TOOL_ARGS[tool])
            assert res.is_error, (phase, tool)
            assert f"(next: {NEXT[phase]})" in res.content[0].text  # type: ignore[union-attr]


def test_tools_refuse_a_wrong_phase_while_an_eval_really_runs(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo())
    try:
        drive_to(exp, "running")
        for tool in ("write_target", "commit", "decide", "log_result"):
            with pytest.raises(OrderError) as e:
                TOOLS[tool](exp)
            assert e.value.next_tool == "run_eval"
        assert exp.read_target().content == "sleep 30 2\n"
        assert exp.run_eval(0).status == "running", "the run goes on"
    finally:
        exp.close()


# --- concurrent calls -------------------------------------------------------------------------


def test_concurrent_calls_never_exceed_the_budget_nor_log_a_row_twice(make_repo: MakeRepo) -> None:
    repo = make_repo(max_experiments=4, crashes=10)
    exp = Experiment(repo)
    errors: list[BaseException] = []
    stop = threading.Event()

    def agent(seed: int) -> None:
        rnd = random.Random(seed)
        calls: list[Callable[[], object]] = [
            lambda: exp.write_target(content=f"{rnd.randint(0, 9)}\n"),
            lambda: exp.commit(f"try from thread {seed}"),
            lambda: exp.run_eval(2),
            exp.decide,
            lambda: exp.log_result(notes=f"thread {seed}"),
            exp.budget_status,
            exp.read_target,
        ]
        while not stop.is_set():
            try:
                rnd.choice(calls)()
            except AutoexpError:
                pass
            except BaseException as e:  # anything else is a bug
                errors.append(e)
                return
            if exp.budget_status().stop and exp.state.phase == Phase.IDLE:
                return

    threads = [threading.Thread(target=agent, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    for t in threads:
        t.join(10)
    try:
        assert not errors, errors
        assert not any(t.is_alive() for t in threads)
        status = exp.budget_status()
        assert status.stop and status.experiments_used == 4
        assert [r["experiment"] for r in records(repo)] == [1, 2, 3, 4]
        assert len((repo / "results.tsv").read_text().splitlines()) == 5
        with pytest.raises(AutoexpError):
            exp.write_target(content="9\n")
    finally:
        exp.close()
    assert verify(repo) == []


@pytest.mark.anyio
async def test_concurrent_mcp_calls_never_exceed_the_budget(make_repo: MakeRepo) -> None:
    repo = make_repo(max_experiments=3, crashes=10)
    exp = Experiment(repo)
    async with Client(build_server(exp)) as c:

        async def agent(seed: int) -> None:
            rnd = random.Random(seed)
            for _ in range(60):
                tool = rnd.choice(list(TOOL_ARGS))
                args = {**TOOL_ARGS[tool]}
                if tool == "write_target":
                    args["content"] = f"{rnd.randint(0, 9)}\n"
                if tool == "run_eval":
                    args["wait_seconds"] = 1
                with anyio.fail_after(CALL_TIMEOUT_S):
                    await c.call_tool(tool, args)
                status = (await c.call_tool("budget_status", {})).structured_content
                assert status is not None
                if status["stop"] and status["phase"] == "idle":
                    return

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for seed in range(6):
                    tg.start_soon(agent, seed)
    assert [r["experiment"] for r in records(repo)] == list(range(1, len(records(repo)) + 1))
    assert 1 <= len(records(repo)) <= 3
    assert verify(repo) == []


# --- the eval's output, environment and limits ----------------------------------------------

SPAM_HARNESS = textwrap.dedent(
    """\
    import sys
    line = "x" * 99 + "\\n"
    out = sys.stdout
    for _ in range(50_000):  # 5 MB
        out.write(line)
    print("score: 3")
    """
)


def test_an_eval_printing_far_more_than_max_log_bytes_leaves_a_capped_log(make_repo: MakeRepo) -> None:
    repo = make_repo(config=with_experiment_keys("max_log_bytes = 65536"), files={"evaluate.py": SPAM_HARNESS})
    exp = Experiment(repo)
    try:
        view = exp.run_eval(30)
        assert view.status == "done" and view.metrics == {"score": 3.0}, "the metric at the end is still read"
        assert len(view.tail) < 4000
        exp.decide()
        exp.log_result()
    finally:
        exp.close()
    rec = records(repo)[-1]
    assert rec["log_truncated"] is True
    log = repo / rec["log"]
    assert log.stat().st_size <= 65536 + 100
    assert b"bytes of output omitted]" in log.read_bytes()


ENV_HARNESS = textwrap.dedent(
    """\
    import json, os, sys
    print("ENV " + json.dumps(sorted(os.environ)))
    print("STDIN " + repr(sys.stdin.read()))
    print("score: 1")
    """
)


def test_the_eval_environment_refuses_server_secrets_but_has_path_and_the_run(
    make_repo: MakeRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter3")
    monkeypatch.setenv("MY_SETTING", "passed on purpose")
    repo = make_repo(config=with_experiment_keys('env = ["MY_SETTING"]'), files={"evaluate.py": ENV_HARNESS})
    exp = Experiment(repo)
    try:
        view = exp.run_eval(30)
        assert view.status == "done"
        log = (repo / ".autoexp" / "runs" / "1.log").read_text()
    finally:
        exp.close()
    names = set(json.loads(next(line for line in log.splitlines() if line.startswith("ENV "))[4:]))
    assert "SECRET_TOKEN" not in names and "AWS_SECRET_ACCESS_KEY" not in names
    assert {"PATH", "HOME", "AUTOEXP_RUN", "AUTOEXP_COMMIT", "AUTOEXP_TAG", "MY_SETTING"} <= names
    assert not {n for n in names if n.startswith("GIT_")}, "not even the server's git identity"
    assert "STDIN ''" in log, "stdin is closed"


LIMIT_HARNESS = textwrap.dedent(
    """\
    value = open("value.txt").read().strip()
    if value == "spin":
        while True:
            pass
    if value == "hog":
        hog = bytearray(2 * 1024 * 1024 * 1024)
    print(f"score: {value}")
    """
)


def test_cpu_seconds_turn_a_busy_loop_into_a_crash(make_repo: MakeRepo) -> None:
    repo = make_repo(config=with_experiment_keys("cpu_seconds = 1", timeout=30), files={"evaluate.py": LIMIT_HARNESS})
    exp = Experiment(repo)
    try:
        baseline(exp)
        exp.write_target(content="spin\n")
        exp.commit("spin")
        view = exp.run_eval(30)
        assert view.status == "crash", view
        assert view.elapsed_s < 15, "killed by RLIMIT_CPU, long before the 30 s timeout"
        assert "SIGXCPU" in view.reason
    finally:
        exp.close()


def test_memory_mb_turns_a_memory_hog_into_a_crash(make_repo: MakeRepo) -> None:
    repo = make_repo(config=with_experiment_keys("memory_mb = 512"), files={"evaluate.py": LIMIT_HARNESS})
    exp = Experiment(repo)
    try:
        baseline(exp)
        status, decision = play(exp, "hog")
        assert (status, decision) == ("crash", "crash")
        assert "MemoryError" in (repo / records(repo)[-1]["log"]).read_text()
    finally:
        exp.close()


ESCAPE_HARNESS = textwrap.dedent(
    """\
    import subprocess, sys
    marker, how = sys.argv[1], open("value.txt").read().strip()
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)", marker]
    if how == "keeps-stdout":  # a clean environment and its own session, but the eval's output inherited
        subprocess.Popen(sleeper, env={}, start_new_session=True)
    elif how == "detached":  # a clean environment, its own session, no fd of the eval
        subprocess.Popen(sleeper, env={}, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, close_fds=True)
    print("score: 1")
    """
)


def run_escape(make_repo: MakeRepo, how: str) -> list[int]:
    marker = f"autoexp-escape-{uuid.uuid4().hex[:8]}"
    config = harness_config().replace("evaluate.py", f"evaluate.py {marker}", 1)
    exp = Experiment(make_repo(value=how, config=config, files={"evaluate.py": ESCAPE_HARNESS}))
    try:
        assert exp.run_eval(30).status == "done"
    finally:
        exp.close()
    # SIGKILL is asynchronous: give a killed process a moment to leave /proc, bounded.
    deadline = time.monotonic() + 2
    while cmdline_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = cmdline_pids(marker)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def test_an_eval_descendant_without_marker_but_holding_the_output_does_not_outlive_the_run(
    make_repo: MakeRepo,
) -> None:
    assert run_escape(make_repo, "keeps-stdout") == []


def test_a_fully_detached_eval_descendant_does_not_outlive_the_run(make_repo: MakeRepo) -> None:
    assert run_escape(make_repo, "detached") == []


# --- one writer -------------------------------------------------------------------------------


def test_a_second_server_refuses_and_names_the_holder(exp_after_baseline: Experiment) -> None:
    from autoexp_mcp.errors import LockError

    with pytest.raises(LockError, match=f"pid {os.getpid()}"):
        Experiment(exp_after_baseline.root)


def test_a_stale_lock_from_a_dead_process_is_taken_over(make_repo: MakeRepo) -> None:
    repo = make_repo()
    Experiment(repo).close()
    (repo / ".autoexp" / "lock").write_text("999999999\n")
    exp = Experiment(repo)
    try:
        assert (repo / ".autoexp" / "lock").read_text() == f"{os.getpid()}\n"
    finally:
        exp.close()


def test_start_refuses_a_state_that_disagrees_with_the_ledger(make_repo: MakeRepo) -> None:
    repo = make_repo(max_experiments=3)
    exp = Experiment(repo)
    baseline(exp)
    play(exp, "2")
    play(exp, "3")
    assert exp.budget_status().stop
    exp.close()
    # Signed through the real API: an old copy the server once wrote would carry a good mac too.
    state = load_state(repo)
    assert state is not None
    save_state(repo, state.model_copy(update={"experiments": 0}))
    with pytest.raises(AutoexpError, match="counts 0 experiments but experiments.jsonl has 3"):
        Experiment(repo).close()


def test_start_refuses_a_dirty_harness_before_the_first_run(make_repo: MakeRepo) -> None:
    repo = make_repo()
    (repo / "evaluate.py").write_text(SCORE_1000)
    with pytest.raises(DirtyTreeError, match="evaluate.py"):
        Experiment(repo)
    assert load_state(repo) is None
