"""The stdio transport (real pipes, the installed server) and the repository opened after the
handshake: what a client sees before, during and after the open."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import tty
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from autoexp_mcp.stdio import FdLineReader, FdWriter
from conftest import (
    MakeRepo,
    call,
    call_error,
    cmdline_pids,
    git,
    harness_config,
    installed_command,
    server_env,
    stdio_params,
)

WAIT_S = 30.0


# --- the reader and the writer, on real pipes ----------------------------------------------------


def test_lines_split_across_writes_and_several_per_write_come_out_whole() -> None:
    r, w = os.pipe()
    chunks = [b'{"a": 1}\n{"b"', b": 2}\n", b'{"c": "\xff"}\n{"d": 4}']  # the last without a newline

    def feed() -> None:
        for chunk in chunks:
            os.write(w, chunk)
        os.close(w)

    async def read_all() -> list[str]:
        out = []
        with anyio.fail_after(WAIT_S):
            async for line in FdLineReader(r):
                out.append(line)
        return out

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        lines = anyio.run(read_all)
    finally:
        writer.join(WAIT_S)
        os.close(r)
    assert lines == ['{"a": 1}\n', '{"b": 2}\n', '{"c": "\ufffd"}\n', '{"d": 4}']


def test_a_message_larger_than_the_pipe_arrives_whole_while_the_reader_is_slow() -> None:
    r, w = os.pipe()
    os.set_blocking(w, False)
    message = "".join(f"{i:07d}," for i in range(600_000))  # 4.8 MB; a pipe holds 64 KiB
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(r, 4096):
            received.extend(chunk)

    async def send() -> None:
        out = FdWriter(w)
        with anyio.fail_after(WAIT_S):
            await out.write(message)
            await out.write("\n")
            await out.flush()

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        anyio.run(send)
    finally:
        os.close(w)
        reader.join(WAIT_S)
        os.close(r)
    assert received.decode() == message + "\n"


# --- a raw JSON-RPC client over pipes --------------------------------------------------------------


class RawClient:
    """Newline-delimited JSON-RPC to the installed server, every read bounded."""

    def __init__(self, repo: Path, stdin: Any = subprocess.PIPE) -> None:
        self.proc = subprocess.Popen(
            [installed_command(), "serve", "--repo", str(repo)],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=server_env(),
        )
        self._next_id = 0
        self._buf = b""
        self.err = ""

    def send(self, method: str, params: dict[str, Any] | None = None, notify: bool = False) -> int:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params or {}}
        if not notify:
            self._next_id += 1
            msg["id"] = self._next_id
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()
        return self._next_id

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], WAIT_S)
            assert ready, "no answer from the server"
            chunk = os.read(fd, 65536)
            assert chunk, f"the server closed stdout: {self.stderr()}"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        rid = self.send(method, params)
        while True:
            msg = self.recv()
            if msg.get("id") == rid:
                return msg

    def initialize(self) -> dict[str, Any]:
        answer = self.request(
            "initialize",
            {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
        )
        self.send("notifications/initialized", notify=True)
        return answer

    def stderr(self) -> str:
        self.close()
        return self.err

    def close(self) -> int:
        """Close stdin (the client leaves), wait for the exit, keep stderr; returns the exit code."""
        if self.proc.returncode is None or not self.err:
            try:  # communicate closes stdin: the client leaves
                _, err = self.proc.communicate(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate(timeout=WAIT_S)
            self.err = err.decode(errors="replace")
        return self.proc.returncode


def test_the_handshake_leaves_the_repository_alone_until_the_tools_are_listed(make_repo: MakeRepo) -> None:
    repo = make_repo()
    client = RawClient(repo)
    try:
        assert client.initialize()["result"]["serverInfo"]["name"] == "autoexp"
        # Answered without opening: no lock taken, no branch made.
        assert not (repo / ".autoexp" / "lock").exists()
        assert git(repo, "branch", "--show-current") == "main"
        tools = client.request("tools/list")["result"]["tools"]
        assert len(tools) == 8  # the loop's; combine only on a coordinator (serve --coordinator)
        status = client.request("tools/call", {"name": "budget_status", "arguments": {}})["result"]
        assert not status.get("isError"), status
        assert status["structuredContent"]["next"] == "run_eval"
        assert git(repo, "branch", "--show-current") == "autoexp/t"
        assert (repo / ".autoexp" / "lock").read_text().strip() == str(client.proc.pid)
    finally:
        assert client.close() == 0


def test_while_serving_stdout_and_stdin_are_kept_away_from_the_protocol(make_repo: MakeRepo) -> None:
    client = RawClient(make_repo())
    try:
        client.initialize()
        fds = Path(f"/proc/{client.proc.pid}/fd")
        # A stray print (ours, or a child's) goes to stderr; a child reading stdin sees EOF.
        assert os.readlink(fds / "1") == os.readlink(fds / "2")
        assert os.readlink(fds / "0") == os.devnull
    finally:
        assert client.close() == 0


def test_a_server_on_a_terminal_answers_through_the_sdk_transport(make_repo: MakeRepo) -> None:
    master, slave = os.openpty()  # a terminal: not a pipe, so the SDK's threaded reader serves it
    tty.setraw(slave)
    client = RawClient(make_repo(), stdin=slave)
    os.close(slave)
    client.proc.stdin = os.fdopen(master, "wb", buffering=0)  # type: ignore[assignment]
    try:
        assert client.initialize()["result"]["serverInfo"]["name"] == "autoexp"
        assert len(client.request("tools/list")["result"]["tools"]) == 8
        status = client.request("tools/call", {"name": "budget_status", "arguments": {}})["result"]
        assert status["structuredContent"]["next"] == "run_eval"
    finally:
        client.proc.terminate()
        assert client.close() == -signal.SIGTERM


@pytest.mark.anyio
async def test_a_target_of_a_megabyte_goes_both_ways(make_repo: MakeRepo) -> None:
    repo = make_repo()
    content = "".join(f"line {i:06d} " + "x" * 50 + "\n" for i in range(16_000))  # ~1 MB, the default cap
    assert 900_000 < len(content) < 1024 * 1024
    async with Client(stdio_params(repo)) as c:
        for tool in ("run_eval", "decide", "log_result"):
            await call(c, tool)
        written = await call(c, "write_target", content=content)
        assert written["lines"] == 16_000
        assert (await call(c, "read_target"))["content"] == content
    assert (repo / "value.txt").read_text() == content


@pytest.mark.anyio
async def test_a_dirty_tree_is_reported_to_the_agent_and_a_fix_needs_no_restart(make_repo: MakeRepo) -> None:
    repo = make_repo()
    (repo / "evaluate.py").write_text((repo / "evaluate.py").read_text() + "# tweak\n")
    async with Client(stdio_params(repo)) as c:
        with anyio.fail_after(WAIT_S):
            assert len((await c.list_tools()).tools) == 8
        message = await call_error(c, "budget_status")
        assert "uncommitted changes to tracked files: evaluate.py" in message
        assert git(repo, "branch", "--show-current") == "main"
        git(repo, "commit", "-qam", "the harness tweak")
        assert (await call(c, "budget_status"))["next"] == "run_eval"
    assert git(repo, "branch", "--show-current") == "autoexp/t"


@pytest.mark.anyio
async def test_a_second_server_on_the_repository_names_the_first_and_leaves_it_working(
    make_repo: MakeRepo,
) -> None:
    repo = make_repo()
    async with Client(stdio_params(repo)) as first:
        await call(first, "budget_status")
        holder = (repo / ".autoexp" / "lock").read_text().strip()
        async with Client(stdio_params(repo)) as second:
            message = await call_error(second, "read_target")
            assert f"pid {holder}" in message
        await call(first, "run_eval")
        assert (await call(first, "decide"))["experiment"] == 1


def test_the_in_process_server_module_does_not_import_git() -> None:
    """What keeps the handshake fast: GitPython and the loop load with the repository, later."""
    code = (
        "import sys, autoexp_mcp.server, autoexp_mcp.cli, autoexp_mcp.stdio; "
        "print(sorted(m for m in ('git', 'autoexp_mcp.loop', 'autoexp_mcp.config') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=WAIT_S)
    assert out.stdout.strip() == "[]"


def test_an_unexpected_failure_to_open_still_reaches_the_agent_and_the_exit_code(make_repo: MakeRepo) -> None:
    repo = make_repo()
    (repo / ".autoexp").write_text("a file where the server keeps its state\n")
    client = RawClient(repo)
    try:
        client.initialize()
        client.request("tools/list")
        answer = client.request("tools/call", {"name": "read_target", "arguments": {}})["result"]
        assert answer["isError"]
        assert "cannot open the experiment: FileExistsError" in answer["content"][0]["text"]
    finally:
        rc = client.close()
    assert rc != 0
    assert "cannot open the experiment: FileExistsError" in client.err


@pytest.mark.anyio
async def test_calls_racing_for_an_unopened_repository_open_it_once(make_repo: MakeRepo) -> None:
    from autoexp_mcp.loop import Experiment
    from autoexp_mcp.server import Opener, build_server

    repo = make_repo()
    opened: list[Experiment] = []

    def open_experiment() -> Experiment:
        opened.append(Experiment(repo))
        return opened[-1]

    results: list[dict[str, Any]] = []
    async with Client(build_server(Opener(open_experiment))) as c:

        async def status() -> None:
            results.append(await call(c, "budget_status"))

        with anyio.fail_after(WAIT_S):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(status)
    assert len(opened) == 1
    assert [r["next"] for r in results] == ["run_eval"] * 4
    Experiment(repo).close()  # the server closed what it opened: the repository lock is free again


def test_a_client_that_stops_reading_ends_the_session_and_the_eval(make_repo: MakeRepo) -> None:
    marker = f"autoexp-stops-reading-{uuid.uuid4().hex[:8]}"
    repo = make_repo(value="sleep 60 1", config=harness_config().replace("evaluate.py", f"evaluate.py {marker}", 1))
    client = RawClient(repo)
    try:
        client.initialize()
        client.request("tools/list")
        answer = client.request("tools/call", {"name": "run_eval", "arguments": {"wait_seconds": 0.2}})
        assert answer["result"]["structuredContent"]["status"] == "running"
        assert cmdline_pids(marker)
        assert client.proc.stdout is not None
        client.proc.stdout.close()  # the client goes away without closing our stdin
        client.send("tools/call", {"name": "budget_status", "arguments": {}})  # its answer hits a closed pipe
        client.proc.wait(timeout=WAIT_S)  # stdin still open: only the closed pipe can end the session
    finally:
        rc = client.close()
    assert rc == 0, client.err
    assert "the client stopped reading" in client.err and "Traceback" not in client.err
    deadline = time.monotonic() + WAIT_S
    while cmdline_pids(marker) and time.monotonic() < deadline:  # SIGKILL is asynchronous: bounded
        time.sleep(0.02)
    assert cmdline_pids(marker) == []
