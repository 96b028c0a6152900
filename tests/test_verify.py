"""`autoexp-mcp verify`: the hash chain, the kept commits on the branch, results.tsv against the JSONL."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoexp_mcp import auth
from autoexp_mcp.ledger import GENESIS_HASH, Ledger, Record, record_hash
from autoexp_mcp.loop import Experiment
from autoexp_mcp.verify import verify
from conftest import GIT_ENV, baseline, git, harness_config, init_repo, installed_command, play, server_env

# The template run: line 1 baseline (keep), 2 keep, 3 discard, 4 crash, 5 keep.
PLAYS = ["3", "2", "crash", "5"]
STATUSES = ["keep", "keep", "discard", "crash", "keep"]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One finished run, built once; each test tampers with its own copy."""
    home = tmp_path_factory.mktemp("verify-home")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in GIT_ENV.items():
            mp.setenv(k, v)
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
        from conftest import HARNESS

        repo = init_repo(
            tmp_path_factory.mktemp("verify") / "repo",
            {"value.txt": "1\n", "evaluate.py": HARNESS, "autoexp.toml": harness_config(crashes=5)},
        )
        exp = Experiment(repo)
        try:
            baseline(exp)
            for value in PLAYS:
                play(exp, value)
        finally:
            exp.close()
        yield repo


