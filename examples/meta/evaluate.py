"""The meta example's harness: run the built-in agent, with the strategy in
agent_strategy.yaml, for a whole inner autoexp loop on a copy of the hparams example, and
print the best val_accuracy it reached as `best_after_n`.

Each run builds the inner repository under a temporary directory, starts its own
`autoexp-mcp serve` through the agent (over stdio, as any client would) with a budget of
INNER_EXPERIMENTS experiments, and removes everything afterwards. The inner server runs its
evals without a sandbox: this eval may itself run inside one, where a second bubblewrap
cannot start, and the inner repository is a throw-away copy.

The seed of the strategy file is replaced by AUTOEXP_REPEAT (0, 1, 2 … under [policy]
repeats), so the repeats of one experiment are the same strategy on different seeds.
An invalid strategy file exits non-zero: the experiment is a crash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio

from autoexp_mcp.agent import AgentError, drive, load_strategy, serve_params
from autoexp_mcp.assets import asset_dir
from autoexp_mcp.errors import ConfigError

HERE = Path(__file__).resolve().parent
STRATEGY = HERE / "agent_strategy.yaml"
INNER_EXAMPLE = "hparams"
INNER_EXPERIMENTS = 15  # the inner budget, the baseline included: the n of best_after_n
INNER_TIMEOUT_S = 8  # per inner eval: a strategy that grows the model past this gets timeouts
METRIC = "val_accuracy"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "autoexp meta",
    "GIT_AUTHOR_EMAIL": "meta@localhost",
    "GIT_COMMITTER_NAME": "autoexp meta",
    "GIT_COMMITTER_EMAIL": "meta@localhost",
}


def inner_repo(dest: Path) -> Path:
    """A committed copy of the inner example with the meta budget, timeout and no sandbox."""
    shutil.copytree(asset_dir("examples") / INNER_EXAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    config = dest / "autoexp.toml"
    text = config.read_text(encoding="utf-8")
    text = text.replace("max_experiments = 50", f"max_experiments = {INNER_EXPERIMENTS}")
    text = text.replace("timeout = 120", f"timeout = {INNER_TIMEOUT_S}")
    config.write_text(text + '\n[sandbox]\nmode = "none"\n', encoding="utf-8")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-q", "-m", "inner"]):
        subprocess.run(cmd, cwd=dest, check=True, stdin=subprocess.DEVNULL)
    return dest


def main() -> int:
    seed = int(os.environ.get("AUTOEXP_REPEAT", "0"))
    try:
        strategy = load_strategy(STRATEGY, seed=seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="autoexp-meta-") as tmp:
        work = Path(tmp)
        os.environ.update(GIT_IDENTITY)
        os.environ["AUTOEXP_KEY_FILE"] = str(work / "key" / "key")  # the inner server's own key
        os.environ["HOME"] = str(work)  # nothing of the inner run lands in a real home
        # The inner eval runs `python evaluate.py`: this interpreter, whatever PATH said.
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        repo = inner_repo(work / "inner")
        print(f"inner loop: {strategy.search} search, seed {seed}, {INNER_EXPERIMENTS} experiments on {INNER_EXAMPLE}")
        try:
            report = anyio.run(lambda: drive(serve_params(repo), strategy, echo=print))
        except AgentError as e:
            print(f"error: the inner agent stopped: {e}", file=sys.stderr)
            return 3
    best = (report.best or {}).get(METRIC)
    if best is None:
        print("error: the inner loop kept nothing, not even its baseline", file=sys.stderr)
        return 4
    counts = ", ".join(f"{n} {k}" for k, n in report.counts.items())
    print(f"inner: {report.experiments} experiments ({counts}); stopped: {report.stopped}")
    print(f"best_after_n: {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
