"""Per-run overhead of each executor: the same trivial eval (one Python start-up printing the
metric) as a local run, a Slurm job and a Ray job, side by side in one run, in rotating
order, one `experiment` call through the installed server over stdio each. The overhead is
the scheduler's latency (submission, placement, start, the server's polling), so the figure
to meet is an absolute one: under 3 s per run on an idle one-node cluster.

An executor whose engine is not reachable is left out, saying why (`.ci/slurm up`, `.ci/ray up`).

    python bench/executors.py [--iterations N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import TARGET, LeanClient, Values, config_text, make_repo, median_ms, pin_environment, summary, workdir
from common import write_json as write_json_file

GOAL_S = 3.0
RAY_ADDRESS = os.environ.get("AUTOEXP_BENCH_RAY_ADDRESS", "http://127.0.0.1:8265")


def missing(kind: str) -> str | None:
    if kind == "local":
        return None
    if kind == "slurm":
        try:
            out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30).stdout
        except OSError:
            return "Slurm is not installed (`.ci/slurm up` as root brings up a one-node cluster)"
        return None if " is UP" in out else f"no Slurm controller answers: {out.strip()[:60]}"
    try:
        from ray.job_submission import JobSubmissionClient

        JobSubmissionClient(RAY_ADDRESS).get_version()
    except Exception as e:
        return f"no Ray head at {RAY_ADDRESS} ({str(e)[:60]}); pip install '.[ray]' and `.ci/ray up`"
    return None


def executor_config(kind: str) -> str:
    if kind == "local":
        return ""
    lines = ["", "[executor]", f'kind = "{kind}"', "poll_seconds = 0.2"]
    if kind == "ray":
        lines.append(f'address = "{RAY_ADDRESS}"')
    return "\n".join(lines) + "\n"


def experiment(c: LeanClient, value: str) -> float:
    t0 = time.perf_counter()
    out = c.call("experiment", content=value + "\n", description=f"try {value}")
    while out["status"] == "running":
        out = c.call("run_eval")
    if out["status"] not in ("keep", "discard"):
        raise RuntimeError(f"the experiment did not run cleanly: {out}")
    return time.perf_counter() - t0


def run(iterations: int, warmup: int, json_out: Path | None, keep: bool) -> bool:
    pin_environment()
    kinds = []
    for kind in ("local", "slurm", "ray"):
        why = missing(kind)
        if why:
            print(f"{kind}: left out: {why}")
        else:
            kinds.append(kind)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    # Under /tmp for the local side, and for the cluster ones too: a one-node cluster shares it.
    with workdir("autoexp-bench-executors-", keep) as d:
        clients = {}
        try:
            for kind in kinds:
                repo = make_repo(d / kind, {TARGET: "0\n", "autoexp.toml": config_text() + executor_config(kind)})
                clients[kind] = LeanClient(repo)
                clients[kind].call("experiment", content="0.5\n", description="warm up: the baseline first")
            values = {k: Values(1) for k in kinds}
            for i in range(warmup + iterations):
                for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
                    dt = experiment(clients[kind], values[kind].next())
                    if i >= warmup:
                        times[kind].append(dt)
        finally:
            for c in clients.values():
                c.close()
    ms = {k: median_ms(times[k]) for k in kinds}
    print(f"iterations: {iterations} per executor (after {warmup} warm-up), rotating order; medians")
    print(f"{'executor':10}{'ms per experiment':>20}{'overhead vs local':>20}")
    for k in kinds:
        print(f"{k:10}{ms[k]:>20.1f}{ms[k] - ms['local']:>+19.1f} ms")
    write_json_file(json_out, {"ms": ms, "overhead_ms": {k: ms[k] - ms["local"] for k in kinds}})
    ok = True
    for k in kinds:
        if k == "local":
            continue
        over = (ms[k] - ms["local"]) / 1000
        ok &= over < GOAL_S
        summary(f"per-run overhead of {k} jobs, s", over, f"< {GOAL_S:g}", over < GOAL_S, f"local {ms['local']:.0f} ms")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=20, help="timed experiments per executor")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="5 experiments per executor")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = ap.parse_args()
    iterations = 5 if args.quick else args.iterations
    return 0 if run(iterations, args.warmup, args.json, args.keep) else 1


if __name__ == "__main__":
    sys.exit(main())
