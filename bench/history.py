"""Flat with history: the per-iteration cost of the installed server with no earlier experiments
and with 10,000 of them on the branch, in the ledger and in the run logs.

The history is generated, not run: 10,000 kept commits on autoexp/t written with
`git fast-import`, experiments.jsonl with a valid, signed hash chain and the matching results.tsv,
one run log per experiment, and an idle `.autoexp/state.json` whose incumbent is the branch
tip. Both servers stay up and take turns, one iteration each per round, each driven by the lean
client of common.py (JSON lines on its pipes), so the figures are the servers' own time.

    python bench/history.py [--history 10000] [--iterations N] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    TAG,
    TARGET,
    LeanClient,
    Values,
    config_text,
    git,
    make_repo,
    median_ms,
    pin_environment,
    summary,
    workdir,
    write_json,
)

from autoexp_mcp.ledger import EXPERIMENTS_JSONL, GENESIS_HASH, RESULTS_TSV, Ledger, Record, seal_record
from autoexp_mcp.state import Phase, Point, State, save_state

TARGET_RATIO = 1.1
NOTES = "tried a variant of the previous change; the metric moved as expected and the diff stayed small"


def _harness_hash(repo: Path, commit: str) -> str:
    # As the server computes it at the first start (loop.Experiment._harness_hash).
    out = git(repo, "ls-tree", "-r", "--full-tree", commit)
    lines = [ln for ln in out.splitlines() if ln.split("\t", 1)[-1] != TARGET]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _fast_import(repo: Path, start: str, n: int) -> list[str]:
    """n commits on autoexp/<tag>, commit k setting the target to k; returns their full shas."""
    marks = repo / ".git" / "bench-marks"
    t0 = int(time.time()) - n
    parts: list[bytes] = []
    for k in range(1, n + 1):
        msg = f"autoexp #{k + 1}: try {k}".encode()
        content = f"{k}\n".encode()
        parts.append(f"commit refs/heads/autoexp/{TAG}\nmark :{k}\n".encode())
        parts.append(f"committer Bench Author <bench@example.com> {t0 + k} +0000\n".encode())
        parts.append(f"data {len(msg)}\n".encode() + msg + b"\n")
        if k == 1:
            parts.append(f"from {start}\n".encode())
        parts.append(f"M 100644 inline {TARGET}\ndata {len(content)}\n".encode() + content + b"\n")
    git(repo, "fast-import", "--quiet", f"--export-marks={marks}", input=b"".join(parts))
    shas = {}
    for line in marks.read_text().splitlines():
        mark, sha = line.split()
        shas[int(mark[1:])] = sha
    marks.unlink()
    return [shas[k] for k in range(1, n + 1)]


def _record(prev: str, experiment: int, commit: str, parent: str, score: float) -> dict[str, Any]:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields: dict[str, Any] = dict(
        experiment=experiment,
        tag=TAG,
        commit=commit[:7],
        parent=parent[:7],
        timestamp=stamp,
        status="keep",
        metrics={"score": score},
        description="baseline" if experiment == 1 else f"try {score:g}",
        notes="" if experiment == 1 else NOTES,
        diff_lines=0 if experiment == 1 else 2,
        wall_time_s=0.07,
        rule="baseline" if experiment == 1 else "single",
        reason="first measurement" if experiment == 1 else "score improved",
        best_commit=commit[:7],
        best_metrics={"score": score},
        run=experiment,
        log=f".autoexp/runs/{experiment}.log",
        prev_hash=prev,
    )
    # Signed with the user's key, as the server signs its records (it refuses an unsigned last one).
    return seal_record(Record.model_validate(fields).model_dump(mode="json", exclude={"mac"}))


def make_history_repo(path: Path, n: int) -> Path:
    """A repository as the server leaves it after a baseline and `n` kept experiments."""
    make_repo(path, {TARGET: "0\n", "autoexp.toml": config_text()})
    start = git(path, "rev-parse", "HEAD")
    shas = _fast_import(path, start, n) if n else []
    git(path, "checkout", "-q", "-B", f"autoexp/{TAG}", shas[-1] if shas else start)
    ledger = Ledger(path, ["score"])
    jsonl: list[str] = []
    tsv = [ledger.header]
    prev, parent = GENESIS_HASH, start
    runs = path / ".autoexp" / "runs"
    runs.mkdir(parents=True)
    for k, commit in enumerate([start, *shas]):
        payload = _record(prev, k + 1, commit, parent, float(k))
        jsonl.append(json.dumps(payload, ensure_ascii=False) + "\n")
        tsv.append(ledger.tsv_row(Record.model_validate(payload)))
        (runs / f"{k + 1}.log").write_text(f"score: {k}\n")
        prev, parent = payload["hash"], commit
    (path / EXPERIMENTS_JSONL).write_text("".join(jsonl))
    (path / RESULTS_TSV).write_text("".join(tsv))
    tip = shas[-1] if shas else start
    incumbent = Point(commit=tip, metrics={"score": float(n)}, values={"score": [float(n)]}, experiment=n + 1)
    state = State(
        tag=TAG,
        branch=f"autoexp/{TAG}",
        start_commit=start,
        phase=Phase.IDLE,
        incumbent=incumbent,
        best=incumbent,
        baseline=Point(commit=start, metrics={"score": 0.0}, values={"score": [0.0]}, experiment=1),
        experiments=n + 1,
        started_at=time.time(),
        runs=n + 1,
        harness=_harness_hash(path, start),
    )
    save_state(path, state)
    last = ledger.last_record()
    assert last is not None and last.experiment == n + 1 and last.commit == tip[:7]
    return path


def run(history: int, iterations: int, warmup: int, json_out: Path | None, keep: bool) -> bool:
    pin_environment()
    with workdir("autoexp-bench-history-", keep) as d:
        t0 = time.perf_counter()
        empty = make_history_repo(d / "h0", 0)
        full = make_history_repo(d / f"h{history}", history)
        print(f"generated {history} experiments of history in {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"0": [], str(history): []}
        tools: dict[str, dict[str, list[float]]] = {"0": {}, str(history): {}}
        c0, cn = LeanClient(empty), LeanClient(full)
        try:
            sides = [("0", c0, Values(0)), (str(history), cn, Values(float(history)))]
            for i in range(warmup + iterations):
                for name, c, values in sides if i % 2 == 0 else sides[::-1]:
                    t = c.iteration(values.next(), tools[name] if i >= warmup else None)
                    if i >= warmup:
                        times[name].append(t)
        finally:
            c0.close()
            cn.close()
        ms0, msn = median_ms(times["0"]), median_ms(times[str(history)])
        ratio = msn / ms0
        print(f"iterations: {iterations} per side (after {warmup} warm-up), interleaved; medians")
        print(f"  0 earlier experiments:      {ms0:8.1f} ms/iteration")
        print(f"  {history} earlier experiments: {msn:8.1f} ms/iteration")
        print("per tool, median ms (0 / history):")
        for tool in tools["0"]:
            a, b = median_ms(tools["0"][tool]), median_ms(tools[str(history)][tool])
            print(f"  {tool:<13}{a:8.1f} {b:8.1f}   x{b / a:.2f}")
        rows = len((full / RESULTS_TSV).read_text().splitlines()) - 1
        assert rows == history + 1 + warmup + iterations, rows
        write_json(json_out, {"ms_0": ms0, "ms_history": msn, "history": history, "ratio": ratio})
        ok = ratio <= TARGET_RATIO
        summary(f"history {history}/0", ratio, f"<= {TARGET_RATIO}", ok, f"{msn:.1f} ms vs {ms0:.1f} ms")
        return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--history", type=int, default=10_000, help="earlier experiments in the large repository")
    ap.add_argument("--iterations", type=int, default=40, help="timed iterations per side")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="10 iterations per side")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = ap.parse_args()
    n = 10 if args.quick else args.iterations
    ok = run(args.history, n, 2 if args.quick else args.warmup, args.json, args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
