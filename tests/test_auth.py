"""What a restart reads is authenticated with the user's key (autoexp_mcp.auth): the key file
itself, and a restarted server refusing the state, the protected-data snapshot and the ledger
when the eval (or anyone without the key) wrote them."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autoexp_mcp import auth
from autoexp_mcp.errors import GuardError, IntegrityError
from autoexp_mcp.guard import Protected
from autoexp_mcp.ledger import record_hash
from autoexp_mcp.loop import Experiment
from autoexp_mcp.state import load_state, save_state
from conftest import MakeRepo, baseline, harness_config, installed_command, play, server_env

SERVE_S = 60.0  # a refused `autoexp-mcp serve`: imports, then the refusal


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A key file of this test's own, not created yet."""
    path = tmp_path / "config" / "autoexp-mcp" / "key"
    monkeypatch.setenv(auth.KEY_ENV, str(path))
    return path


# --- the key file ------------------------------------------------------------------------------


def test_the_key_is_created_on_first_use_private_and_whole(key_file: Path) -> None:
    assert not auth.has_key()
    tag = auth.mac(b"data")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert len(key_file.read_bytes()) == auth.KEY_BYTES
    assert [p.name for p in key_file.parent.iterdir()] == ["key"], "no temp file left behind"
    assert auth.mac(b"data") == tag and len(tag) == 64
    assert auth.check(b"data", tag)
    assert not auth.check(b"datA", tag)
    assert auth.key_dir() == key_file.parent


def test_the_key_file_is_found_where_the_environment_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.KEY_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert auth.key_path() == tmp_path / "xdg" / "autoexp-mcp" / "key"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert auth.key_path() == tmp_path / "home" / ".config" / "autoexp-mcp" / "key"
    monkeypatch.setenv(auth.KEY_ENV, str(tmp_path / "k"))
    assert auth.key_path() == tmp_path / "k"
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists(), "naming it creates nothing"


def test_a_key_file_readable_by_others_is_refused_with_the_fix(key_file: Path) -> None:
    key_file.parent.mkdir(parents=True)
    key_file.write_bytes(os.urandom(auth.KEY_BYTES))
    key_file.chmod(0o644)
    with pytest.raises(GuardError, match=rf"open to group or others \(mode 644\); run `chmod 600 {key_file}`"):
        auth.mac(b"x")
    key_file.chmod(0o600)
    assert auth.check(b"x", auth.mac(b"x"))


def test_a_key_file_that_is_a_symlink_is_refused(key_file: Path, tmp_path: Path) -> None:
    real = tmp_path / "real-key"
    real.write_bytes(os.urandom(auth.KEY_BYTES))
    real.chmod(0o600)
    key_file.parent.mkdir(parents=True)
    key_file.symlink_to(real)
    with pytest.raises(GuardError, match="is a symlink"):
        auth.mac(b"x")


@pytest.mark.parametrize("what", ["directory", "fifo", "short"])
def test_a_key_file_that_is_not_a_32_byte_regular_file_is_refused(key_file: Path, what: str) -> None:
    key_file.parent.mkdir(parents=True)
    if what == "directory":
        key_file.mkdir(mode=0o700)
    elif what == "fifo":
        os.mkfifo(key_file, 0o600)  # opening it must not hang
    else:
        key_file.write_bytes(b"short")
        key_file.chmod(0o600)
    why = "holds 5 bytes, not 32" if what == "short" else "is not a regular file"
    with pytest.raises(GuardError, match=why):
        auth.mac(b"x")


def test_checking_never_creates_a_key(key_file: Path) -> None:
    with pytest.raises(auth.KeyMissingError, match=str(key_file)):
        auth.check(b"x", "0" * 64)
    assert auth.verdict(b"x", "0" * 64, "whoever") is auth.Verdict.NO_KEY
    assert not key_file.exists()


