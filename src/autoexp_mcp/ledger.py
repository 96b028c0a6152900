"""results.tsv and experiments.jsonl: append-only, one row per decided experiment, fsync'd.

Each JSONL record carries `experiment` (1-based, consecutive), the hash of the previous
record and its own hash, so an edited, reordered or deleted row is detectable
(`autoexp-mcp verify`), and a mac over its hash made with the user's key (`auth`), so the
chain cannot be recomputed by anyone without the key (the eval, which can write the file).
The TSV is the short human view of the same rows: crash and timeout rows, and metrics
without a value, have empty metric fields (never a number that could read as a result).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from . import auth
from .errors import IntegrityError

RESULTS_TSV = "results.tsv"
EXPERIMENTS_JSONL = "experiments.jsonl"
GENESIS_HASH = "0" * 64
MAX_TEXT_CHARS = 2000

# The tail of the JSONL read to find the last record: one record is far smaller than this.
_TAIL_BYTES = 256 * 1024


KEPT_STATUSES = ("keep", "explore")  # the statuses whose commit becomes the incumbent
# Runs with no measurement: their TSV rows leave the metric fields empty, and they count toward
# the crashes-in-a-row limit (`interrupted`: cut short by a server that stopped).
UNMEASURED_STATUSES = ("crash", "timeout", "interrupted")


class Record(BaseModel):
    """One decided experiment, as written to experiments.jsonl."""

    model_config = ConfigDict(extra="allow")

    experiment: int
    tag: str | None = None
    commit: str
    parent: str | None = None
    timestamp: str
    status: str
    metrics: dict[str, float | None]
    std: dict[str, float] | None = None
    repeats: dict[str, list[float]] | None = None
    description: str
    notes: str = ""
    diff_lines: int = 0
    wall_time_s: float = 0.0
    tokens_used: int = 0
    cost_usd: float = 0.0
    cumulative_cost_usd: float = 0.0
    rule: str = ""
    reason: str = ""
    best_commit: str | None = None
    best_metrics: dict[str, float | None] | None = None
    stage: str | None = None
    run: int | None = None
    log: str | None = None
    log_truncated: bool = False
    harness: str | None = None
    prev_hash: str = GENESIS_HASH
    key_id: str | None = None  # the key that signed (part of the hash)
    hash: str = ""
    mac: str | None = None  # over the hash, with that key


def clean_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """One line of printable text, no tabs: safe for TSV, git messages and logs."""
    out = "".join(ch if ch.isprintable() else " " for ch in text.replace("\t", " "))
    out = " ".join(out.split())
    if len(out) > limit:
        out = out[: limit - 1] + "…"
    return out


def record_hash(payload: dict[str, Any]) -> str:
    body = {k: v for k, v in payload.items() if k not in ("hash", "mac")}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _signed_hash(hash_hex: str) -> bytes:
    return b"autoexp-mcp ledger record\n" + hash_hex.encode()


def record_mac(hash_hex: str) -> str:
    """The mac of a record with this hash: what makes a recomputed chain detectable."""
    return auth.mac(_signed_hash(hash_hex))


def seal_record(payload: dict[str, Any]) -> dict[str, Any]:
    """`payload` (a record's fields, prev_hash set) with key_id, hash and mac filled in."""
    payload = {**payload, "key_id": auth.key_id()}
    payload["hash"] = record_hash(payload)
    payload["mac"] = record_mac(payload["hash"])
    return payload


def record_verdict(rec: Record) -> auth.Verdict:
    """Whether `rec`'s mac is this key's mac of its hash (the hash itself is verify's check)."""
    return auth.verdict(_signed_hash(rec.hash), rec.mac, rec.key_id)


def _fmt_metric(v: float | None) -> str:
    # Empty, not 0: a zero reads as the best value of a lower-is-better metric (pandas reads NaN).
    if v is None or not math.isfinite(v):
        return ""
    return f"{v:.6f}"


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    def __init__(self, root: Path, metric_names: Sequence[str]) -> None:
        self.root = Path(root)
        self.metric_names = list(metric_names)
        self.tsv = self.root / RESULTS_TSV
        self.jsonl = self.root / EXPERIMENTS_JSONL

    @property
    def header(self) -> str:
        return "\t".join(["commit", *self.metric_names, "status", "description"]) + "\n"

    def last_record(self) -> Record | None:
        """The last JSONL record, read from the file's tail (never the whole file). A restart
        and every append take it as the truth, so its mac is checked: IntegrityError when this
        server did not write it with this user's key."""
        rec = self._last_record()
        if rec is not None:
            verdict = record_verdict(rec)
            if verdict is not auth.Verdict.OK:
                what = f"the last record of {EXPERIMENTS_JSONL} (experiment {rec.experiment})"
                raise IntegrityError(
                    f"{auth.explain(what, verdict)}: its hash chain was recomputed by someone without the key, or "
                    "rows were added by hand. The server will not start on a ledger it cannot trust. Restore the "
                    f"{EXPERIMENTS_JSONL} the server wrote; `autoexp-mcp verify` lists every record it cannot "
                    "authenticate. To give this experiment up instead, move .autoexp/state.json, "
                    f".autoexp/protect.json, {RESULTS_TSV} and {EXPERIMENTS_JSONL} aside and start a new tag.",
                    [EXPERIMENTS_JSONL],
                )
        return rec

    def _last_record(self) -> Record | None:
        if not self.jsonl.exists():
            return None
        with self.jsonl.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            chunk = f.read()
        for raw in reversed(chunk.splitlines()):
            if raw.strip():
                try:
                    return Record.model_validate_json(raw)
                except ValueError:
                    # A torn last line from a crash mid-write: the row before it is the last.
                    continue
        return None

    def append(self, fields: dict[str, Any]) -> Record:
        """Write one record to both files; returns it with its chain hashes filled in."""
        prev = self.last_record()
        fields = dict(fields)
        fields["description"] = clean_text(str(fields.get("description", "")))
        fields["notes"] = clean_text(str(fields.get("notes", "")))
        fields["prev_hash"] = prev.hash if prev else GENESIS_HASH
        payload = seal_record(Record.model_validate(fields).model_dump(mode="json", exclude={"mac"}))
        rec = Record.model_validate(payload)
        self._repair_torn_tail()
        _append(self.jsonl, json.dumps(payload, ensure_ascii=False, allow_nan=False) + "\n")
        self._append_tsv_row(self.tsv_row(rec))
        return rec

    def _append_tsv_row(self, row: str) -> None:
        if not self.tsv.exists() or self.tsv.stat().st_size == 0:
            _append(self.tsv, self.header)
        elif not _ends_with_newline(self.tsv):
            # A row torn by a crash (or a file saved without a final newline): end that line
            # rather than glue this row onto it. Nothing is deleted from the human view.
            _append(self.tsv, "\n")
        _append(self.tsv, row)

    def ensure_tsv_row(self, rec: Record) -> bool:
        """Recovery after a crash between the JSONL and the TSV write of `rec` (the last
        record): write its TSV row unless the TSV already ends with it. A partial row of `rec`
        torn by the crash is replaced. Returns True when the row had to be written."""
        row = self.tsv_row(rec)
        if self.tsv.exists() and self.tsv.stat().st_size > 0:
            with self.tsv.open("rb+") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - _TAIL_BYTES))
                tail = f.read()
                lines = tail.split(b"\n")
                if tail.endswith(b"\n") and len(lines) >= 2 and lines[-2] + b"\n" == row.encode("utf-8"):
                    return False
                partial = lines[-1]
                if partial and row.encode("utf-8").startswith(partial):
                    f.truncate(size - len(partial))
        self._append_tsv_row(row)
        return True

    def tsv_row(self, rec: Record) -> str:
        measured = rec.status not in UNMEASURED_STATUSES
        values = [_fmt_metric(rec.metrics.get(n)) if measured else "" for n in self.metric_names]
        cols = [rec.commit, *values, rec.status]
        return "\t".join([*cols, clean_text(rec.description)]) + "\n"

    def _repair_torn_tail(self) -> None:
        """Drop a partial last line left by a crash, so the next record starts on its own line."""
        if not self.jsonl.exists():
            return
        with self.jsonl.open("rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(max(0, size - _TAIL_BYTES))
            chunk = f.read()
            cut = chunk.rfind(b"\n")
            f.truncate(size - len(chunk) + cut + 1 if cut >= 0 else max(0, size - len(chunk)))

    def records(self) -> Iterator[Record]:
        """Every record, streamed (for reports and verify, never on the per-iteration path)."""
        if not self.jsonl.exists():
            return
        with self.jsonl.open("rb") as f:
            for raw in f:
                if raw.strip():
                    try:
                        yield Record.model_validate_json(raw)
                    except ValueError:
                        continue

    def tail(self, n: int) -> list[Record]:
        """The last `n` records, from the file's tail."""
        if not self.jsonl.exists() or n <= 0:
            return []
        window = _TAIL_BYTES * max(1, n // 64 + 1)
        with self.jsonl.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            while True:  # large records: read further back until n are found or the file starts
                start = max(0, size - window)
                f.seek(start)
                lines = f.read().splitlines()
                if start > 0:
                    lines = lines[1:]  # partial
                out: list[Record] = []
                for raw in reversed(lines):
                    if len(out) >= n:
                        break
                    if raw.strip():
                        try:
                            out.append(Record.model_validate_json(raw))
                        except ValueError:
                            continue
                if len(out) >= n or start == 0:
                    return list(reversed(out))
                window *= 2