@pytest.fixture
def repo(template: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "repo"
    shutil.copytree(template, dest, symlinks=True)
    return dest


def jsonl_lines(repo: Path) -> list[str]:
    return (repo / "experiments.jsonl").read_text().splitlines()


def write_jsonl(repo: Path, lines: list[str]) -> None:
    (repo / "experiments.jsonl").write_text("".join(line + "\n" for line in lines))


def rechain(records: list[dict]) -> list[str]:
    """What a careful forger does: recompute every hash so the chain itself holds."""
    prev = GENESIS_HASH
    out = []
    for r in records:
        r = {**r, "prev_hash": prev}
        r["hash"] = record_hash(r)
        prev = r["hash"]
        out.append(json.dumps(r))
    return out


def test_a_clean_run_passes(repo: Path) -> None:
    assert [json.loads(x)["status"] for x in jsonl_lines(repo)] == STATUSES
    crash_row = (repo / "results.tsv").read_text().splitlines()[4].split("\t")
    assert crash_row[1:3] == ["", "crash"], "verify accepts the crash row's empty metric field"
    assert verify(repo) == []


# --- the records' macs: a chain only the key holder can extend --------------------------------

FORGED = "mac does not match its hash: the hash chain was recomputed by someone without the key (forged?)"


def test_a_chain_recomputed_without_the_key_is_reported_from_the_forged_row_on(repo: Path) -> None:
    records = [json.loads(x) for x in jsonl_lines(repo)]
    records[2]["status"] = "keep"  # the discarded experiment 3 becomes a keep ...
    write_jsonl(repo, rechain(records))  # ... and the whole chain is recomputed: it holds
    problems = verify(repo)
    assert [p for p in problems if FORGED in p] == [f"experiments.jsonl line {n}: {FORGED}" for n in (3, 4, 5)], (
        "rows 1-2 keep their hashes, and so their macs"
    )
    assert not any("prev_hash" in p or "hash does not match" in p for p in problems), "the chain itself holds"


def test_records_without_a_mac_are_reported_as_unauthenticated(repo: Path) -> None:
    records = [json.loads(x) for x in jsonl_lines(repo)]
    for r in records[3:]:
        del r["mac"]
    write_jsonl(repo, [json.dumps(r) for r in records])
    problems = verify(repo)
    unsigned = "unauthenticated record (no mac: not written by this server with this user's key)"
    assert problems == [f"experiments.jsonl line {n}: {unsigned}" for n in (4, 5)]


def test_records_signed_with_another_key_are_reported(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other" / "key"
    monkeypatch.setenv("AUTOEXP_KEY_FILE", str(other))
    auth.mac(b"a key of its own")
    problems = verify(repo)
    assert problems[:5] == [
        f"experiments.jsonl line {n}: signed with another key than {other} (another user's, or the key was replaced)"
        for n in range(1, 6)
    ]
    assert problems[5].startswith(f".autoexp/state.json was signed with a different key than the one in {other}")
    assert len(problems) == 6


def test_verify_says_it_cannot_check_the_macs_without_the_key(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere" / "key"
    monkeypatch.setenv("AUTOEXP_KEY_FILE", str(missing))
    problems = verify(repo)
    assert problems[0] == (
        "experiments.jsonl: cannot check the records' macs, so a hash chain recomputed by someone without the key "
        f"would go unnoticed: the key file {missing} does not exist. Run verify as the user who ran the server, "
        "with the same HOME, XDG_CONFIG_HOME or AUTOEXP_KEY_FILE."
    )
    assert problems[1].startswith(f".autoexp/state.json is signed, but the key file {missing} does not exist")
    assert len(problems) == 2, "the hash chain and the rest are still checked, and hold"
    assert not missing.exists(), "verify never creates a key"


def test_a_forged_state_is_reported(repo: Path) -> None:
    path = repo / ".autoexp" / "state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "experiments": 1}))
    problems = verify(repo)
    assert len(problems) == 1
    assert problems[0].startswith(".autoexp/state.json does not match its mac: it was not written by this server")


def test_an_edited_row_is_reported_with_its_line(repo: Path) -> None:
    lines = jsonl_lines(repo)
    rec = json.loads(lines[2])
    lines[2] = json.dumps({**rec, "status": "keep"})
    write_jsonl(repo, lines)
    problems = verify(repo)
    assert "experiments.jsonl line 3: hash does not match its content (edited?)" in problems
    assert all("line 4" not in p for p in problems if p.startswith("experiments.jsonl")), problems


def test_an_edited_row_with_a_recomputed_hash_breaks_the_next_link(repo: Path) -> None:
    lines = jsonl_lines(repo)
    rec = json.loads(lines[1])
    rec["metrics"] = {"score": 30.0}
    rec["hash"] = record_hash(rec)
    lines[1] = json.dumps(rec)
    write_jsonl(repo, lines)
    problems = verify(repo)
    assert problems == [
        "experiments.jsonl line 2: mac does not match its hash: the hash chain was recomputed by someone without "
        "the key (forged?)",
        "experiments.jsonl line 3: prev_hash does not match line 2 (reordered or a row deleted?)",
        "results.tsv line 3: score '3.000000' differs from experiments.jsonl experiment 2 ('30.000000')",
    ]


def test_reordered_rows_are_reported(repo: Path) -> None:
    lines = jsonl_lines(repo)
    lines[2], lines[3] = lines[3], lines[2]
    write_jsonl(repo, lines)
    problems = verify(repo)
    assert "experiments.jsonl line 3: prev_hash does not match line 2 (reordered or a row deleted?)" in problems
    assert "experiments.jsonl line 4: prev_hash does not match line 3 (reordered or a row deleted?)" in problems
    assert any(p.startswith("experiments.jsonl line 3: experiment 4 follows experiment 2") for p in problems)
    assert "results.tsv line 4: status 'discard' differs from experiments.jsonl experiment 4 ('crash')" in problems


def test_a_deleted_middle_row_is_reported(repo: Path) -> None:
    lines = jsonl_lines(repo)
    del lines[2]
    write_jsonl(repo, lines)
    problems = verify(repo)
    assert "experiments.jsonl line 3: prev_hash does not match line 2 (reordered or a row deleted?)" in problems
    expected = "experiments.jsonl line 3: experiment 4 follows experiment 2; expected 3"
    assert any(p.startswith(expected) for p in problems)
    assert "results.tsv line 6: no matching record in experiments.jsonl" in problems


def test_rows_deleted_from_the_end_are_caught_by_the_state_and_the_tsv(repo: Path) -> None:
    write_jsonl(repo, jsonl_lines(repo)[:3])
    problems = verify(repo)
    assert any(
        p.startswith("experiments.jsonl line 3: the last record is experiment 3, but .autoexp/state.json counts 5")
        for p in problems
    ), problems
    assert "results.tsv line 5: no matching record in experiments.jsonl" in problems


def test_a_torn_last_line_is_reported(repo: Path) -> None:
    text = (repo / "experiments.jsonl").read_text()
    (repo / "experiments.jsonl").write_text(text[:-40])
    problems = verify(repo)
    assert "experiments.jsonl line 5: an incomplete record (a write cut short by a crash?)" in problems


def test_a_changed_tsv_row_is_reported_column_by_column(repo: Path) -> None:
    tsv = repo / "results.tsv"
    rows = tsv.read_text().splitlines()
    cols = rows[3].split("\t")
    assert cols[2] == "discard"
    cols[2] = "keep"
    cols[3] = "a better story"
    rows[3] = "\t".join(cols)
    tsv.write_text("\n".join(rows) + "\n")
    assert verify(repo) == [
        "results.tsv line 4: status 'keep' differs from experiments.jsonl experiment 3 ('discard')",
        "results.tsv line 4: description 'a better story' differs from experiments.jsonl experiment 3 ('try 2')",
    ]


def test_a_missing_tsv_row_is_reported(repo: Path) -> None:
    tsv = repo / "results.tsv"
    tsv.write_text("".join(tsv.read_text().splitlines(keepends=True)[:-1]))
    assert verify(repo) == [
        "results.tsv line 6: missing; experiments.jsonl has 1 more record(s), from experiment 5",
    ]


def test_a_keep_commit_that_is_not_on_the_branch(repo: Path) -> None:
    kept = json.loads(jsonl_lines(repo)[4])["commit"]
    # Someone moves the branch back past the last kept commit.
    git(repo, "reset", "-q", "--hard", "HEAD~1")
    assert verify(repo) == [f"experiments.jsonl line 5: keep commit {kept} is not on branch autoexp/t"]


def test_a_keep_commit_that_does_not_exist(repo: Path) -> None:
    records = [json.loads(x) for x in jsonl_lines(repo)]
    records[1]["commit"] = "deadbee"
    write_jsonl(repo, rechain(records))
    problems = verify(repo)
    missing = "experiments.jsonl line 2: keep commit deadbee does not exist in the repository, nor on branch autoexp/t"
    assert missing in problems
    assert any(p.startswith("results.tsv line 3: commit ") for p in problems), "the TSV still tells the truth"


def test_a_reverted_commit_put_back_on_the_branch(repo: Path) -> None:
    discarded = json.loads(jsonl_lines(repo)[2])["commit"]
    git(repo, "reset", "-q", "--hard", discarded)
    problems = verify(repo)
    assert f"experiments.jsonl line 3: discard commit {discarded} is on branch autoexp/t, but it was reverted" in (
        problems
    )
    assert any("keep commit" in p and "line 5" in p for p in problems)


def test_a_commit_field_that_is_not_a_sha_never_reaches_git(repo: Path) -> None:
    records = [json.loads(x) for x in jsonl_lines(repo)]
    records[1]["commit"] = "--output=/tmp/x"
    write_jsonl(repo, rechain(records))
    problems = verify(repo)
    assert "experiments.jsonl line 2: commit '--output=/tmp/x' is not a commit id" in problems


def test_an_empty_ledger_passes(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "r", {"value.txt": "1\n", "autoexp.toml": harness_config()})
    assert verify(repo) == []


def run_cli(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [installed_command(), "verify", "--repo", str(repo)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
    )


def test_the_cli_exits_0_on_a_clean_ledger_and_1_with_every_problem(repo: Path) -> None:
    ok = run_cli(repo)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok:")
    lines = jsonl_lines(repo)
    del lines[1]
    write_jsonl(repo, lines)
    bad = run_cli(repo)
    assert bad.returncode == 1
    out = bad.stdout.splitlines()
    assert "FAIL: experiments.jsonl line 2: prev_hash does not match line 1 (reordered or a row deleted?)" in out
    assert all(line.startswith("FAIL: ") for line in out)


def test_the_cli_fails_on_a_chain_recomputed_without_the_key(repo: Path) -> None:
    records = [json.loads(x) for x in jsonl_lines(repo)]
    records[1]["metrics"] = {"score": 300.0}
    write_jsonl(repo, rechain(records))
    res = run_cli(repo)
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"FAIL: experiments.jsonl line 2: {FORGED}" in res.stdout.splitlines()


# --- recovery of a crash between the JSONL and the TSV write ---------------------------------


def last_record(repo: Path) -> Record:
    return Record.model_validate_json(jsonl_lines(repo)[-1])


def test_ensure_tsv_row_writes_a_row_lost_by_a_crash_once(repo: Path) -> None:
    tsv = repo / "results.tsv"
    full = tsv.read_bytes()
    tsv.write_bytes(b"".join(full.splitlines(keepends=True)[:-1]))
    ledger = Ledger(repo, ["score"])
    assert ledger.ensure_tsv_row(last_record(repo)) is True
    assert tsv.read_bytes() == full
    assert ledger.ensure_tsv_row(last_record(repo)) is False, "idempotent"
    assert tsv.read_bytes() == full
    assert verify(repo) == []


def test_ensure_tsv_row_replaces_a_torn_partial_row(repo: Path) -> None:
    tsv = repo / "results.tsv"
    full = tsv.read_bytes()
    tsv.write_bytes(full[:-12])
    assert Ledger(repo, ["score"]).ensure_tsv_row(last_record(repo)) is True
    assert tsv.read_bytes() == full
    assert verify(repo) == []


def test_verify_passes_after_a_crash_between_the_jsonl_and_the_tsv_write(repo: Path) -> None:
    exp = Experiment(repo)
    try:
        exp.write_target(content="9\n")
        exp.commit("nine")
        exp.run_eval(30)
        exp.decide()
        state = (repo / ".autoexp" / "state.json").read_bytes()
        tsv = (repo / "results.tsv").read_bytes()
        exp.log_result()
    finally:
        exp.close()
    # As if killed right after the JSONL append: the TSV row and the state write never happened.
    (repo / ".autoexp" / "state.json").write_bytes(state)
    (repo / "results.tsv").write_bytes(tsv)
    Experiment(repo).close()
    assert verify(repo) == []
