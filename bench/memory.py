"""Memory: the installed server's peak RSS while an eval prints 1 GB (1024 lines of 1 MiB, then
the metric line). The server process's VmHWM is read from /proc before the first eval and after
each experiment; a control server whose eval prints one line runs the same steps.

    python bench/memory.py [--mb 1024] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anyio
from common import (
    PY,
    TARGET,
    Client,
    Values,
    baseline,
    call,
    config_text,
    make_repo,
    pin_environment,
    server_iteration,
    server_params,
    summary,
    workdir,
    write_json,
)

LIMIT_MB = 50.0


def loud_eval(mb: int) -> list[str]:
    code = (
        "import sys\n"
        "line = b'x' * (1024 * 1024 - 1) + b'\\n'\n"
        f"for _ in range({mb}):\n"
        "    sys.stdout.buffer.write(line)\n"
        "sys.stdout.buffer.write(b'score: ' + open('v.txt', 'rb').read())\n"
    )
    return [PY, "-c", code]


def server_pid() -> int:
    """The autoexp-mcp process the stdio client started (a child of this process)."""
    me = str(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = stat.rsplit(")", 1)[1].split()[1]
        if ppid == me and b"autoexp-mcp" in cmdline:
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one autoexp-mcp child process, found {found}")
    return found[0]


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


async def measure(repo: Path, experiments: int) -> dict[str, float]:
    async with Client(server_params(repo)) as c:
        await call(c, "budget_status")
        await call(c, "read_target")
        pid = server_pid()
        before = status_kb(pid, "VmHWM")
        t0 = time.perf_counter()
        await baseline(c)
        values = Values(0)
        for _ in range(experiments):
            await server_iteration(c, values.next())
        elapsed = time.perf_counter() - t0
        after = status_kb(pid, "VmHWM")
        rss = status_kb(pid, "VmRSS")
    return {
        "hwm_before_mb": before / 1024,
        "hwm_after_mb": after / 1024,
        "rss_after_mb": rss / 1024,
        "growth_mb": (after - before) / 1024,
        "seconds": elapsed,
    }


async def run(mb: int, experiments: int, json_out: Path | None, keep: bool) -> bool:
    pin_environment()
    with workdir("autoexp-bench-memory-", keep) as d:
        loud = make_repo(d / "loud", {TARGET: "0\n", "autoexp.toml": config_text(loud_eval(mb), timeout=600)})
        quiet = make_repo(d / "quiet", {TARGET: "0\n", "autoexp.toml": config_text()})
        r_loud = await measure(loud, experiments)
        r_quiet = await measure(quiet, experiments)
        runs = experiments + 1
        log_mb = sum(p.stat().st_size for p in (loud / ".autoexp" / "runs").iterdir()) / 2**20
        print(f"{runs} eval runs each; server VmHWM before the first run and after the last (MB):")
        for name, r in ((f"eval prints {mb} MB", r_loud), ("eval prints 1 line", r_quiet)):
            print(
                f"  {name:<20} before {r['hwm_before_mb']:7.1f}  after {r['hwm_after_mb']:7.1f}  "
                f"growth {r['growth_mb']:6.1f}  (VmRSS after {r['rss_after_mb']:.1f}; {r['seconds']:.1f} s)"
            )
        print(f"  run logs on disk for the loud eval: {log_mb:.1f} MB in total")
        write_json(json_out, {"mb": mb, "loud": r_loud, "quiet": r_quiet})
        ok = r_loud["growth_mb"] < LIMIT_MB
        summary(
            f"memory growth, eval printing {mb} MB (MB)",
            r_loud["growth_mb"],
            f"< {LIMIT_MB:g}",
            ok,
            f"control with a one-line eval: {r_quiet['growth_mb']:.1f} MB",
        )
        return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=1024, help="MiB the eval prints")
    ap.add_argument("--experiments", type=int, default=2, help="experiments after the baseline")
    ap.add_argument("--quick", action="store_true", help="the baseline run only")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp repositories")
    args = ap.parse_args()
    ok = anyio.run(run, args.mb, 0 if args.quick else args.experiments, args.json, args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
