"""An exact account of one iteration, in process (no MCP): how many processes, git calls, state
writes and fsyncs an experiment costs, and their wall time. The same loop as
loop_overhead.py, driven through `loop.Experiment` directly, with timers wrapped around the
functions that cost time. Complements profile_server.py (sampling, through the protocol).

    python bench/breakdown.py [--iterations N]
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import TARGET, Values, config_text, make_repo, pin_environment, workdir

from autoexp_mcp import gitops, guard, ledger, loop, metrics, opening, runner, state

_lock = threading.Lock()
_calls: dict[str, int] = defaultdict(int)
_time: dict[str, float] = defaultdict(float)


def _record(name: str, dt: float) -> None:
    with _lock:
        _calls[name] += 1
        _time[name] += dt


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _record(name, time.perf_counter() - t0)

    return wrapper


def instrument() -> None:
    for name, fn in list(vars(gitops.Git).items()):
        if callable(fn) and not name.startswith("__"):
            setattr(gitops.Git, name, _timed(f"git.{name}", fn))
    popen_init = subprocess.Popen.__init__

    def counting_init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        t0 = time.perf_counter()
        popen_init(self, args, *a, **kw)
        argv = args if isinstance(args, list | tuple) else [args]
        what = " ".join(str(x) for x in argv[:2]) if "git" in str(argv[0]) else Path(str(argv[0])).name
        _record(f"spawn {what}", time.perf_counter() - t0)

    subprocess.Popen.__init__ = counting_init  # type: ignore[method-assign]
    os.fsync = _timed("os.fsync", os.fsync)
    state.save_state = _timed("state.save_state", state.save_state)
    loop.save_state = state.save_state  # loop imported the name
    guard.atomic_write_file = _timed("guard.atomic_write_file", guard.atomic_write_file)
    metrics.extract = _timed("metrics.extract", metrics.extract)
    # The sweeps after each eval run, called through the runner module's globals.
    for name in ("kill_marked", "kill_pipe_holders", "reap_leftovers"):
        setattr(runner, name, _timed(f"runner.{name}", getattr(runner, name)))
    opening.kill_marked = runner.kill_marked  # opening imported the name (the restart sweep)
    methods = [
        (ledger.Ledger, "append", "ledger.append"),
        (guard.Protected, "violations", "guard.Protected.violations"),
        (runner.EvalProcess, "wait", "runner.EvalProcess.wait (eval run)"),
    ]
    for cls, name, label in methods:
        setattr(cls, name, _timed(label, getattr(cls, name)))
    for name in ("write_target", "commit", "run_eval", "decide", "log_result", "_integrity", "_execute"):
        setattr(loop.Experiment, name, _timed(f"Experiment.{name}", getattr(loop.Experiment, name)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30)
    args = ap.parse_args()
    pin_environment()
    instrument()
    n = args.iterations
    with workdir("autoexp-bench-breakdown-") as d:
        repo = make_repo(d / "repo", {TARGET: "0\n", "autoexp.toml": config_text()})
        exp = loop.Experiment(repo)
        try:
            exp.run_eval(60)
            exp.decide()
            exp.log_result()
            values = Values(0)
            _calls.clear()
            _time.clear()
            t0 = time.perf_counter()
            for _ in range(n):
                value = values.next()
                exp.write_target(content=value + "\n")
                exp.commit(f"try {value}")
                view = exp.run_eval(60)
                assert view.status == "done", view
                exp.decide()
                exp.log_result(notes=f"value {value}")
            wall = time.perf_counter() - t0
        finally:
            exp.close()
    print(f"{n} iterations in process: {wall / n * 1000:.1f} ms/iteration")
    print(f"  {'what':<46}{'calls/iter':>11}{'ms/iter':>9}{'ms/call':>9}")
    for name in sorted(_time, key=lambda k: -_time[k]):
        print(
            f"  {name:<46}{_calls[name] / n:11.1f}{_time[name] / n * 1000:9.1f}{_time[name] / _calls[name] * 1000:9.2f}"
        )
    spawned = sum(v for k, v in _calls.items() if k.startswith("spawn "))
    print(f"  processes spawned per iteration: {spawned / n:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
