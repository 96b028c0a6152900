"""A client nobody here wrote: the MCP Inspector CLI (TypeScript SDK) drives the installed
`autoexp-mcp serve` over stdio. Each Inspector call starts a fresh server process; the loop's
state persists on disk between them, as it does when a desktop client restarts the server.

Needs `npx` (Node 20+). The first run downloads the Inspector from the npm registry (about a
minute); later runs use the npm cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp.demo import make_example_repo
from conftest import GIT_ENV, git, installed_command

NPX = shutil.which("npx")
# Pinned: Inspector 0.15.0 is the newest that runs on Node 20, and its argument handling
# (strings kept as strings unless the schema says number/boolean/object/array) is what this
# test relies on.
INSPECTOR = "@modelcontextprotocol/inspector@0.15.0"
FIRST_CALL_TIMEOUT_S = 180.0  # may include downloading the Inspector
CALL_TIMEOUT_S = 60.0  # two node processes + a fresh server + the call: 4-7 s here
TEST_TIMEOUT_S = 600  # the loop test makes 16 Inspector calls, plus a first download
# Read before the fixtures pin HOME to a temp dir, so runs share one npm cache.
NPM_CACHE = os.environ.get("NPM_CONFIG_CACHE") or str(Path.home() / ".npm")
TOOLS = {"experiment", "read_target", "write_target", "commit", "run_eval", "decide", "log_result", "budget_status"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(TEST_TIMEOUT_S),
    pytest.mark.skipif(NPX is None, reason="npx (Node.js) is not installed: the MCP Inspector CLI cannot run"),
]


class Inspector:
    """Runs `npx @modelcontextprotocol/inspector --cli autoexp-mcp serve --repo REPO ...`."""

    warmed_up = False

    def __init__(self, repo: Path, home: Path) -> None:
        self.repo = repo
        self.env = {
            **os.environ,
            **GIT_ENV,
            "HOME": str(home),
            "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"),
            # The example's eval runs `python evaluate.py`: that must be this interpreter.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "NPM_CONFIG_CACHE": NPM_CACHE,
            "NPM_CONFIG_UPDATE_NOTIFIER": "false",
        }

    def run(self, *method_args: str) -> dict[str, Any]:
        assert NPX is not None
        argv = [NPX, "-y", "--prefer-offline", INSPECTOR, "--cli", installed_command(), "serve", "--repo"]
        argv += [str(self.repo), *method_args]
        timeout = CALL_TIMEOUT_S if Inspector.warmed_up else FIRST_CALL_TIMEOUT_S
        start = time.monotonic()
        proc = subprocess.run(
            argv, env=self.env, cwd=self.repo, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        elapsed = time.monotonic() - start
        assert proc.returncode == 0, f"inspector {method_args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        Inspector.warmed_up = True
        out: dict[str, Any] = json.loads(proc.stdout)
        out["_elapsed_s"] = elapsed
        return out

    def call(self, tool: str, **args: str) -> dict[str, Any]:
        """tools/call; every argument goes through `--tool-arg key=value` as the user would type it."""
        argv = ["--method", "tools/call", "--tool-name", tool]
        if args:
            argv += ["--tool-arg", *(f"{k}={v}" for k, v in args.items())]
        return self.run(*argv)

    def ok(self, tool: str, **args: str) -> dict[str, Any]:
        res = self.call(tool, **args)
        assert not res.get("isError"), res
        structured: dict[str, Any] = res["structuredContent"]
        # Clients that show only the text content see the same JSON.
        assert json.loads(res["content"][0]["text"]) == structured
        return structured


@pytest.fixture
def regex_repo(tmp_path: Path) -> Path:
    return make_example_repo("regex", tmp_path / "regex")


def test_inspector_lists_our_tools_and_the_prompt(regex_repo: Path, tmp_path: Path) -> None:
    insp = Inspector(regex_repo, tmp_path / "home")
    tools = {t["name"]: t for t in insp.run("--method", "tools/list")["tools"]}
    assert set(tools) == TOOLS
    assert all(t["description"] and t["outputSchema"] for t in tools.values())
    assert tools["read_target"]["annotations"]["readOnlyHint"] is True
    assert set(tools["write_target"]["inputSchema"]["properties"]) == {"content", "edits"}
    prompts = insp.run("--method", "prompts/list")["prompts"]
    assert [p["name"] for p in prompts] == ["autoexp"]
    assert [a["name"] for a in prompts[0]["arguments"]] == ["domain"]
    text = insp.run("--method", "prompts/get", "--prompt-name", "autoexp")["messages"][0]["content"]["text"]
    assert "patterns.yaml" in text and "autoexp/regex-f1" in text and "${" not in text


def test_inspector_drives_baseline_and_one_experiment(regex_repo: Path, tmp_path: Path) -> None:
    insp = Inspector(regex_repo, tmp_path / "home")
    start = git(regex_repo, "rev-parse", "HEAD")

    # Out of order: the error text reaches this client too.
    res = insp.call("decide")
    assert res["isError"] is True and "run_eval" in res["content"][0]["text"]

    ev = insp.ok("run_eval", wait_seconds="30")
    assert ev["baseline"] is True and ev["status"] == "done"
    baseline = ev["metrics"]["f1"]
    assert 0 < baseline < 1
    assert insp.ok("decide")["status"] == "keep"
    logged = insp.ok("log_result", notes="baseline through the Inspector")
    assert (logged["experiment"], logged["status"], logged["next"]) == (1, "keep", "write_target")

    # The first known-better move of the example, as one --tool-arg: newlines, quotes,
    # backslashes and braces arrive intact.
    move = json.loads((regex_repo / "moves.json").read_text(encoding="utf-8"))["moves"][0]
    assert "\n" in move["content"] and "'" in move["content"] and "\\" in move["content"]
    wrote = insp.ok("write_target", content=move["content"])
    assert wrote["path"] == "patterns.yaml" and wrote["next"] == "commit"
    assert (regex_repo / "patterns.yaml").read_text(encoding="utf-8") == move["content"]

    committed = insp.ok("commit", description=move["description"])
    assert committed["experiment"] == 2 and committed["next"] == "run_eval"
    ev = insp.ok("run_eval", wait_seconds="30")
    assert ev["status"] == "done" and ev["metrics"]["f1"] > baseline
    decided = insp.ok("decide")
    assert decided["status"] == "keep" and decided["commit"] == committed["commit"]
    kept_f1 = ev["metrics"]["f1"]
    logged = insp.ok("log_result", notes="full month names", tokens_used="1200")
    assert (logged["experiment"], logged["status"]) == (2, "keep")

    # A small `edits` JSON value: the Inspector passes it as a string, the server decodes it.
    edits = json.dumps([{"old": "\\d{4}-\\d{2}-\\d{2}", "new": "\\d{4}/\\d{2}/\\d{2}"}])
    wrote = insp.ok("write_target", edits=edits)
    assert wrote["diff_lines"] == 2
    assert "pattern: '\\d{4}/\\d{2}/\\d{2}'" in (regex_repo / "patterns.yaml").read_text(encoding="utf-8")
    insp.ok("commit", description="ISO dates with slashes (worse)")
    ev = insp.ok("run_eval", wait_seconds="30")
    assert ev["metrics"]["f1"] < kept_f1
    assert insp.ok("decide")["status"] == "discard"
    insp.ok("log_result")

    # The same worse edit in one `experiment` call: its outcome passes the TypeScript client's
    # check against the (tight) output schema, and the server has logged it.
    out = insp.ok("experiment", edits=edits, description="ISO dates with slashes, in one call", notes="again")
    assert (out["status"], out["experiment"], out["next"]) == ("discard", 4, "experiment")
    assert out["margin"] < 0 and "new_best" not in out and "experiments left" in out["budget"]

    assert git(regex_repo, "log", "--format=%s", f"{start}..HEAD").splitlines() == [
        f"autoexp #2: {move['description']}"
    ]
    assert (regex_repo / "patterns.yaml").read_text(encoding="utf-8") == move["content"]
    rows = (regex_repo / "results.tsv").read_text(encoding="utf-8").splitlines()
    assert [r.split("\t")[-2] for r in rows[1:]] == ["keep", "keep", "discard", "discard"]
    status = insp.ok("budget_status")
    assert status["experiments_used"] == 4 and status["phase"] == "idle" and status["next"] == "write_target"