def test_processes_racing_to_create_the_key_all_get_the_same_one(key_file: Path) -> None:
    code = "from autoexp_mcp import auth; print(auth.key_id())"
    env = {**os.environ, auth.KEY_ENV: str(key_file)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(8)
    ]
    ids = {p.communicate(timeout=SERVE_S)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert ids == {auth.key_id()}, "one key, whoever won"


# --- state.json ---------------------------------------------------------------------------------


def serve_refusal(repo: Path) -> str:
    """A real restart: `autoexp-mcp serve` must refuse to open the repository; returns stderr."""
    res = subprocess.run(
        [installed_command(), "serve", "--repo", str(repo)],
        env=server_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=SERVE_S,
    )
    assert res.returncode != 0, res.stderr
    return res.stderr


@pytest.fixture
def played(make_repo: MakeRepo) -> Path:
    """A repository whose server ran a baseline and one discarded experiment, then stopped."""
    repo = make_repo(value="5")
    exp = Experiment(repo)
    try:
        baseline(exp)
        assert play(exp, "3") == ("done", "discard")
    finally:
        exp.close()
    return repo


def forge_state(repo: Path, drop_mac: bool) -> bytes:
    """What the eval writes: the loop just evaluated a great result, and the clock starts now."""
    path = repo / ".autoexp" / "state.json"
    st = json.loads(path.read_text())
    st.update(phase="evaluated", started_at=st["started_at"] + 10**6)
    st["pending"] = {
        "experiment": 3,
        "parent": st["incumbent"]["commit"],
        "commit": st["incumbent"]["commit"],
        "result": {"status": "done", "metrics": {"score": 1e9}},
    }
    if drop_mac:
        del st["mac"]
    path.write_text(json.dumps(st))
    return path.read_bytes()


@pytest.mark.parametrize(("drop_mac", "why"), [(False, "does not match its mac"), (True, "carries no mac")])
def test_start_refuses_a_forged_state(played: Path, drop_mac: bool, why: str) -> None:
    forged = forge_state(played, drop_mac)
    ledger = (played / "experiments.jsonl").read_bytes()
    with pytest.raises(IntegrityError) as e:
        Experiment(played)
    msg = str(e.value)
    assert msg.startswith(f".autoexp/state.json {why}")
    assert "not written by this server with this user's key (" in msg and "by the eval" in msg
    assert "will not guess" in msg
    assert "Restore the .autoexp/state.json the server wrote" in msg
    assert "start a new tag" in msg and "--from <commit>" in msg and "autoexp-mcp verify" in msg
    err = serve_refusal(played)
    assert f".autoexp/state.json {why}" in err
    assert (played / ".autoexp" / "state.json").read_bytes() == forged, "left as evidence"
    assert (played / "experiments.jsonl").read_bytes() == ledger


def test_a_state_the_server_wrote_reads_back(played: Path) -> None:
    st = load_state(played)
    assert st is not None and st.experiments == 2
    raw = json.loads((played / ".autoexp" / "state.json").read_text())
    assert raw["key_id"] == auth.key_id() and len(raw["mac"]) == 64
    save_state(played, st.model_copy(update={"cost_usd": 1.5}))
    again = load_state(played)
    assert again is not None and again.cost_usd == 1.5


def test_start_refuses_a_state_signed_with_another_key(
    played: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other-user" / "key"
    monkeypatch.setenv(auth.KEY_ENV, str(other))
    auth.mac(b"another user's key")
    with pytest.raises(IntegrityError, match=f"was signed with a different key than the one in {other}"):
        Experiment(played)
    gone = tmp_path / "deleted" / "key"
    monkeypatch.setenv(auth.KEY_ENV, str(gone))
    with pytest.raises(IntegrityError, match=f"is signed, but the key file {gone} does not exist"):
        Experiment(played)
    assert not gone.exists(), "a start that refuses creates no new key"
    assert f"is signed, but the key file {gone} does not exist" in serve_refusal(played)


def test_start_refuses_a_deleted_state_when_the_ledger_has_rows(played: Path) -> None:
    (played / ".autoexp" / "state.json").unlink()
    with pytest.raises(IntegrityError, match="state.json is missing, but experiments.jsonl holds experiments"):
        Experiment(played)
    assert not (played / ".autoexp" / "state.json").exists(), "no fresh state with a fresh budget"


# --- protect.json -------------------------------------------------------------------------------

PROTECT = 'protect = ["data/**"]'


@pytest.fixture
def data_repo(make_repo: MakeRepo) -> Path:
    repo = make_repo(config=harness_config().replace("[[metric]]", PROTECT + "\n\n[[metric]]", 1))
    (repo / "data" / "sub").mkdir(parents=True)
    (repo / "data" / "train.csv").write_text("x,y\n1,2\n")
    (repo / "data" / "sub" / "test.csv").write_text("x,y\n3,4\n")
    return repo


def test_start_refuses_a_deleted_snapshot_instead_of_taking_the_edited_data_as_clean(data_repo: Path) -> None:
    exp = Experiment(data_repo)
    baseline(exp)
    exp.close()
    (data_repo / ".autoexp" / "protect.json").unlink()
    (data_repo / "data" / "train.csv").write_text("x,y\n1,2\n9,9\n")
    with pytest.raises(IntegrityError) as e:
        Experiment(data_repo)
    msg = str(e.value)
    assert msg.startswith(".autoexp/protect.json is missing, although evals have run")
    assert "will not take a fresh snapshot" in msg and "Restore the .autoexp/protect.json the server wrote" in msg
    assert not (data_repo / ".autoexp" / "protect.json").exists(), "not re-snapshotted"
    assert ".autoexp/protect.json is missing" in serve_refusal(data_repo)


def test_start_refuses_a_snapshot_rewritten_without_the_key(data_repo: Path) -> None:
    exp = Experiment(data_repo)
    baseline(exp)
    exp.close()
    store = data_repo / ".autoexp" / "protect.json"
    snap = json.loads(store.read_text())
    (data_repo / "data" / "train.csv").write_text("x,y\n0,0\n")
    st = (data_repo / "data" / "train.csv").stat()
    snap["files"]["data/train.csv"].update(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    store.write_text(json.dumps(snap))  # the old mac kept: the eval cannot make a new one
    with pytest.raises(IntegrityError, match=r"^\.autoexp/protect\.json does not match its mac"):
        Experiment(data_repo)


def test_before_any_eval_a_missing_snapshot_is_simply_taken(data_repo: Path) -> None:
    Experiment(data_repo).close()  # a start, no eval yet
    (data_repo / ".autoexp" / "protect.json").unlink()
    exp = Experiment(data_repo)
    try:
        assert (data_repo / ".autoexp" / "protect.json").exists()
        baseline(exp)
    finally:
        exp.close()


def test_a_symlink_added_in_a_protected_directory_is_a_violation(data_repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "answers.csv"
    outside.write_text("the labels\n")
    exp = Experiment(data_repo)
    try:
        baseline(exp)
        (data_repo / "data" / "sub" / "answers.csv").symlink_to(outside)
        exp.write_target(content="6\n")
        with pytest.raises(IntegrityError, match=r"data/sub/answers.csv \(new\)"):
            exp.commit("six")
    finally:
        exp.close()


def test_protected_symlinks_are_recorded_by_their_link_text_never_followed(tmp_path: Path) -> None:
    (tmp_path / "data" / "real").mkdir(parents=True)
    (tmp_path / "data" / "real" / "a.csv").write_text("a\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.csv").write_text("b\n")
    (tmp_path / "data" / "link.csv").symlink_to("real/a.csv")
    (tmp_path / "data" / "linked-dir").symlink_to(tmp_path / "elsewhere")
    p = Protected(tmp_path, ["data/**"], tmp_path / ".autoexp" / "protect.json")
    p.load_or_snapshot()
    files = json.loads((tmp_path / ".autoexp" / "protect.json").read_text())["files"]
    assert sorted(files) == ["data/link.csv", "data/linked-dir", "data/real/a.csv"], "the linked dir: one entry"
    assert files["data/link.csv"]["kind"] == "symlink" and files["data/linked-dir"]["kind"] == "symlink"
    (tmp_path / "elsewhere" / "b.csv").write_text("changed where the link points\n")
    assert p.violations() == [], "what a link points to outside the globs is not the data"
    (tmp_path / "data" / "link.csv").unlink()
    (tmp_path / "data" / "link.csv").symlink_to("/etc/hostname")
    os.mkfifo(tmp_path / "data" / "real" / "pipe")  # recorded by type: never opened (it would block)
    assert p.violations() == ["data/real/pipe (new)", "data/link.csv (symlink target changed)"]
    (tmp_path / "data" / "real" / "a.csv").unlink()
    (tmp_path / "data" / "real" / "a.csv").symlink_to(tmp_path / "elsewhere" / "b.csv")
    assert "data/real/a.csv (file replaced by a symlink)" in p.violations()


# --- the ledger at start ------------------------------------------------------------------------


def test_start_refuses_a_last_record_forged_without_the_key(played: Path) -> None:
    path = played / "experiments.jsonl"
    lines = path.read_text().splitlines()
    last = json.loads(lines[-1])
    last.update(status="keep", metrics={"score": 1e9})
    last["hash"] = record_hash(last)  # a recomputed chain: only the mac gives it away
    path.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    with pytest.raises(IntegrityError) as e:
        Experiment(played)
    msg = str(e.value)
    assert msg.startswith("the last record of experiments.jsonl (experiment 2) does not match its mac")
    assert "hash chain was recomputed by someone without the key" in msg
    assert "will not start on a ledger it cannot trust" in msg and "autoexp-mcp verify" in msg
    assert "hash chain was recomputed by someone without the key" in serve_refusal(played)
