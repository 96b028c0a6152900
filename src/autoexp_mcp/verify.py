"""`autoexp-mcp verify`: re-check the ledger after the fact.

The server writes every decided experiment to `experiments.jsonl` with a hash chain and
to `results.tsv` as the short human view. This module checks, without changing anything,
that the chain is intact (no row edited, reordered or deleted), that every record carries
the user's key's mac of its hash (so the chain was not recomputed by someone without the
key), that every kept commit is still on the experiment branch (and no reverted one is),
and that the two files agree. Every problem is one line naming the file and its 1-based
line number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import auth, ledger
from .config import load_config
from .errors import GitError, GuardError
from .gitops import Git
from .state import load_state

_SHORT_SHA_RE = re.compile(r"^[0-9a-f]{4,40}$")
MAX_PROBLEMS = 200  # a wholly rewritten file would otherwise print one line per row and column


class _Line:
    """One non-blank JSONL line that parsed as a record."""

    def __init__(self, lineno: int, payload: dict[str, Any], rec: ledger.Record) -> None:
        self.lineno = lineno
        self.payload = payload
        self.rec = rec


def _key_problem() -> str | None:
    """Why the records' macs cannot be checked here, or None when they can."""
    try:
        if auth.has_key():
            return None
        why = f"the key file {auth.key_path()} does not exist"
    except GuardError as e:
        why = str(e)
    return (
        f"{ledger.EXPERIMENTS_JSONL}: cannot check the records' macs, so a hash chain recomputed by someone "
        f"without the key would go unnoticed: {why}. Run verify as the user who ran the server, with the same "
        f"HOME, XDG_CONFIG_HOME or {auth.KEY_ENV}."
    )


def _mac_problem(rec: ledger.Record) -> str | None:
    verdict = ledger.record_verdict(rec)
    if verdict is auth.Verdict.OK:
        return None
    if verdict is auth.Verdict.MISSING:
        return "unauthenticated record (no mac: not written by this server with this user's key)"
    if verdict is auth.Verdict.OTHER_KEY:
        return f"signed with another key than {auth.key_path()} (another user's, or the key was replaced)"
    return "mac does not match its hash: the hash chain was recomputed by someone without the key (forged?)"


def _read_jsonl(path: Path, problems: list[str], check_macs: bool) -> list[_Line]:
    where = ledger.EXPERIMENTS_JSONL
    out: list[_Line] = []
    prev: _Line | None = None
    prev_lineno = 0  # the last line that held anything, parsed or not
    last_number: dict[str | None, int] = {}
    data = path.read_bytes()
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for lineno, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            problems.append(f"{where} line {lineno}: empty line (the ledger never writes one)")
            continue
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise ValueError("not an object")
            rec = ledger.Record.model_validate(payload)
        except (ValueError, ValidationError):
            torn = lineno == len(raw_lines) and not data.endswith(b"\n")
            why = "an incomplete record (a write cut short by a crash?)" if torn else "not a valid record (edited?)"
            problems.append(f"{where} line {lineno}: {why}")
            prev, prev_lineno = None, lineno
            continue
        line = _Line(lineno, payload, rec)
        if ledger.record_hash(payload) != rec.hash:
            problems.append(f"{where} line {lineno}: hash does not match its content (edited?)")
        elif check_macs and (unsigned := _mac_problem(rec)) is not None:
            problems.append(f"{where} line {lineno}: {unsigned}")
        if prev is not None:
            if rec.prev_hash != prev.rec.hash:
                problems.append(
                    f"{where} line {lineno}: prev_hash does not match line {prev.lineno} (reordered or a row deleted?)"
                )
        elif prev_lineno == 0 and rec.prev_hash != ledger.GENESIS_HASH:
            problems.append(
                f"{where} line {lineno}: the first record's prev_hash is not the genesis hash (rows deleted "
                "from the start?)"
            )
        expected = last_number.get(rec.tag, 0) + 1
        if rec.experiment != expected:
            after = f"follows experiment {expected - 1}" if expected > 1 else f"is the first of tag {rec.tag!r}"
            problems.append(
                f"{where} line {lineno}: experiment {rec.experiment} {after}; expected {expected} "
                "(reordered, deleted or duplicated rows?)"
            )
        last_number[rec.tag] = rec.experiment
        out.append(line)
        prev, prev_lineno = line, lineno
    return out


def _check_state(root: Path, lines: list[_Line], problems: list[str]) -> None:
    """Rows deleted from the end leave an intact chain; the persisted state still counts them."""
    try:
        st = load_state(root)
    except GuardError as e:  # not signed by this key, or gone while the ledger has rows
        problems.append(str(e))
        return
    if st is None:
        return
    mine = [ln for ln in lines if ln.rec.tag in (None, st.tag)]
    last = mine[-1].rec.experiment if mine else 0
    pending_logged = st.pending is not None and st.phase == "decided" and st.pending.experiment == last
    if last == st.experiments or pending_logged:
        return
    where = f"{ledger.EXPERIMENTS_JSONL} line {mine[-1].lineno}" if mine else ledger.EXPERIMENTS_JSONL
    if last < st.experiments:
        problems.append(
            f"{where}: the last record is experiment {last}, but .autoexp/state.json counts "
            f"{st.experiments} logged (rows deleted from the end?)"
        )
    else:
        problems.append(
            f"{where}: experiment {last} is recorded, but .autoexp/state.json counts only {st.experiments} "
            "logged (rows added by hand?)"
        )


