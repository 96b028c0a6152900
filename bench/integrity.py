"""Integrity check at scale: a repository with 20,000 tracked files and 1 GB of protected
untracked data (`protect = ["data/**"]`, 100 files of 10 MB). After the first snapshot (which
hashes the data once), one per-experiment check, `Experiment._integrity(head)`, against
`git status --porcelain` alone, alternating. The server runs this check three times per
experiment: before the commit, and before and after each eval run.

The data is deleted at the end. The script refuses to start without enough free space.

    python bench/integrity.py [--files 20000] [--data-mb 1000] [--checks N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import TARGET, config_text, make_repo, median_ms, pin_environment, summary, workdir, write_json

from autoexp_mcp.config import load_config
from autoexp_mcp.loop import Experiment

TARGET_RATIO = 1.5
DATA_FILE_MB = 10
FILES_PER_DIR = 200
PROTECT_GLOB = "data/**"  # "every file under data/", as users write it


def make_big_repo(path: Path, files: int) -> Path:
    tracked: dict[str, str | bytes] = {TARGET: "0\n", "autoexp.toml": config_text(protect=[PROTECT_GLOB])}
    for i in range(files - len(tracked)):
        tracked[f"src/d{i // FILES_PER_DIR:03d}/f{i:05d}.txt"] = f"file {i}\n"
    return make_repo(path, tracked)


def write_data(root: Path, total_mb: int) -> int:
    data = root / "data"
    data.mkdir()
    block = os.urandom(DATA_FILE_MB * 1024 * 1024)
    n = max(1, total_mb // DATA_FILE_MB)
    for i in range(n):
        with open(data / f"part-{i:03d}.bin", "wb") as f:
            f.write(i.to_bytes(8, "little"))  # distinct contents, distinct hashes
            f.write(block)
    return n


def git_status(repo: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["git", "status", "--porcelain"], cwd=repo, check=True, capture_output=True)
    return time.perf_counter() - t0


def measure(repo: Path, glob: str, checks: int, warmup: int) -> dict[str, float]:
    cfg = load_config(repo)
    cfg = cfg.model_copy(update={"experiment": cfg.experiment.model_copy(update={"protect": (glob,)})})
    t0 = time.perf_counter()
    exp = Experiment(repo, cfg)
    snapshot_s = time.perf_counter() - t0
    try:
        protected = len(exp.protected._entries)
        head = exp.git.head()
        ours: list[float] = []
        plain: list[float] = []
        for i in range(warmup + checks):
            for side in ("ours", "plain") if i % 2 == 0 else ("plain", "ours"):
                if side == "ours":
                    t = time.perf_counter()
                    bad = exp._integrity(head)
                    t = time.perf_counter() - t
                    if bad:
                        raise RuntimeError(f"the integrity check found changes in an untouched tree: {bad[:5]}")
                else:
                    t = git_status(repo)
                if i >= warmup:
                    (ours if side == "ours" else plain).append(t)
    finally:
        exp.close()
    return {
        "protected_files": protected,
        "first_start_s": snapshot_s,
        "integrity_ms": median_ms(ours),
        "git_status_ms": median_ms(plain),
    }


def run(files: int, data_mb: int, checks: int, warmup: int, json_out: Path | None, keep: bool) -> bool:
    pin_environment()
    free_mb = shutil.disk_usage("/tmp").free // 2**20
    need_mb = data_mb + 2048
    if free_mb < need_mb:
        sys.exit(f"/tmp has {free_mb} MB free; this benchmark needs {need_mb} MB")
    results: dict[str, dict[str, float]] = {}
    with workdir("autoexp-bench-integrity-", keep) as d:
        t0 = time.perf_counter()
        repo = make_big_repo(d / "repo", files)
        t1 = time.perf_counter()
        n_data = write_data(repo, data_mb)
        t2 = time.perf_counter()
        tracked = int(subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.count("\n"))
        print(
            f"repository: {tracked} tracked files ({t1 - t0:.1f} s), {n_data} x {DATA_FILE_MB} MB untracked data "
            f"({t2 - t1:.1f} s)"
        )
        r = measure(repo, PROTECT_GLOB, checks, warmup)
        results[PROTECT_GLOB] = r
        print(
            f"protect = [{PROTECT_GLOB!r}]: {r['protected_files']:.0f} files protected; "
            f"first start with snapshot {r['first_start_s']:.1f} s"
        )
        if r["protected_files"] != n_data:
            raise RuntimeError(f"{PROTECT_GLOB!r} protects {r['protected_files']:.0f} of the {n_data} data files")
        ratio = r["integrity_ms"] / r["git_status_ms"]
        r["ratio"] = ratio
        print(
            f"  per check, median of {checks}: _integrity {r['integrity_ms']:.1f} ms, "
            f"git status --porcelain {r['git_status_ms']:.1f} ms"
        )
        ok = ratio <= TARGET_RATIO
        note = f"{r['integrity_ms']:.1f} ms vs {r['git_status_ms']:.1f} ms, {r['protected_files']:.0f} files protected"
        summary(f"integrity [{PROTECT_GLOB}]/git status", ratio, f"<= {TARGET_RATIO}", ok, note)
    write_json(json_out, {"tracked_files": tracked, "data_mb": data_mb, "results": results})
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20_000, help="tracked files")
    ap.add_argument("--data-mb", type=int, default=1000, help="protected untracked data, in MB")
    ap.add_argument("--checks", type=int, default=40, help="timed checks per side")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="12 checks per side, 200 MB of data")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp repository (and its data)")
    args = ap.parse_args()
    if args.quick:
        args.checks, args.data_mb = 12, min(args.data_mb, 200)
    ok = run(args.files, args.data_mb, args.checks, args.warmup, args.json, args.keep)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
