"""One tool call per experiment: what an agent pays per experiment with `experiment` against the
five step tools (write_target, commit, run_eval, decide, log_result) and the hand-run loop.

Side by side in one run, with the same trivial eval (one Python start-up printing the metric)
in a repository of their own each, in rotating order, half the iterations keeping and half
reverting:

- tool calls per experiment (every one a model turn for the agent);
- bytes of tool results per experiment (the text content the agent reads);
- bytes of `tools/list` (tool definitions the agent carries in its context every turn), as
  compact JSON of the listed tools;
- loop overhead: one `experiment` call through the installed server over stdio ÷ the same
  experiment by hand (bash: write, `git commit`, eval, grep, `git reset --hard` or not,
  append to results.tsv); the five-call loop ÷ the hand loop is shown next to it. The
  server is driven by a lean client (JSON lines on its pipes), so the figure is the
  server's time.

    python bench/one_call.py [--iterations N] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    LOOP_TOOLS,
    RAW_ITERATION_SH,
    TARGET,
    LeanClient,
    Values,
    config_text,
    make_raw_repo,
    make_repo,
    median_ms,
    pin_environment,
    raw_iteration,
    summary,
    workdir,
    write_json,
)

LISTING_GOAL_BYTES = 6000
RESULT_GOAL_BYTES = 500
RATIO_GOAL = 1.1
HAND_COMMANDS = "5-6"  # autoresearch's agent, by hand: edit, commit, run, grep, reset or not, log
SIDES = ("one", "five", "raw")


class Counted(LeanClient):
    """The lean client, counting the tool calls and the bytes of their text content."""

    calls = 0
    result_bytes = 0

    def tool(self, name: str, **args: Any) -> dict[str, Any]:
        res = self.request("tools/call", {"name": name, "arguments": args})
        if res.get("isError"):
            raise RuntimeError(f"{name} failed: {res['content']}")
        self.calls += 1
        self.result_bytes += sum(len(part.get("text", "").encode()) for part in res["content"])
        structured: dict[str, Any] = res["structuredContent"]
        return structured

    def listing_bytes(self) -> int:
        tools = self.request("tools/list", {})["tools"]
        return len(json.dumps(tools, separators=(",", ":"), ensure_ascii=False).encode())

    def reset_counts(self) -> None:
        self.calls = self.result_bytes = 0


def one_call(c: Counted, value: str) -> float:
    t0 = time.perf_counter()
    out = c.tool("experiment", content=value + "\n", description=f"try {value}", notes=f"value {value}")
    while out["status"] == "running":
        out = c.tool("run_eval")
    if out["status"] not in ("keep", "discard"):
        raise RuntimeError(f"the experiment did not run cleanly: {out}")
    return time.perf_counter() - t0


def five_calls(c: Counted, value: str) -> float:
    t0 = time.perf_counter()
    c.tool("write_target", content=value + "\n")
    c.tool("commit", description=f"try {value}")
    ev = c.tool("run_eval")
    while ev["status"] == "running":
        ev = c.tool("run_eval")
    if ev["status"] != "done":
        raise RuntimeError(f"the eval did not finish cleanly: {ev}")
    c.tool("decide")
    c.tool("log_result", notes=f"value {value}")
    return time.perf_counter() - t0


def hand_commands() -> int:
    """Commands of the hand-run iteration script (what an agent would type, one per line)."""
    body = [ln for ln in RAW_ITERATION_SH.splitlines()[2:] if ln.strip() and not ln.startswith(("if ", "else", "fi"))]
    return len(body)


def run(iterations: int, warmup: int, json_out: Path | None, keep: bool, sandbox: str) -> bool:
    pin_environment()
    with workdir("autoexp-bench-one-call-", keep) as d:
        config = config_text() + f'\n[sandbox]\nmode = "{sandbox}"\n'

        one_repo = make_repo(d / "one", {TARGET: "0\n", "autoexp.toml": config})
        five_repo = make_repo(d / "five", {TARGET: "0\n", "autoexp.toml": config})
        raw_repo = make_raw_repo(d / "raw", 0)
        one, five = Counted(one_repo), Counted(five_repo)
        try:
            listing = {"one": one.listing_bytes(), "five": five.listing_bytes()}
            one.tool("experiment", content="0.5\n", description="warm up: measures the baseline first")
            for tool in ("run_eval", "decide", "log_result"):
                five.tool(tool)
            values = {side: Values(1) for side in SIDES}
            t: dict[str, list[float]] = {side: [] for side in SIDES}
            calls: dict[str, list[int]] = {"one": [], "five": []}
            sizes: dict[str, list[int]] = {"one": [], "five": []}
            for i in range(warmup + iterations):
                for side in SIDES[i % len(SIDES) :] + SIDES[: i % len(SIDES)]:  # rotate the order
                    value = values[side].next()
                    if side == "raw":
                        dt = raw_iteration(raw_repo, value)
                    else:
                        client = one if side == "one" else five
                        client.reset_counts()
                        dt = (one_call if side == "one" else five_calls)(client, value)
                        calls[side].append(client.calls)
                        sizes[side].append(client.result_bytes)
                    if i >= warmup:
                        t[side].append(dt)
        finally:
            one.close()
            five.close()
    ms = {side: median_ms(t[side]) for side in SIDES}
    ratio, five_ratio = ms["one"] / ms["raw"], ms["five"] / ms["raw"]
    med_calls = {side: statistics.median(calls[side]) for side in calls}
    med_bytes = {side: statistics.median(sizes[side]) for side in sizes}
    print(f"iterations: {iterations} per side (after {warmup} warm-up), rotating order; medians; sandbox {sandbox}")
    print(f"{'':34}{'experiment':>12}{'5 step tools':>14}{'by hand':>10}")
    print(f"{'tool calls per experiment':34}{med_calls['one']:>12g}{med_calls['five']:>14g}{HAND_COMMANDS:>10}")
    print(f"{'bytes of tool results/experiment':34}{med_bytes['one']:>12g}{med_bytes['five']:>14g}{'-':>10}")
    print(f"{'bytes of tools/list':34}{listing['one']:>12}{'(same server)':>14}{'-':>10}")
    print(f"{'ms per experiment':34}{ms['one']:>12.1f}{ms['five']:>14.1f}{ms['raw']:>10.1f}")
    print(f"{'÷ by hand':34}{ratio:>12.3f}{five_ratio:>14.3f}{1:>10.3f}")
    print(f"(the hand-run script runs {hand_commands()} commands per iteration; autoresearch's agent types 5-6)")
    write_json(
        json_out,
        {
            "calls_per_experiment": med_calls,
            "result_bytes_per_experiment": med_bytes,
            "tools_list_bytes": listing["one"],
            "ms": ms,
            "ratio": ratio,
            "five_call_ratio": five_ratio,
        },
    )
    ok_calls = med_calls["one"] == 1
    summary("tool calls per experiment", med_calls["one"], "1", ok_calls, f"5 step tools: {med_calls['five']:g}")
    ok_bytes = med_bytes["one"] <= RESULT_GOAL_BYTES
    summary(
        "bytes of tool results per experiment",
        med_bytes["one"],
        f"<= {RESULT_GOAL_BYTES}",
        ok_bytes,
        f"5 step tools: {med_bytes['five']:g}",
    )
    ok_list = listing["one"] <= LISTING_GOAL_BYTES
    summary("bytes of tools/list", listing["one"], f"<= {LISTING_GOAL_BYTES}", ok_list, f"{len(LOOP_TOOLS) + 3} tools")
    ok_ratio = ratio <= RATIO_GOAL
    summary(
        "loop overhead, experiment/raw",
        ratio,
        f"<= {RATIO_GOAL}",
        ok_ratio,
        f"{ms['one']:.1f} ms vs {ms['raw']:.1f} ms; five calls {five_ratio:.3f}",
    )
    return ok_calls and ok_bytes and ok_list and ok_ratio


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=60, help="timed iterations per side")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="12 iterations per side")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp repositories")
    ap.add_argument(
        "--sandbox",
        default="auto",
        choices=("auto", "none"),
        help="[sandbox] mode of the server's evals (the hand loop runs its eval unsandboxed)",
    )
    args = ap.parse_args()
    n = 12 if args.quick else args.iterations
    return 0 if run(n, 2 if args.quick else args.warmup, args.json, args.keep, args.sandbox) else 1


if __name__ == "__main__":
    sys.exit(main())
