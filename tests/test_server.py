"""The MCP edge, through the SDK's own client: in memory (both handshakes) and over stdio
against the installed `autoexp-mcp` command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS

from autoexp_mcp.loop import Experiment
from autoexp_mcp.server import Opener, build_server
from conftest import CALL_TIMEOUT_S, MakeRepo, call, call_error, cmdline_pids, eval_to_end, git, stdio_params

pytestmark = pytest.mark.anyio

TOOLS = {"experiment", "read_target", "write_target", "commit", "run_eval", "decide", "log_result", "budget_status"}


async def experiment(c: Client, value: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    await call(c, "write_target", content=value + "\n")
    await call(c, "commit", description=f"try {value}")
    ev = await eval_to_end(c)
    d = await call(c, "decide")
    log = await call(c, "log_result", notes=f"value {value}", tokens_used=100)
    return ev, d, log


SCRIPT = [
    ("3", "keep"),
    ("2", "discard"),
    ("crash", "crash"),
    ("sleep 30 9", "timeout"),
    ("nometric", "crash"),
    ("6", "keep"),
    ("6.0", "discard"),
    ("4", "discard"),
    ("8", "keep"),
    ("7.5", "discard"),
]


async def scripted_run(c: Client, repo: Path) -> None:
    """Baseline then ten experiments; checks the branch, files and ledger after each step."""
    start = git(repo, "rev-parse", "HEAD")
    ev = await call(c, "run_eval")
    assert ev["baseline"] and ev["status"] == "done" and ev["metrics"] == {"score": 1.0}
    assert (await call(c, "decide"))["status"] == "keep"
    log = await call(c, "log_result")
    assert log == {"experiment": 1, "status": "keep", "budget": "49 experiments left", "next": "write_target"}
    best = 1.0
    for i, (value, expected) in enumerate(SCRIPT, start=2):
        before = git(repo, "rev-parse", "HEAD")
        ev, d, log = await experiment(c, value)
        assert d["status"] == expected, (value, d)
        assert d.get("new_best", False) == (expected == "keep")
        left = f"{50 - i} experiments left"
        assert log == {"experiment": i, "status": expected, "budget": left, "next": "write_target"}
        if expected == "keep":
            best = float(value)
            assert git(repo, "rev-parse", "HEAD").startswith(d["commit"])
        else:
            assert git(repo, "rev-parse", "HEAD") == before
        assert (repo / "value.txt").read_text() == (
            f"{value}\n" if expected == "keep" else git(repo, "show", "HEAD:value.txt") + "\n"
        )
        budget = await call(c, "budget_status")
        assert budget["experiments_used"] == i
        assert budget["experiments_left"] == 50 - i
        assert budget["best"]["metrics"]["score"] == best
        rows = (repo / "results.tsv").read_text().splitlines()
        assert len(rows) == i + 1 and rows[-1].split("\t")[2] == expected
    kept = git(repo, "log", "--format=%s", f"{start}..HEAD").splitlines()
    assert kept == ["autoexp #10: try 8", "autoexp #7: try 6", "autoexp #2: try 3"]
    records = [json.loads(x) for x in (repo / "experiments.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["keep", *[e for _, e in SCRIPT]]
    assert records[4]["reason"].startswith("the eval ran past the timeout")
    assert sum(r["tokens_used"] for r in records) == 1000


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_in_memory_client_runs_the_whole_loop(make_repo: MakeRepo, mode: str) -> None:
    repo = make_repo(value="1", timeout=1.5, crashes=5)
    exp = Experiment(repo)
    async with Client(build_server(exp), mode=mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) == TOOLS
        assert all(t.title and t.description and t.output_schema for t in tools.values())
        assert tools["read_target"].annotations.read_only_hint  # type: ignore[union-attr]
        assert tools["budget_status"].annotations.read_only_hint  # type: ignore[union-attr]
        assert "NEVER" in (c.instructions or "") and "write_target" in (c.instructions or "")
        await scripted_run(c, repo)


async def test_out_of_order_calls_are_tool_errors_naming_the_next_tool(experiment: Experiment) -> None:
    async with Client(build_server(experiment)) as c:
        text = await call_error(c, "write_target", content="5\n")
        assert "baseline has not been measured" in text and "run_eval" in text
        assert "(next: run_eval)" in await call_error(c, "decide")
        await call(c, "run_eval")
        assert "(next: decide)" in await call_error(c, "log_result")
        text = await call_error(c, "write_target", content="1\n", edits=[{"old": "1", "new": "2"}])
        assert "(next: decide)" in text
        await call(c, "decide")
        await call(c, "log_result")
        text = await call_error(c, "write_target", edits=[{"old": "nope", "new": "2"}])
        assert "does not occur" in text and "read_target" in text
        assert (await call(c, "budget_status"))["next"] == "write_target"


async def test_prompt_and_resources(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo())
    async with Client(build_server(exp)) as c:
        prompts = (await c.list_prompts()).prompts
        assert [p.name for p in prompts] == ["autoexp"]
        text = (await c.get_prompt("autoexp")).messages[0].content.text  # type: ignore[union-attr]
        assert "value.txt" in text and "autoexp/t" in text and "score" in text and "No experiments yet." in text
        assert "${" not in text
        await call(c, "run_eval")
        await call(c, "decide")
        await call(c, "log_result")
        await experiment(c, "crash")
        text = (await c.get_prompt("autoexp", {"domain": "sql"})).messages[0].content.text  # type: ignore[union-attr]
        assert "Best kept" in text and "#2 crash" in text and "Typical agent moves" in text
        uris = {str(r.uri) for r in (await c.list_resources()).resources}
        assert {"autoexp://config", "autoexp://results", "autoexp://last-log", "autoexp://report"} <= uris
        results = (await c.read_resource("autoexp://results")).contents[0].text  # type: ignore[union-attr]
        assert results.splitlines()[0] == "commit\tscore\tstatus\tdescription" and len(results.splitlines()) == 3
        last = (await c.read_resource("autoexp://last-log")).contents[0].text  # type: ignore[union-attr]
        assert "Traceback: boom" in last
        config = (await c.read_resource("autoexp://config")).contents[0].text  # type: ignore[union-attr]
        assert 'tag = "t"' in config


async def test_run_eval_reports_progress_and_resumes_the_same_run(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo(value="sleep 3 2"))
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((p, total, message))

    async with Client(build_server(exp)) as c:
        with anyio.fail_after(CALL_TIMEOUT_S):
            res = await c.call_tool("run_eval", {"wait_seconds": 2.5}, progress_callback=on_progress)
        first = res.structured_content
        assert first is not None and first["status"] == "running"
        assert progress and progress[0][1] == 10.0 and "running" in (progress[0][2] or "")
        second = await call(c, "run_eval", wait_seconds=0.1)
        third = await call(c, "run_eval", wait_seconds=20)
        assert first["run"] == second["run"] == third["run"]
        assert third["status"] == "done" and third["metrics"] == {"score": 2.0}


async def test_a_cancelled_call_leaves_the_eval_running(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo(value="sleep 1.5 3"))
    async with Client(build_server(exp)) as c:
        with anyio.move_on_after(0.3):
            await c.call_tool("run_eval", {"wait_seconds": 30})
        # The client gave up; the eval goes on and its result arrives on the next call.
        done = await call(c, "run_eval", wait_seconds=20)
        assert done["status"] == "done" and done["metrics"] == {"score": 3.0} and done["run"] == 1


async def test_stdio_server_runs_the_whole_loop(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1", timeout=1.5, crashes=5)
    async with Client(stdio_params(repo)) as c:
        assert {t.name for t in (await c.list_tools()).tools} == TOOLS
        await scripted_run(c, repo)


async def test_stdio_server_restarted_mid_eval_logs_the_run_as_interrupted(make_repo: MakeRepo) -> None:
    repo = make_repo(value="1")
    async with Client(stdio_params(repo)) as c:
        await call(c, "run_eval")
        await call(c, "decide")
        await call(c, "log_result")
        await call(c, "write_target", content="sleep 30 5\n")
        await call(c, "commit", description="slow five")
        ev = await call(c, "run_eval", wait_seconds=0.5)
        assert ev["status"] == "running"
        assert "stops if this server exits" in ev["reason"]
    # The client closed: the server exited and took the eval's process group with it.
    state = json.loads((repo / ".autoexp" / "state.json").read_text())
    assert state["phase"] == "running", "the run was recorded as started"
    async with Client(stdio_params(repo)) as c:
        status = await call(c, "budget_status")
        assert status["phase"] == "idle" and status["next"] == "write_target"
        assert status["experiments_used"] == 2 and status["consecutive_crashes"] == 1
    records = [json.loads(line) for line in (repo / "experiments.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["keep", "interrupted"]
    assert records[-1]["run"] == 2 and "server stopped" in records[-1]["reason"]
    assert (repo / "value.txt").read_text() == "1\n", "back at the incumbent"


async def test_server_exit_kills_the_eval_process_group(make_repo: MakeRepo) -> None:
    marker = f"autoexp-test-sleeper-{os.getpid()}"
    harness = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"time.sleep(60)', '{marker}'])\n"
        "time.sleep(60)\n"
    )
    repo = make_repo(value="1", files={"evaluate.py": harness})
    async with Client(stdio_params(repo)) as c:
        ev = await call(c, "run_eval", wait_seconds=0.5)
        assert ev["status"] == "running"
        with anyio.fail_after(10):
            while not cmdline_pids(marker):
                await anyio.sleep(0.05)
    with anyio.fail_after(10):
        while cmdline_pids(marker):
            await anyio.sleep(0.05)


@pytest.mark.parametrize("content", ['{"lr": 0.1, "depth": 3}\n', "[1, 2]", "null", "42", '"quoted"'])
async def test_json_looking_content_is_written_verbatim(experiment: Experiment, content: str) -> None:
    async with Client(build_server(experiment)) as c:
        await call(c, "run_eval")
        await call(c, "decide")
        await call(c, "log_result", description="null")
        await call(c, "write_target", content=content)
        assert (experiment.root / "value.txt").read_text() == content
        assert "not empty" in await call_error(c, "write_target")
    row = json.loads((experiment.root / "experiments.jsonl").read_text().splitlines()[0])
    assert row["description"] == "null"


def _descriptions(node: Any) -> list[str]:
    """Every "description" string in a listing (tools, their input and output schemas, prompts)."""
    if isinstance(node, dict):
        own = [node["description"]] if isinstance(node.get("description"), str) else []
        return own + [d for v in node.values() for d in _descriptions(v)]
    if isinstance(node, list):
        return [d for v in node for d in _descriptions(v)]
    return []


async def test_descriptions_carry_no_source_indentation(experiment: Experiment) -> None:
    async with Client(build_server(experiment)) as c:
        listings = [
            (await c.list_tools()).tools,
            (await c.list_prompts()).prompts,
            (await c.list_resources()).resources,
        ]
    texts = _descriptions([item.model_dump(mode="json") for listing in listings for item in listing])
    assert len(texts) > 20
    for text in texts:
        assert "\n " not in text and text == text.strip(), repr(text)
        assert "  " not in text, repr(text)


async def test_a_prompt_for_an_unknown_domain_tells_the_client_the_choices(experiment: Experiment) -> None:
    async with Client(build_server(experiment)) as c:
        with anyio.fail_after(CALL_TIMEOUT_S), pytest.raises(MCPError) as info:
            await c.get_prompt("autoexp", {"domain": "astrology"})
    assert info.value.code == INVALID_PARAMS
    assert "no prompt template for domain 'astrology'; choose one of: " in info.value.message
    assert "sql" in info.value.message and "regex" in info.value.message


async def test_a_prompt_on_a_dirty_tree_tells_the_client_why(make_repo: MakeRepo) -> None:
    repo = make_repo()
    (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text() + "# tweak\n")
    async with Client(build_server(Opener(lambda: Experiment(repo)))) as c:
        with anyio.fail_after(CALL_TIMEOUT_S), pytest.raises(MCPError) as info:
            await c.get_prompt("autoexp")
    assert info.value.code == INTERNAL_ERROR
    assert "uncommitted changes to tracked files: evaluate.py" in info.value.message


async def test_a_running_eval_says_it_stops_if_this_server_exits(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo(value="sleep 3 2"))
    async with Client(build_server(exp)) as c:
        description = {t.name: t.description for t in (await c.list_tools()).tools}["run_eval"] or ""
        ev = await call(c, "run_eval", wait_seconds=0.1)
        assert ev["status"] == "running"
        for text in (ev["reason"], description):
            assert "call run_eval again" in text and "stops if this server exits" in text, text


async def test_a_client_of_a_server_whose_repo_does_not_exist_hears_so(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    async with Client(stdio_params(missing)) as c:
        text = await call_error(c, "budget_status")
    assert f"--repo {missing}: no such directory" in text and "git repository" not in text
