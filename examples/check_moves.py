"""Check an example's moves.json against its harness (a development aid, not a test).

Usage: python examples/check_moves.py examples/regex [examples/sql ...]

For each example directory: copy it to a temp dir, run the eval on the baseline target, then
write each move's content in order, run the eval again and apply the keep rule: keep iff
the objective is strictly better than the best kept so far (by more than the metric's
`tolerance` and the policy's `min_improvement`) and every constraint (`at_least`,
`at_most`) holds; a non-zero exit or a missing metric is a crash. After a discard or a
crash the target goes back to the last kept content. Every move's `expect` must match.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoexp_mcp.config import Config, MetricConfig, load_config


def parse_metrics(output: str, cfg: Config) -> dict[str, float] | None:
    """The last '<name>: <number>' line of each metric (or its own pattern); None if one is missing."""
    values = {}
    for m in cfg.metric:
        if m.json_key is not None or m.file is not None:
            raise SystemExit(f"metric {m.name!r}: only pattern/default extraction is supported here")
        pattern = m.pattern or rf"^{re.escape(m.name)}:\s*(\S+)\s*$"
        found = re.findall(pattern, output, re.MULTILINE)
        if not found:
            return None
        try:
            values[m.name] = float(found[-1])
        except ValueError:
            return None
    return values


def run_eval(workdir: Path, cfg: Config) -> tuple[dict[str, float] | None, float, str]:
    start = time.monotonic()
    proc = subprocess.run(
        shlex.split(cfg.experiment.eval.replace("python ", f"{shlex.quote(sys.executable)} ", 1)),
        cwd=workdir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=cfg.experiment.timeout,
    )
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    metrics = parse_metrics(proc.stdout, cfg) if proc.returncode == 0 else None
    return metrics, elapsed, out


def satisfied(m: MetricConfig, value: float) -> bool:
    return (m.at_least is None or value >= m.at_least) and (m.at_most is None or value <= m.at_most)


def decide(cfg: Config, cand: dict[str, float], best: dict[str, float]) -> str:
    if not all(satisfied(m, cand[m.name]) for m in cfg.metric):
        return "discard"
    obj = cfg.objective
    gain = cand[obj.name] - best[obj.name] if obj.direction == "max" else best[obj.name] - cand[obj.name]
    return "keep" if gain > max(obj.tolerance, cfg.policy.min_improvement) else "discard"


def check(example: Path) -> bool:
    cfg = load_config(example)
    moves = json.loads((example / "moves.json").read_text(encoding="utf-8"))["moves"]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / example.name
        shutil.copytree(example, work, ignore=shutil.ignore_patterns("__pycache__", ".autoexp"))
        target = work / cfg.experiment.target
        kept = target.read_text(encoding="utf-8")
        best, elapsed, out = run_eval(work, cfg)
        if best is None:
            print(f"{example.name}: the baseline crashed:\n{out[-2000:]}")
            return False
        print(f"{example.name}: baseline {best}  ({elapsed:.2f} s)")
        for i, move in enumerate(moves, start=1):
            target.write_text(move["content"], encoding="utf-8")
            metrics, elapsed, out = run_eval(work, cfg)
            got = "crash" if metrics is None else decide(cfg, metrics, best)
            mark = "ok " if got == move["expect"] else "BAD"
            ok &= got == move["expect"]
            print(f"  {mark} {i:2d} {got:7s} (expected {move['expect']:7s}) {metrics}  {elapsed:.2f} s")
            print(f"         {move['description']}")
            if got == "crash" and move["expect"] != "crash":
                print(out[-1500:])
            if got == "keep":
                best, kept = metrics, move["content"]
            else:
                target.write_text(kept, encoding="utf-8")
        print(f"  final best {best}")
    return ok


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    results = [check(Path(a).resolve()) for a in argv]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
