"""Loop overhead: one experiment through the installed server over stdio, against the same
experiment done by hand with plain git, grep and a shell script.

The server's side is timed from a lean client: newline-delimited JSON-RPC written to the
server's stdin and read from its stdout, nothing else, so the figure is the server's time. The
same iterations through the SDK's own Python client are timed too and shown: that client adds
~3 ms of its own per call (it re-validates every structured result against the tool's output
schema with jsonschema), which is the client's cost, not the server's.

Both sides run the same trivial eval (one Python start-up printing the metric) in their own
repository, in rotating order, one iteration each per round; half the iterations keep and
half revert. Timed in the same rounds, to split the server's figure: the eval alone (the
floor both sides share), the same iteration through `loop.Experiment` in this process (the
server without MCP), and the round trip of a read-only tool call (`budget_status`, the
protocol's own cost per call), the same for a bare MCPServer (bench/bare_server.py: the
SDK's floor, client included).

    python bench/loop_overhead.py [--iterations N] [--quick]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import anyio
from common import (
    EVAL_ARGV,
    LOOP_TOOLS,
    TARGET,
    Client,
    LeanClient,
    Values,
    bare_server_params,
    baseline,
    call,
    config_text,
    make_raw_repo,
    make_repo,
    median_ms,
    pin_environment,
    raw_iteration,
    server_iteration,
    server_params,
    summary,
    workdir,
    write_json,
)

from autoexp_mcp.loop import Experiment

TARGET_RATIO = 1.5
GOAL_RATIO = 1.2
SIDES = ("server", "raw", "eval", "inproc", "rtt", "bare", "lean")


def inproc_iteration(exp: Experiment, value: str) -> float:
    t0 = time.perf_counter()
    exp.write_target(content=value + "\n")
    exp.commit(f"try {value}")
    if exp.run_eval(60).status != "done":
        raise RuntimeError("the in-process eval did not finish cleanly")
    exp.decide()
    exp.log_result(notes=f"value {value}")
    return time.perf_counter() - t0


async def round_trip(c: Client, tool: str) -> float:
    t0 = time.perf_counter()
    await call(c, tool)
    return time.perf_counter() - t0


def eval_alone(repo: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(EVAL_ARGV, cwd=repo, check=True, capture_output=True)
    return time.perf_counter() - t0


async def run(iterations: int, warmup: int, json_out: Path | None, keep: bool) -> bool:
    pin_environment()
    with workdir("autoexp-bench-loop-", keep) as d:
        srv_repo = make_repo(d / "server", {TARGET: "0\n", "autoexp.toml": config_text()})
        raw_repo = make_raw_repo(d / "raw", 0)
        inproc_repo = make_repo(d / "inproc", {TARGET: "0\n", "autoexp.toml": config_text()})
        lean_repo = make_repo(d / "lean", {TARGET: "0\n", "autoexp.toml": config_text()})
        t: dict[str, list[float]] = {side: [] for side in SIDES}
        per_tool: dict[str, list[float]] = {}
        exp = Experiment(inproc_repo)
        lean = LeanClient(lean_repo)
        try:
            async with Client(server_params(srv_repo)) as c, Client(bare_server_params()) as bare:
                await baseline(c)
                exp.run_eval(60)
                exp.decide()
                exp.log_result()
                lean.baseline()
                values = {"server": Values(0), "raw": Values(0), "inproc": Values(0), "lean": Values(0)}
                for i in range(warmup + iterations):
                    counted = i >= warmup
                    for side in SIDES[i % len(SIDES) :] + SIDES[: i % len(SIDES)]:  # rotate the order
                        if side == "server":
                            dt = await server_iteration(c, values[side].next(), per_tool if counted else None)
                        elif side == "raw":
                            dt = raw_iteration(raw_repo, values[side].next())
                        elif side == "inproc":
                            dt = inproc_iteration(exp, values[side].next())
                        elif side == "rtt":
                            dt = await round_trip(c, "budget_status")
                        elif side == "bare":
                            dt = await round_trip(bare, "ping")
                        elif side == "lean":
                            dt = lean.iteration(values[side].next())
                        else:
                            dt = eval_alone(raw_repo)
                        if counted:
                            t[side].append(dt)
        finally:
            exp.close()
            lean.close()
        ms = {side: median_ms(t[side]) for side in SIDES}
        srv_ms, sdk_ms, raw_ms = ms["lean"], ms["server"], ms["raw"]
        ratio, sdk_ratio = srv_ms / raw_ms, sdk_ms / raw_ms
        client_ms = (sdk_ms - srv_ms) / len(LOOP_TOOLS)
        print(f"iterations: {iterations} per side (after {warmup} warm-up), rotating order; medians")
        print(f"  server (stdio, 5 tool calls): {srv_ms:8.1f} ms/iteration  (lean client: JSON lines over the pipes)")
        print(f"  server with the SDK client:   {sdk_ms:8.1f} ms/iteration  (the client adds {client_ms:.1f} ms/call)")
        print(f"  raw (bash + git + grep):      {raw_ms:8.1f} ms/iteration")
        print(f"  eval alone (floor):           {ms['eval']:8.1f} ms")
        print(f"  loop.Experiment in process:   {ms['inproc']:8.1f} ms/iteration (the server without MCP)")
        print(f"  budget_status round trip:     {ms['rtt']:8.1f} ms/call (SDK client)")
        print(f"  bare MCPServer ping:          {ms['bare']:8.1f} ms/call (SDK client: the SDK's floor per call)")
        print(
            f"  overhead above the eval:      server {srv_ms - ms['eval']:.1f} ms "
            f"(in process {ms['inproc'] - ms['eval']:.1f} + MCP {srv_ms - ms['inproc']:.1f}), "
            f"raw {raw_ms - ms['eval']:.1f} ms"
        )
        print("server per tool, SDK client (round trip, median ms, share of the summed medians):")
        total = sum(median_ms(per_tool[tool]) for tool in LOOP_TOOLS)
        for tool in LOOP_TOOLS:
            tool_ms = median_ms(per_tool[tool])
            print(f"  {tool:<13}{tool_ms:8.1f} ms  {100 * tool_ms / total:5.1f} %")
        write_json(
            json_out,
            {
                **{f"{side}_ms": ms[side] for side in SIDES},
                "ratio": ratio,
                "sdk_client_ratio": sdk_ratio,
                "per_tool_ms": {t: median_ms(per_tool[t]) for t in LOOP_TOOLS},
            },
        )
        ok = ratio <= TARGET_RATIO
        summary("loop overhead server/raw", ratio, f"<= {TARGET_RATIO}", ok, f"{srv_ms:.1f} ms vs {raw_ms:.1f} ms")
        summary("loop overhead goal", ratio, f"<= {GOAL_RATIO}", ratio <= GOAL_RATIO)
        print(
            f"SUMMARY loop overhead with the SDK client: {sdk_ratio:.3f} (shown, not judged: the Python SDK "
            f"client's own {client_ms:.1f} ms per call is in it)  [{sdk_ms:.1f} ms vs {raw_ms:.1f} ms]",
            flush=True,
        )
        return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=60, help="timed iterations per side")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="12 iterations per side")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = ap.parse_args()
    n = 12 if args.quick else args.iterations
    ok = anyio.run(run, n, 2 if args.quick else args.warmup, args.json, args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
