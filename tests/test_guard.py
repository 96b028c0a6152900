"""The guard: target path checks, exact edits, content checks, atomic writes, protected data."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from autoexp_mcp import guard
from autoexp_mcp.errors import GuardError
from autoexp_mcp.guard import (
    MAX_EDITS,
    Protected,
    apply_edits,
    atomic_write_file,
    check_content,
    read_text,
    resolve_target,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    (r / "src").mkdir(parents=True)
    (r / ".git").mkdir()
    (r / ".git" / "config").write_text("[core]\n")
    (r / "value.txt").write_text("1\n")
    (r / "src" / "solver.py").write_text("x = 1\n")
    (tmp_path / "outside.txt").write_text("secret\n")
    (tmp_path / "outside_dir").mkdir()
    (tmp_path / "outside_dir" / "f.txt").write_text("secret\n")
    return r


# --- resolve_target ---------------------------------------------------------------------------


def test_resolve_target_accepts_a_regular_file_inside(root: Path) -> None:
    assert resolve_target(root, "value.txt") == (root / "value.txt").resolve()
    assert resolve_target(root, "src/solver.py") == (root / "src" / "solver.py").resolve()


def test_resolve_target_works_through_a_symlinked_repo_root(root: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert resolve_target(alias, "value.txt") == (root / "value.txt").resolve()


@pytest.mark.parametrize("rel", ["../outside.txt", "src/../../outside.txt", "../outside_dir/f.txt"])
def test_resolve_target_refuses_traversal(root: Path, rel: str) -> None:
    with pytest.raises(GuardError, match="outside"):
        resolve_target(root, rel)


def test_resolve_target_refuses_an_absolute_path(root: Path, tmp_path: Path) -> None:
    with pytest.raises(GuardError):
        resolve_target(root, str(tmp_path / "outside.txt"))


@pytest.mark.parametrize("to", ["inside", "outside"])
def test_resolve_target_refuses_a_symlink(root: Path, tmp_path: Path, to: str) -> None:
    dest = root / "value.txt" if to == "inside" else tmp_path / "outside.txt"
    (root / "link.txt").symlink_to(dest)
    with pytest.raises(GuardError, match="is a symlink"):
        resolve_target(root, "link.txt")


@pytest.mark.parametrize("to", ["inside", "outside"])
def test_resolve_target_refuses_a_path_through_a_symlinked_directory(root: Path, tmp_path: Path, to: str) -> None:
    dest = root / "src" if to == "inside" else tmp_path / "outside_dir"
    (root / "linkdir").symlink_to(dest)
    name = "solver.py" if to == "inside" else "f.txt"
    with pytest.raises(GuardError, match="through a symlinked directory"):
        resolve_target(root, f"linkdir/{name}")


def test_resolve_target_refuses_a_dangling_symlink(root: Path) -> None:
    (root / "dangling.txt").symlink_to(root / "nope.txt")
    with pytest.raises(GuardError, match="is a symlink"):
        resolve_target(root, "dangling.txt")


def test_resolve_target_refuses_a_directory(root: Path) -> None:
    with pytest.raises(GuardError, match="is not a regular file"):
        resolve_target(root, "src")


def test_resolve_target_refuses_a_fifo(root: Path) -> None:
    os.mkfifo(root / "pipe")
    with pytest.raises(GuardError, match="is not a regular file"):
        resolve_target(root, "pipe")


def test_resolve_target_refuses_a_missing_file(root: Path) -> None:
    with pytest.raises(GuardError, match="target nope.txt does not exist") as info:
        resolve_target(root, "nope.txt")
    assert "[experiment].target" in str(info.value)


def test_resolve_target_refuses_files_inside_dot_git(root: Path) -> None:
    with pytest.raises(GuardError, match="inside .git"):
        resolve_target(root, ".git/config")


# --- apply_edits ------------------------------------------------------------------------------

TEXT = "alpha = 1\nbeta = 2\ngamma = 3\n"


def test_edit_matching_exactly_once_is_applied() -> None:
    assert apply_edits(TEXT, [("beta = 2", "beta = 20")]) == "alpha = 1\nbeta = 20\ngamma = 3\n"


def test_edit_matching_nowhere_is_refused() -> None:
    with pytest.raises(GuardError, match="edit 1: `old` does not occur in the target") as info:
        apply_edits(TEXT, [("delta", "x")])
    assert "read_target" in str(info.value)
    assert "Nothing was written" in str(info.value)


def test_edit_matching_twice_is_refused() -> None:
    with pytest.raises(GuardError, match="edit 1: `old` occurs 2 times"):
        apply_edits("x = 1\nx = 1\n", [("x = 1", "x = 2")])


def test_empty_old_is_refused() -> None:
    with pytest.raises(GuardError, match="edit 1: `old` is empty"):
        apply_edits(TEXT, [("", "prefix")])


def test_no_edits_is_refused() -> None:
    with pytest.raises(GuardError, match="edits is empty"):
        apply_edits(TEXT, [])


def test_many_edits_up_to_the_limit() -> None:
    text = "".join(f"v{i} = 0\n" for i in range(MAX_EDITS))
    edits = [(f"v{i} = 0\n", f"v{i} = {i}\n") for i in range(MAX_EDITS)]
    assert apply_edits(text, edits) == "".join(f"v{i} = {i}\n" for i in range(MAX_EDITS))
    with pytest.raises(GuardError, match=f"at most {MAX_EDITS} edits"):
        apply_edits(text + "extra\n", [*edits, ("extra", "more")])


def test_edits_apply_in_order_each_to_the_result_of_the_previous() -> None:
    # The second edit matches text that only exists after the first.
    assert apply_edits(TEXT, [("beta = 2", "beta = 2  # tuned"), ("2  # tuned", "3  # tuned")]) == (
        "alpha = 1\nbeta = 3  # tuned\ngamma = 3\n"
    )
    # An edit whose text the previous one consumed no longer matches.
    with pytest.raises(GuardError, match="edit 2: `old` does not occur"):
        apply_edits(TEXT, [("beta = 2", "beta = 9"), ("beta = 2", "beta = 10")])
    # An edit that makes a later `old` ambiguous is caught at that later edit.
    with pytest.raises(GuardError, match="edit 2: `old` occurs 2 times"):
        apply_edits(TEXT, [("alpha = 1", "gamma = 3"), ("gamma = 3", "x")])


def test_edit_replaces_only_the_one_occurrence_literally() -> None:
    assert apply_edits("a.b a*b\n", [("a.b", r"\1 $&")]) == "\\1 $& a*b\n"


# --- content checks and reads -------------------------------------------------------------------


def test_check_content_returns_utf8_bytes() -> None:
    assert check_content("héllo ✓\n", 100) == "héllo ✓\n".encode()


def test_check_content_refuses_nul() -> None:
    with pytest.raises(GuardError, match="NUL byte"):
        check_content("a\x00b", 100)


def test_check_content_refuses_lone_surrogates() -> None:
    with pytest.raises(GuardError, match="not valid UTF-8"):
        check_content("bad \ud800 half", 100)


def test_check_content_limit_counts_bytes_not_characters() -> None:
    assert check_content("é" * 5, 10) == "é".encode() * 5
    with pytest.raises(GuardError, match=r"is 12 bytes, over the limit of 10 \(\[experiment\].max_target_bytes\)"):
        check_content("é" * 6, 10)


def test_read_text_refuses_oversize_and_binary(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(b"x" * 11)
    with pytest.raises(GuardError, match="over max_target_bytes = 10"):
        read_text(f, 10)
    f.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GuardError, match="not valid UTF-8"):
        read_text(f, 10)
    f.write_text("ok\n")
    assert read_text(f, 10) == "ok\n"


# --- atomic_write_file ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o755, 0o600, 0o644])
def test_atomic_write_keeps_the_mode(tmp_path: Path, mode: int) -> None:
    f = tmp_path / "run.sh"
    f.write_text("old\n")
    f.chmod(mode)
    atomic_write_file(f, b"new\n")
    assert f.read_bytes() == b"new\n"
    assert stat.S_IMODE(f.stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["run.sh"]


def test_atomic_write_creates_a_new_file_0644(tmp_path: Path) -> None:
    f = tmp_path / "new.txt"
    atomic_write_file(f, b"hi\n")
    assert f.read_bytes() == b"hi\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o644


def test_atomic_write_replaces_the_inode(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("old\n")
    reader = f.open("rb")  # a reader of the old version keeps seeing it whole
    try:
        atomic_write_file(f, b"new\n")
        assert reader.read() == b"old\n"
    finally:
        reader.close()


def test_atomic_write_failure_leaves_the_file_and_no_temp(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("old\n")
    with pytest.raises(TypeError):
        atomic_write_file(f, "not bytes")  # type: ignore[arg-type]
    assert f.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


# --- protected untracked files ----------------------------------------------------------------------


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    r = tmp_path / "proj"
    (r / "data" / "sub").mkdir(parents=True)
    (r / "data" / "train.csv").write_text("a,b\n1,2\n")
    (r / "data" / "test.csv").write_text("a,b\n3,4\n")
    (r / "data" / "sub" / "extra.csv").write_text("x\n")
    (r / "data" / "notes.md").write_text("not protected\n")
    return r


GLOBS = ["data/*.csv", "data/**/*.csv"]


def protected(root: Path) -> Protected:
    p = Protected(root, GLOBS, root / ".autoexp" / "protected.json")
    p.load_or_snapshot()
    return p


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def test_snapshot_records_every_matching_file(data_root: Path) -> None:
    p = protected(data_root)
    stored = json.loads((data_root / ".autoexp" / "protected.json").read_text())
    assert stored["globs"] == GLOBS
    assert sorted(stored["files"]) == ["data/sub/extra.csv", "data/test.csv", "data/train.csv"]
    assert p.violations() == []


def test_unchanged_files_are_not_rehashed(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = protected(data_root)
    hashed: list[str] = []
    original = Protected._hash
    monkeypatch.setattr(Protected, "_hash", lambda self, rel, now: hashed.append(rel) or original(self, rel, now))
    assert p.violations() == []
    assert hashed == []


def test_content_change_is_reported(data_root: Path) -> None:
    p = protected(data_root)
    (data_root / "data" / "train.csv").write_text("a,b\n9,9\n")  # same size
    # File times are coarse (a clock tick): make sure this write does not share the snapshot's.
    bump_mtime(data_root / "data" / "train.csv")
    assert p.violations() == ["data/train.csv (content changed)"]


def test_touched_but_identical_is_not_reported_nor_rehashed_again(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoexp_mcp import fsafe

    real_now = fsafe.fs_now
    monkeypatch.setattr(fsafe, "fs_now", lambda d: fsafe.Clock(real_now(d).dev, real_now(d).ns + 2_000_000_000))
    p = protected(data_root)
    f = data_root / "data" / "test.csv"
    bump_mtime(f)
    assert p.violations() == []
    # The new stat is remembered, on disk too ...
    stored = json.loads((data_root / ".autoexp" / "protected.json").read_text())["files"]["data/test.csv"]
    assert stored["mtime_ns"] == f.stat().st_mtime_ns
    # ... so neither this instance nor a new one hashes the file again.
    hashed: list[str] = []
    original = Protected._hash
    monkeypatch.setattr(Protected, "_hash", lambda self, rel, now: hashed.append(rel) or original(self, rel, now))
    assert p.violations() == []
    assert protected(data_root).violations() == []
    assert hashed == []


def test_rewritten_with_identical_content_is_not_reported(data_root: Path) -> None:
    p = protected(data_root)
    f = data_root / "data" / "train.csv"
    data = f.read_bytes()
    f.unlink()
    f.write_bytes(data)  # new inode, same bytes
    assert p.violations() == []


def test_new_file_matching_a_glob_is_reported(data_root: Path) -> None:
    p = protected(data_root)
    (data_root / "data" / "leak.csv").write_text("answers\n")
    (data_root / "data" / "other.md").write_text("not matched\n")
    assert p.violations() == ["data/leak.csv (new)"]


def test_deleted_file_is_reported(data_root: Path) -> None:
    p = protected(data_root)
    (data_root / "data" / "test.csv").unlink()
    assert p.violations() == ["data/test.csv (deleted)"]


def test_file_replaced_by_a_symlink_is_reported(data_root: Path) -> None:
    p = protected(data_root)
    f = data_root / "data" / "test.csv"
    f.unlink()
    f.symlink_to(data_root / "data" / "train.csv")
    assert p.violations() == ["data/test.csv (file replaced by a symlink)"]


def test_several_violations_are_all_reported(data_root: Path) -> None:
    p = protected(data_root)
    (data_root / "data" / "new.csv").write_text("n\n")
    (data_root / "data" / "test.csv").unlink()
    (data_root / "data" / "sub" / "extra.csv").write_text("changed and longer\n")
    assert p.violations() == ["data/new.csv (new)", "data/test.csv (deleted)", "data/sub/extra.csv (content changed)"]


def test_snapshot_persists_across_instances(data_root: Path) -> None:
    protected(data_root)
    snapshot = (data_root / ".autoexp" / "protected.json").read_text()
    # Changed while no server was running: the next server still compares against the snapshot.
    (data_root / "data" / "train.csv").write_text("edited while down\n")
    second = protected(data_root)
    assert (data_root / ".autoexp" / "protected.json").read_text() == snapshot
    assert second.violations() == ["data/train.csv (content changed)"]


def test_changed_globs_take_a_fresh_snapshot(data_root: Path) -> None:
    protected(data_root)
    (data_root / "data" / "train.csv").write_text("edited\n")
    p = Protected(data_root, ["data/*.csv"], data_root / ".autoexp" / "protected.json")
    p.load_or_snapshot()
    assert p.violations() == []
    assert json.loads((data_root / ".autoexp" / "protected.json").read_text())["globs"] == ["data/*.csv"]


def test_no_globs_protect_nothing_and_store_nothing(data_root: Path) -> None:
    store = data_root / ".autoexp" / "protected.json"
    p = Protected(data_root, [], store)
    p.load_or_snapshot()
    (data_root / "data" / "train.csv").unlink()
    assert p.violations() == []
    assert not store.exists()


def test_sha256_helper() -> None:
    assert guard.sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_a_stat_as_new_as_the_file_systems_clock_is_hashed_again(
    data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With coarse timestamps a rewrite within the same tick keeps size, mtime and ctime: a
    stat that is not older than the file system's clock is never trusted to mean "unchanged"."""
    from autoexp_mcp import fsafe

    f = data_root / "data" / "test.csv"
    monkeypatch.setattr(fsafe, "fs_now", lambda d: fsafe.Clock(f.stat().st_dev, f.stat().st_ctime_ns))  # its tick
    p = protected(data_root)
    stored = json.loads((data_root / ".autoexp" / "protected.json").read_text())["files"]["data/test.csv"]
    assert stored["ctime_ns"] == -1, "not remembered: it could change again within the tick"
    st = f.stat()
    data = f.read_bytes()
    f.write_bytes(data.replace(b"1", b"9") if b"1" in data else b"x" * len(data))  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.violations() == ["data/test.csv (content changed)"]
