"""Where the server's time per iteration goes: py-spy attached to the installed server while the
SDK client drives it through the loop (common.server_iteration), then the inclusive wall time
per iteration of every function of autoexp_mcp (and of the git, subprocess and fsync calls under them).

Needs py-spy (`pip install py-spy`) and permission to attach (root, or ptrace_scope 0).

    python bench/profile_server.py [--iterations N] [--rate HZ] [--top K] [--out DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
from common import (
    TARGET,
    Client,
    Values,
    baseline,
    config_text,
    make_repo,
    pin_environment,
    server_iteration,
    server_params,
    workdir,
)
from memory import server_pid

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")
# Leaf-ish calls worth naming even though they are not autoexp_mcp code.
_NAMED = {
    ("fsync", "os"),
    ("execute", "git/cmd.py"),
    ("_execute_child", "subprocess.py"),
    ("communicate", "subprocess.py"),
    ("model_validate", "pydantic/main.py"),
    ("model_dump_json", "pydantic/main.py"),
    ("run_sync", "anyio/to_thread.py"),
}


def _key(frame: str) -> str | None:
    m = _FRAME.match(frame.strip())
    if not m:
        return None
    func, file = m["func"], m["file"]
    if "autoexp_mcp" in file:
        return f"{file.split('autoexp_mcp/')[-1]}:{func}"
    for name, where in _NAMED:
        if func == name and file.endswith(where):
            return f"{where}:{func}"
    return None


def inclusive(raw: Path) -> tuple[Counter[str], dict[str, int]]:
    """Samples per function (each function counted once per stack) and per thread."""
    per_func: Counter[str] = Counter()
    per_thread: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        per_thread[frames[0]] += n
        seen = {k for k in map(_key, frames[1:]) if k}
        for k in seen:
            per_func[k] += n
    return per_func, dict(per_thread)


async def drive(repo: Path, iterations: int, out: Path, rate: int, idle: bool) -> float:
    async with Client(server_params(repo)) as c:
        await baseline(c)
        values = Values(float(0))
        for _ in range(3):
            await server_iteration(c, values.next())
        pid = server_pid()
        args = [py_spy(), "record", "--pid", str(pid), "-r", str(rate), "-f", "raw", "-o", str(out), "--threads"]
        if idle:
            args.append("--idle")
        spy = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await anyio.sleep(1.0)  # py-spy attaches asynchronously; give it a moment before timing
        t0 = time.perf_counter()
        for _ in range(iterations):
            await server_iteration(c, values.next())
        wall = time.perf_counter() - t0
    # The client closed stdin: the server exits and py-spy writes its file.
    try:
        spy.wait(30)
    except subprocess.TimeoutExpired:
        spy.kill()
        raise
    return wall


def py_spy() -> str:
    """py-spy next to this interpreter (a venv not on PATH), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        sys.exit(f"py-spy is neither next to {sys.executable} nor on PATH: pip install py-spy")
    return found


def report(raw: Path, iterations: int, wall: float, rate: int, top: int, title: str) -> None:
    per_func, per_thread = inclusive(raw)
    per_iter_ms = wall / iterations * 1000
    print(f"\n{title}: {iterations} iterations, {per_iter_ms:.1f} ms/iteration of client wall time")
    print("  samples per thread:", ", ".join(f"{t.split(' ')[0]} {n}" for t, n in per_thread.items()))
    print(f"  {'function (inclusive)':<52}{'ms/iter':>9}{'% iter':>8}")
    for k, n in per_func.most_common(top):
        ms = n / rate / iterations * 1000
        print(f"  {k:<52}{ms:9.1f}{100 * ms / per_iter_ms:7.1f}%")


async def run(iterations: int, rate: int, top: int, out: Path | None) -> None:
    py_spy()
    pin_environment()
    with workdir("autoexp-bench-profile-") as d:
        dest = out or d
        dest.mkdir(parents=True, exist_ok=True)
        for idle, title in ((True, "wall clock (idle samples included)"), (False, "on CPU (idle samples excluded)")):
            repo = make_repo(d / f"repo-{idle}", {TARGET: "0\n", "autoexp.toml": config_text()})
            raw = dest / f"server-{'wall' if idle else 'cpu'}.txt"
            wall = await drive(repo, iterations, raw, rate, idle)
            report(raw, iterations, wall, rate, top, title)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--rate", type=int, default=500, help="samples per second")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="keep the raw py-spy files here")
    args = ap.parse_args()
    anyio.run(run, args.iterations, args.rate, args.top, args.out, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
