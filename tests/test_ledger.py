"""results.tsv and experiments.jsonl: format, text cleaning, hash chain and macs, tail reads, torn lines."""

from __future__ import annotations

import csv
import itertools
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp import auth
from autoexp_mcp.errors import IntegrityError
from autoexp_mcp.ledger import (
    GENESIS_HASH,
    MAX_TEXT_CHARS,
    Ledger,
    Record,
    clean_text,
    record_hash,
    record_mac,
    seal_record,
)

SHA = "a" * 40


def row(n: int, **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "experiment": n,
        "commit": f"{n:07x}",
        "timestamp": f"2024-01-01T00:00:{n % 60:02d}Z",
        "status": "keep",
        "metrics": {"score": 0.5 + n, "ms": 10.0 * n},
        "description": f"experiment {n}",
    }
    fields.update(kw)
    return fields


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path, ["score", "ms"])


def tsv_lines(ledger: Ledger) -> list[list[str]]:
    return [line.split("\t") for line in ledger.tsv.read_text(encoding="utf-8").splitlines()]


# --- results.tsv ---------------------------------------------------------------------------


def test_tsv_has_a_header_and_one_column_per_metric(ledger: Ledger) -> None:
    ledger.append(row(1))
    ledger.append(row(2, description="second"))
    lines = tsv_lines(ledger)
    assert lines[0] == ["commit", "score", "ms", "status", "description"]
    assert lines[1] == ["0000001", "1.500000", "10.000000", "keep", "experiment 1"]
    assert lines[2] == ["0000002", "2.500000", "20.000000", "keep", "second"]
    assert len(lines) == 3  # the header is written once


def test_crash_and_timeout_rows_leave_the_metric_fields_empty(ledger: Ledger) -> None:
    # A 0.000000 would read as the best value of a lower-is-better metric; empty reads as NaN.
    ledger.append(row(1, status="crash", metrics={"score": None, "ms": None}))
    ledger.append(row(2, status="crash", metrics={}))
    ledger.append(row(3, status="timeout", metrics={"score": 0.5, "ms": 3.0}))  # a partial measurement
    ledger.append(row(4, status="discard", metrics={"score": 0.25, "ms": None}))
    lines = tsv_lines(ledger)
    assert lines[1][1:4] == ["", "", "crash"]
    assert lines[2][1:4] == ["", "", "crash"]
    assert lines[3][1:4] == ["", "", "timeout"]
    assert lines[4][1:4] == ["0.250000", "", "discard"], "a metric without a value is empty in any row"
    with ledger.tsv.open(newline="") as f:
        parsed = list(csv.DictReader(f, delimiter="\t"))
    assert [r["score"] for r in parsed] == ["", "", "", "0.250000"]
    assert [r["status"] for r in parsed] == ["crash", "crash", "timeout", "discard"]


def test_tsv_header_written_when_file_exists_but_is_empty(ledger: Ledger) -> None:
    ledger.tsv.write_text("")
    ledger.append(row(1))
    assert tsv_lines(ledger)[0][0] == "commit"


def test_description_with_tabs_and_newlines_stays_one_tsv_row(ledger: Ledger) -> None:
    ledger.append(row(1, description="try\tthis\nand\r\nthat", notes="a\tb"))
    lines = tsv_lines(ledger)
    assert len(lines) == 2
    assert lines[1][-1] == "try this and that"
    assert ledger.last_record() == ledger.tail(1)[0]
    rec = ledger.last_record()
    assert rec is not None
    assert rec.description == "try this and that"
    assert rec.notes == "a b"