def _check_commits(git: Git, default_tag: str, lines: list[_Line], problems: list[str]) -> None:
    where = ledger.EXPERIMENTS_JSONL
    on_branch: dict[str, set[str] | None] = {}
    for ln in lines:
        rec = ln.rec
        tag = rec.tag or default_tag
        branch = f"autoexp/{tag}"
        if branch not in on_branch:
            on_branch[branch] = git.branch_commits(branch) if git.branch_exists(branch) else None
        commits = on_branch[branch]
        short = rec.commit
        if not _SHORT_SHA_RE.match(short):
            problems.append(f"{where} line {ln.lineno}: commit {short!r} is not a commit id")
            continue
        if rec.status in ledger.KEPT_STATUSES:
            if commits is None:
                problems.append(f"{where} line {ln.lineno}: kept commit {short}: branch {branch} does not exist")
            elif not any(c.startswith(short) for c in commits):
                why = "is not on" if _exists(git, short) else "does not exist in the repository, nor on"
                problems.append(f"{where} line {ln.lineno}: {rec.status} commit {short} {why} branch {branch}")
        elif commits is not None and rec.parent != short and any(c.startswith(short) for c in commits):
            # A reverted experiment back on the branch: its revert was undone behind the server's back.
            problems.append(
                f"{where} line {ln.lineno}: {rec.status} commit {short} is on branch {branch}, but it was reverted"
            )


def _exists(git: Git, short: str) -> bool:
    try:
        git.resolve(short)
        return True
    except GitError:
        return False


def _check_tsv(path: Path, expected_header: str, names: list[str], lines: list[_Line], problems: list[str]) -> None:
    where = ledger.RESULTS_TSV
    if not path.exists():
        if lines:
            problems.append(f"{where}: missing, but {ledger.EXPERIMENTS_JSONL} has {len(lines)} records")
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = text.split("\n")
    if rows and rows[-1] == "":
        rows.pop()
    if not rows:
        if lines:
            problems.append(f"{where}: empty, but {ledger.EXPERIMENTS_JSONL} has {len(lines)} records")
        return
    header = rows[0] + "\n"
    if header != expected_header:
        problems.append(f"{where} line 1: header {rows[0]!r} differs from {expected_header.rstrip()!r}")
        names = rows[0].split("\t")[1:-2]
    view = ledger.Ledger(path.parent, names)
    columns = ["commit", *names, "status", "description"]
    for i, row in enumerate(rows[1:]):
        lineno = i + 2
        if i >= len(lines):
            problems.append(f"{where} line {lineno}: no matching record in {ledger.EXPERIMENTS_JSONL}")
            continue
        rec = lines[i].rec
        got = row.split("\t")
        want = view.tsv_row(rec).rstrip("\n").split("\t")
        if len(got) != len(want):
            problems.append(
                f"{where} line {lineno}: {len(got)} columns, expected {len(want)} (experiments.jsonl "
                f"experiment {rec.experiment}: {'|'.join(want)!r})"
            )
            continue
        for col, g, w in zip(columns, got, want, strict=True):
            if g != w:
                problems.append(
                    f"{where} line {lineno}: {col} {g!r} differs from {ledger.EXPERIMENTS_JSONL} "
                    f"experiment {rec.experiment} ({w!r})"
                )
    missing = len(lines) - (len(rows) - 1)
    if missing > 0:
        first = lines[len(rows) - 1].rec.experiment
        problems.append(
            f"{where} line {len(rows) + 1}: missing; {ledger.EXPERIMENTS_JSONL} has {missing} more record(s), "
            f"from experiment {first}"
        )


def verify(repo: Path, tag: str | None = None) -> list[str]:
    """Every problem found in the repository's ledger, one line each; empty when all is well."""
    git = Git(Path(repo))
    root = git.root
    cfg = load_config(root)
    names = cfg.ledger_metric_names
    jsonl = root / ledger.EXPERIMENTS_JSONL
    problems: list[str] = []
    key_problem = _key_problem() if jsonl.exists() and jsonl.stat().st_size > 0 else None
    if key_problem is not None:
        problems.append(key_problem)
    lines = _read_jsonl(jsonl, problems, check_macs=key_problem is None) if jsonl.exists() else []
    _check_state(root, lines, problems)
    _check_commits(git, tag or cfg.experiment.tag, lines, problems)
    _check_tsv(root / ledger.RESULTS_TSV, ledger.Ledger(root, names).header, names, lines, problems)
    if len(problems) > MAX_PROBLEMS:
        more = len(problems) - MAX_PROBLEMS
        problems = [*problems[:MAX_PROBLEMS], f"... and {more} more problems"]
    return problems
