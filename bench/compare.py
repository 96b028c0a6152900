"""Two builds of the server side by side: the installed one and a modified copy of the package
(a directory holding `autoexp_mcp/`, put first on the server's PYTHONPATH), each against the
raw shell loop, interleaved in one run, both driven by the lean client (common.LeanClient).
Use it to check what a proposed change saves.

    python bench/compare.py --candidate /path/to/src [--iterations N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common import (
    TARGET,
    LeanClient,
    Values,
    config_text,
    make_raw_repo,
    make_repo,
    median_ms,
    pin_environment,
    raw_iteration,
    workdir,
)


def candidate_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run(candidate: Path, iterations: int, warmup: int) -> None:
    pin_environment()
    with workdir("autoexp-bench-compare-") as d:
        installed = make_repo(d / "installed", {TARGET: "0\n", "autoexp.toml": config_text()})
        modified = make_repo(d / "candidate", {TARGET: "0\n", "autoexp.toml": config_text()})
        raw = make_raw_repo(d / "raw", 0)
        t: dict[str, list[float]] = {"installed": [], "candidate": [], "raw": []}
        values = {name: Values(0) for name in t}
        clients = {"installed": LeanClient(installed), "candidate": LeanClient(modified, candidate_env(candidate))}
        try:
            for c in clients.values():
                c.baseline()
            names = list(t)
            for i in range(warmup + iterations):
                for name in names[i % 3 :] + names[: i % 3]:
                    if name == "raw":
                        dt = raw_iteration(raw, values[name].next())
                    else:
                        dt = clients[name].iteration(values[name].next())
                    if i >= warmup:
                        t[name].append(dt)
        finally:
            for c in clients.values():
                c.close()
        ms = {name: median_ms(v) for name, v in t.items()}
        print(f"iterations: {iterations} per side (after {warmup} warm-up), rotating order; medians")
        for name in ("installed", "candidate"):
            print(f"  {name:<10} {ms[name]:8.1f} ms/iteration   / raw = {ms[name] / ms['raw']:.3f}")
        print(f"  {'raw':<10} {ms['raw']:8.1f} ms/iteration")
        print(f"  candidate saves {ms['installed'] - ms['candidate']:.1f} ms/iteration")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", type=Path, required=True, help="directory that holds the modified autoexp_mcp/")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    if not (args.candidate / "autoexp_mcp" / "__init__.py").is_file():
        sys.exit(f"{args.candidate} does not hold an autoexp_mcp package")
    run(args.candidate.resolve(), args.iterations, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
