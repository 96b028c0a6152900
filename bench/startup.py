"""Start-up: spawn to the first `tools/list` answer, `autoexp-mcp serve` against a bare
MCPServer with one tool (bench/bare_server.py), alternating, over stdio with the SDK client.

The autoexp repository has run its baseline before the timed starts, so each start is a
restart that reads its state back (the common case: a client launches the server per session).
The server opens the repository after the client has listed the tools, so the same starts
also time the first tool answer (`budget_status`, which waits for the open, against the bare
server's `ping`): what the open costs, shown, not judged.

    python bench/startup.py [--starts N] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import anyio
from common import (
    TARGET,
    Client,
    StdioServerParameters,
    bare_server_params,
    baseline,
    config_text,
    make_repo,
    median_ms,
    pin_environment,
    server_params,
    summary,
    workdir,
    write_json,
)

TARGET_RATIO = 1.15


async def time_start(params: StdioServerParameters, tools: int, first_tool: str) -> tuple[float, float]:
    """Seconds from spawn to the tools/list answer, and to the first tool answer."""
    with anyio.fail_after(60):
        t0 = time.perf_counter()
        async with Client(params) as c:
            listed = (await c.list_tools()).tools
            listed_at = time.perf_counter() - t0
            res = await c.call_tool(first_tool, {})
            answered_at = time.perf_counter() - t0
    if len(listed) != tools:
        raise RuntimeError(f"expected {tools} tools, got {[t.name for t in listed]}")
    if res.is_error:
        raise RuntimeError(f"{first_tool} failed: {res.content}")
    return listed_at, answered_at


async def run(starts: int, json_out: Path | None, keep: bool) -> bool:
    pin_environment()
    with workdir("autoexp-bench-startup-", keep) as d:
        repo = make_repo(d / "repo", {TARGET: "0\n", "autoexp.toml": config_text()})
        async with Client(server_params(repo)) as c:
            await baseline(c)
        bare = bare_server_params()
        sides = [("autoexp", server_params(repo), 7, "budget_status"), ("bare", bare, 1, "ping")]
        listed: dict[str, list[float]] = {"autoexp": [], "bare": []}
        answered: dict[str, list[float]] = {"autoexp": [], "bare": []}
        for i in range(starts + 1):
            for name, params, tools, first_tool in sides if i % 2 == 0 else sides[::-1]:
                t_list, t_tool = await time_start(params, tools, first_tool)
                if i > 0:  # the first round warms the page cache
                    listed[name].append(t_list)
                    answered[name].append(t_tool)
        a, b = median_ms(listed["autoexp"]), median_ms(listed["bare"])
        a_tool, b_tool = median_ms(answered["autoexp"]), median_ms(answered["bare"])
        ratio = a / b
        print(f"starts: {starts} per side, alternating; medians")
        print("                     spawn -> tools/list   spawn -> first tool answer")
        print(f"  autoexp-mcp serve: {a:12.1f} ms {a_tool:17.1f} ms  (budget_status: opens the repository)")
        print(f"  bare MCPServer:    {b:12.1f} ms {b_tool:17.1f} ms  (ping)")
        print(f"  first tool answer, autoexp/bare: {a_tool / b_tool:.3f} (not judged)")
        write_json(
            json_out,
            {
                "autoexp_ms": a,
                "bare_ms": b,
                "ratio": ratio,
                "autoexp_first_tool_ms": a_tool,
                "bare_first_tool_ms": b_tool,
            },
        )
        ok = ratio <= TARGET_RATIO
        summary("start-up autoexp/bare", ratio, f"<= {TARGET_RATIO}", ok, f"{a:.0f} ms vs {b:.0f} ms")
        return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=30, help="timed starts per side")
    ap.add_argument("--quick", action="store_true", help="8 starts per side")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp repository")
    args = ap.parse_args()
    ok = anyio.run(run, 8 if args.quick else args.starts, args.json, args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
