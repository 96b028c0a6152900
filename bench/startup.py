"""Start-up: spawn to the first `tools/list` answer, `autoexp-mcp serve` against a bare
MCPServer with one tool (bench/bare_server.py), alternating, over stdio with the SDK client.

The autoexp repository has run its baseline before the timed starts, so each start is a
restart that reads its state back (the common case: a client launches the server per session).

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


async def time_start(params: StdioServerParameters, tools: int) -> float:
    with anyio.fail_after(60):
        t0 = time.perf_counter()
        async with Client(params) as c:
            listed = (await c.list_tools()).tools
            elapsed = time.perf_counter() - t0
    if len(listed) != tools:
        raise RuntimeError(f"expected {tools} tools, got {[t.name for t in listed]}")
    return elapsed


async def run(starts: int, json_out: Path | None, keep: bool) -> bool:
    pin_environment()
    with workdir("autoexp-bench-startup-", keep) as d:
        repo = make_repo(d / "repo", {TARGET: "0\n", "autoexp.toml": config_text()})
        async with Client(server_params(repo)) as c:
            await baseline(c)
        bare = bare_server_params()
        sides = [("autoexp", server_params(repo), 7), ("bare", bare, 1)]
        times: dict[str, list[float]] = {"autoexp": [], "bare": []}
        for i in range(starts + 1):
            for name, params, tools in sides if i % 2 == 0 else sides[::-1]:
                t = await time_start(params, tools)
                if i > 0:  # the first round warms the page cache
                    times[name].append(t)
        a, b = median_ms(times["autoexp"]), median_ms(times["bare"])
        ratio = a / b
        print(f"starts: {starts} per side, alternating; medians of spawn -> first tools/list answer")
        print(f"  autoexp-mcp serve: {a:8.1f} ms")
        print(f"  bare MCPServer:    {b:8.1f} ms")
        write_json(json_out, {"autoexp_ms": a, "bare_ms": b, "ratio": ratio})
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
