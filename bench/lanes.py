"""Lanes in parallel: experiments per minute with 1, 2 and 4 lanes on one repository, each
lane a server-side Experiment in its own thread, on a fixed-length, sleep-bound eval with
[resources] slots = lanes. The figure is the throughput with N lanes over N times one lane's
(goal: >= 0.9 of linear). Evals run without a sandbox so the figure is about lanes and slots.

    python bench/lanes.py [--eval-s 1.0] [--experiments 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, make_repo, pin_environment, summary, workdir, write_json

HARNESS = "import time\nx = float(open('v.txt').read())\ntime.sleep({sleep})\nprint('score:', x)\n"


def config(lanes: int) -> str:
    data = {
        "experiment": {"tag": "t", "target": "v.txt", "eval": f"{PY} evaluate.py", "timeout": 60.0},
        "metric": [{"name": "score", "direction": "max"}],
        "budget": {"max_experiments": 1000, "abort_on_consecutive_crashes": 1000},
        "sandbox": {"mode": "none"},
        "resources": {"slots": lanes},
    }
    return tomli_w.dumps(data)


def drive(repo: Path, tag: str, experiments: int, errors: list[BaseException]) -> None:
    from autoexp_mcp.lane import open_lane

    try:
        exp = open_lane(repo, tag)
        try:
            for i in range(experiments):
                if i:
                    exp.write_target(content=f"{i}\n")
                    exp.commit(f"try {i}")
                view = exp.run_eval(120)
                assert view.status == "done", view
                exp.decide()
                exp.log_result()
        finally:
            exp.close()
    except BaseException as e:  # reported by the main thread
        errors.append(e)


def rate(base: Path, lanes: int, experiments: int, eval_s: float) -> float:
    """Experiments per minute of `lanes` lanes, each running `experiments` experiments."""
    repo = make_repo(
        base / f"repo{lanes}",
        {"v.txt": "0\n", "evaluate.py": HARNESS.format(sleep=eval_s), "autoexp.toml": config(lanes)},
    )
    errors: list[BaseException] = []
    threads = [threading.Thread(target=drive, args=(repo, f"l{i}", experiments, errors)) for i in range(lanes)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    if errors:
        raise errors[0]
    return lanes * experiments / wall * 60


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-s", type=float, default=1.0, help="seconds each eval sleeps")
    ap.add_argument("--experiments", type=int, default=6, help="experiments per lane (baseline included)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    pin_environment()
    results: dict[str, float] = {}
    with workdir("autoexp-bench-lanes-") as base:
        one = rate(base, 1, args.experiments, args.eval_s)
        results["1"] = one
        print(f"1 lane: {one:.1f} experiments/min", flush=True)
        worst = 1.0
        for n in (2, 4):
            r = rate(base, n, args.experiments, args.eval_s)
            results[str(n)] = r
            worst = min(worst, r / (n * one))
            print(f"{n} lanes: {r:.1f} experiments/min ({r / (n * one):.2f} x linear)", flush=True)
    summary("lanes_vs_linear", worst, ">= 0.9", worst >= 0.9, f"eval {args.eval_s:g}s, slots = lanes")
    write_json(args.json, {"experiments_per_min": results, "worst_vs_linear": worst})
    return 0


if __name__ == "__main__":
    sys.exit(main())