# --- clean_text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\tb", "a b"),
        ("line one\nline two\r\n", "line one line two"),
        ("  padded   spaces  ", "padded spaces"),
        ("bell\x07 esc\x1b[31m red", "bell esc [31m red"),
        ("nul\x00byte", "nul byte"),
        ("sep\u2028par\u2029", "sep par"),
        ("lone \ud800 surrogate", "lone surrogate"),
        ("unicodé ✓ ok", "unicodé ✓ ok"),
        ("", ""),
    ],
)
def test_clean_text_makes_one_printable_line(text: str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_text_bounds_length() -> None:
    out = clean_text("x" * 10_000)
    assert len(out) == MAX_TEXT_CHARS
    assert out.endswith("…")
    assert clean_text("abcdef", limit=4) == "abc…"
    assert clean_text("abcd", limit=4) == "abcd"


def test_long_description_is_bounded_in_both_files(ledger: Ledger) -> None:
    rec = ledger.append(row(1, description="y" * 50_000))
    assert len(rec.description) == MAX_TEXT_CHARS
    assert len(tsv_lines(ledger)[1][-1]) == MAX_TEXT_CHARS


def test_control_characters_never_reach_the_files(ledger: Ledger) -> None:
    ledger.append(row(1, description="evil\x1b]0;title\x07\ud800", notes="\x00"))
    raw = ledger.jsonl.read_bytes() + ledger.tsv.read_bytes()
    assert b"\x1b" not in raw
    assert b"\x00" not in raw
    assert b"\x07" not in raw


# --- experiments.jsonl and its hash chain ----------------------------------------------------


def test_records_form_a_hash_chain(ledger: Ledger) -> None:
    recs = [ledger.append(row(n)) for n in range(1, 5)]
    assert recs[0].prev_hash == GENESIS_HASH
    for prev, cur in itertools.pairwise(recs):
        assert cur.prev_hash == prev.hash
    stored = list(ledger.records())
    assert stored == recs
    for rec in stored:
        assert record_hash(rec.model_dump(mode="json")) == rec.hash
        assert len(rec.hash) == 64


def test_each_jsonl_line_is_the_record_with_its_hash(ledger: Ledger) -> None:
    rec = ledger.append(row(1, harness="h" * 64, extra_field="kept"))
    line = json.loads(ledger.jsonl.read_text(encoding="utf-8").splitlines()[0])
    assert line["hash"] == rec.hash == record_hash(line)
    assert line["extra_field"] == "kept"
    assert line["metrics"] == {"score": 1.5, "ms": 10.0}


@pytest.mark.parametrize(
    ("field", "value"),
    [("description", "edited"), ("metrics", {"score": 99.0, "ms": 10.0}), ("status", "discard")],
)
def test_editing_a_record_breaks_its_hash(ledger: Ledger, field: str, value: Any) -> None:
    rec = ledger.append(row(1))
    payload = rec.model_dump(mode="json")
    payload[field] = value
    assert record_hash(payload) != rec.hash


def test_record_hash_ignores_only_the_hash_and_the_mac() -> None:
    payload = Record.model_validate(row(1)).model_dump(mode="json")
    assert record_hash({**payload, "hash": "x"}) == record_hash({**payload, "hash": "y"})
    assert record_hash({**payload, "mac": "x"}) == record_hash({**payload, "mac": "y"})
    assert record_hash({**payload, "prev_hash": "1" * 64}) != record_hash(payload)
    assert record_hash({**payload, "key_id": "0" * 16}) != record_hash(payload)


def test_each_record_carries_the_keys_mac_of_its_hash(ledger: Ledger) -> None:
    recs = [ledger.append(row(n)) for n in (1, 2)]
    for rec, raw in zip(recs, ledger.jsonl.read_text().splitlines(), strict=True):
        line = json.loads(raw)
        assert line["mac"] == rec.mac == record_mac(rec.hash)
        assert line["key_id"] == auth.key_id()
        assert line["hash"] == record_hash(line), "the key id is part of the hash, the mac is not"
    assert recs[0].mac != recs[1].mac


def forge_last(ledger: Ledger, **changes: Any) -> None:
    """What the eval can do without the key: rewrite the last record and recompute its hash."""
    lines = ledger.jsonl.read_text().splitlines()
    payload = {**json.loads(lines[-1]), **changes}
    payload["hash"] = record_hash(payload)
    lines[-1] = json.dumps(payload)
    ledger.jsonl.write_text("".join(line + "\n" for line in lines))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"metrics": {"score": 99.0, "ms": 1.0}}, "does not match its mac"),
        ({"mac": None}, "carries no mac"),
        ({"key_id": "0" * 16}, "signed with a different key"),
    ],
)
def test_last_record_refuses_a_record_forged_without_the_key(ledger: Ledger, changes: dict, why: str) -> None:
    ledger.append(row(1))
    ledger.append(row(2))
    forge_last(ledger, **changes)
    with pytest.raises(IntegrityError, match=why) as e:
        ledger.last_record()
    assert "hash chain was recomputed by someone without the key" in str(e.value)
    assert "autoexp-mcp verify" in str(e.value)
    with pytest.raises(IntegrityError):
        ledger.append(row(3))
    assert len(ledger.jsonl.read_text().splitlines()) == 2, "nothing chained onto a forged record"


