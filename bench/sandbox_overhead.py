"""Sandbox overhead: what bubblewrap adds to each eval run. A trivial eval (`/bin/true`, and
`python3 -c pass`) is started the way the runner starts one (its own session, stdin from
/dev/null, waited for), once directly and once through `sandbox.wrap()` with the plan the loop
uses (the repository read-only, `.git`, `.autoexp/` and the ledger hidden, one writable dir, no
network), interleaved, the order rotating every round. Also times `prepare()` + `wrap()`,
which the server runs once per eval. A third command imports a dozen stdlib modules: the
sandboxed eval reads the interpreter's own bytecode caches, as by hand, so it pays the same.

    python bench/sandbox_overhead.py [--runs 50] [--quick]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from common import PY, make_repo, median_ms, summary, workdir, write_json

from autoexp_mcp import sandbox

LIMIT_MS = 10.0  # added per run
# The interpreter behind the venv: a venv under /tmp is hidden by the sandbox's private /tmp.
PYTHON = os.path.realpath(PY)
IMPORTS = "import asyncio, json, email.message, http.client, decimal, argparse, logging, difflib, csv"
COMMANDS = {
    "/bin/true": ["/bin/true"],
    "python3 -c pass": [PYTHON, "-c", "pass"],
    "python3 imports": [PYTHON, "-c", IMPORTS],
}
NO_BYTECODE = {"PYTHONDONTWRITEBYTECODE": "1"}  # what the server sets for every eval


def start_and_wait(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    env = {**os.environ, **NO_BYTECODE}
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    if proc.wait() != 0:
        raise RuntimeError(f"{argv[:3]}... exited {proc.returncode}")
    return time.perf_counter() - t0


def loop_plan(repo: Path) -> sandbox.Plan:
    hidden = (repo / ".git", repo / ".autoexp", repo / "results.tsv", repo / "experiments.jsonl")
    return sandbox.Plan(root=repo, writable=(repo / "out",), hidden=hidden)


def measure(repo: Path, runs: int) -> dict[str, dict[str, float]]:
    plan = loop_plan(repo)
    sandbox.prepare(plan)
    out: dict[str, dict[str, float]] = {}
    for name, argv in COMMANDS.items():
        sides: dict[str, Callable[[], float]] = {
            "raw": lambda argv=argv: start_and_wait(argv, repo),
            "sandboxed": lambda argv=argv: start_and_wait(sandbox.wrap(plan, argv), repo),
        }
        times: dict[str, list[float]] = {side: [] for side in sides}
        order = list(sides)
        for side in order:  # warm the page cache and the bwrap binary
            sides[side]()
        for _ in range(runs):
            for side in order:
                times[side].append(sides[side]())
            order.reverse()
        raw, wrapped = median_ms(times["raw"]), median_ms(times["sandboxed"])
        out[name] = {"raw_ms": raw, "sandboxed_ms": wrapped, "added_ms": wrapped - raw}
    build = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sandbox.prepare(plan)
        sandbox.wrap(plan, COMMANDS["/bin/true"])
        build.append(time.perf_counter() - t0)
    out["prepare+wrap"] = {"ms": median_ms(build)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50, help="runs of each command on each side")
    ap.add_argument("--quick", action="store_true", help="10 runs each")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp repository")
    args = ap.parse_args()
    avail = sandbox.available()
    if not avail.ok:
        print(f"no sandbox on this machine: {avail.detail}", file=sys.stderr)
        return 2
    runs = 10 if args.quick else args.runs
    with workdir("autoexp-bench-sandbox-", args.keep) as d:
        repo = make_repo(d / "repo", {"train.py": "x = 1\n", "results.tsv": "commit\tscore\n"})
        figures = measure(repo, runs)
    print(f"{avail.detail}; medians of {runs} runs per side, interleaved (ms per run):")
    for name in COMMANDS:
        f = figures[name]
        print(f"  {name:<16} raw {f['raw_ms']:7.2f}  sandboxed {f['sandboxed_ms']:7.2f}  added {f['added_ms']:6.2f}")
    print(f"  prepare() + wrap(): {figures['prepare+wrap']['ms']:.3f} ms")
    write_json(args.json, {"runs": runs, "bwrap": avail.detail, **figures})
    ok = True
    for name in COMMANDS:
        added = figures[name]["added_ms"]
        ok &= added < LIMIT_MS
        summary(f"sandbox cost per run, {name} (ms)", added, f"< {LIMIT_MS:g}", added < LIMIT_MS)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