def test_last_record_signed_with_another_key_names_the_key_file(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.append(row(1))
    other = tmp_path / "other-key"
    monkeypatch.setenv("AUTOEXP_KEY_FILE", str(other))
    auth.mac(b"create it")
    with pytest.raises(IntegrityError, match=f"different key than the one in {other}"):
        ledger.last_record()
    monkeypatch.setenv("AUTOEXP_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(IntegrityError, match=f"the key file {tmp_path / 'absent'} does not exist"):
        ledger.last_record()
    assert not (tmp_path / "absent").exists(), "checking never creates a key"


def test_empty_ledger(ledger: Ledger) -> None:
    assert ledger.last_record() is None
    assert ledger.tail(5) == []
    assert list(ledger.records()) == []


def test_last_record_and_tail(ledger: Ledger) -> None:
    for n in range(1, 8):
        ledger.append(row(n))
    last = ledger.last_record()
    assert last is not None
    assert last.experiment == 7
    assert [r.experiment for r in ledger.tail(3)] == [5, 6, 7]
    assert [r.experiment for r in ledger.tail(100)] == list(range(1, 8))
    assert ledger.tail(0) == []


def fill(ledger: Ledger, first: int, last: int, **kw: Any) -> None:
    """Append records `first..last` straight to the JSONL (no fsync per row: fast), chained."""
    prev = ledger.last_record()
    prev_hash = prev.hash if prev else GENESIS_HASH
    with ledger.jsonl.open("a", encoding="utf-8") as f:
        for n in range(first, last + 1):
            payload = Record.model_validate({**row(n, **kw), "prev_hash": prev_hash}).model_dump(mode="json")
            payload = seal_record(payload)
            prev_hash = payload["hash"]
            f.write(json.dumps(payload) + "\n")


def large_ledger(ledger: Ledger, prefix_bytes: int, records: int) -> None:
    """A ledger whose file starts with a big sparse block (unreadable as records) and ends
    with `records` real ones: a reader that scans from the start would allocate it all."""
    with ledger.jsonl.open("wb") as f:
        f.truncate(prefix_bytes)
    with ledger.jsonl.open("ab") as f:
        f.write(b"\n")
    fill(ledger, 1, records - 2)
    ledger.append(row(records - 1))
    ledger.append(row(records))


def test_last_record_and_tail_read_only_the_end_of_a_large_file(ledger: Ledger) -> None:
    large_ledger(ledger, 64 * 1024 * 1024, 120)
    tracemalloc.start()
    try:
        last = ledger.last_record()
        tail = ledger.tail(100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert last is not None
    assert last.experiment == 120
    assert [r.experiment for r in tail] == list(range(21, 121))
    assert peak < 8 * 1024 * 1024, f"reading the tail allocated {peak} bytes"


@pytest.mark.parametrize("n", [1, 63, 64, 200])
def test_tail_of_large_records_is_complete(ledger: Ledger, n: int) -> None:
    # Records near the text bounds, with repeats: several KB each, more than the first window holds.
    big = {"description": "d" * MAX_TEXT_CHARS, "notes": "n" * MAX_TEXT_CHARS}
    fill(ledger, 1, 400, repeats={"score": [0.123456789] * 100}, **big)
    assert [r.experiment for r in ledger.tail(n)] == list(range(401 - n, 401))
    assert [r.experiment for r in ledger.tail(1000)] == list(range(1, 401))


# --- torn writes ---------------------------------------------------------------------------


def tear(path: Path, text: str) -> None:
    """What a crash in the middle of writing a line leaves behind."""
    with path.open("ab") as f:
        f.write(text.encode())


def test_torn_last_line_is_not_counted(ledger: Ledger) -> None:
    ledger.append(row(1))
    good = ledger.append(row(2))
    tear(ledger.jsonl, '{"experiment": 3, "commit": "abc", "times')
    assert ledger.last_record() == good
    assert [r.experiment for r in ledger.records()] == [1, 2]
    assert [r.experiment for r in ledger.tail(5)] == [1, 2]


def test_torn_last_line_is_repaired_by_the_next_append(ledger: Ledger) -> None:
    ledger.append(row(1))
    good = ledger.append(row(2))
    tear(ledger.jsonl, '{"experiment": 3, "commit": "abc", "times')
    rec = ledger.append(row(3))
    assert rec.prev_hash == good.hash
    lines = ledger.jsonl.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["hash"] for line in lines)
    assert [r.experiment for r in ledger.records()] == [1, 2, 3]


def test_torn_first_line_is_repaired(ledger: Ledger) -> None:
    tear(ledger.jsonl, '{"experiment": 1, "comm')
    assert ledger.last_record() is None
    rec = ledger.append(row(1))
    assert rec.prev_hash == GENESIS_HASH
    assert ledger.jsonl.read_text(encoding="utf-8").count("\n") == 1
    assert list(ledger.records()) == [rec]


def test_torn_tsv_row_does_not_merge_with_the_next_row(ledger: Ledger) -> None:
    ledger.append(row(1))
    tear(ledger.tsv, "0000002\t2.5")
    ledger.append(row(2))
    lines = tsv_lines(ledger)
    assert lines[2] == ["0000002", "2.5"]  # the torn row is ended, not deleted
    assert lines[3] == ["0000002", "2.500000", "20.000000", "keep", "experiment 2"]
    assert len(lines) == 4
