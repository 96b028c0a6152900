"""The Streamable HTTP transport: the installed `serve --http` driven through the SDK's own
HTTP client, the token and the Host/Origin checks, agents that come and go while an eval
runs, and a server stopped by SIGTERM or killed mid-eval.

Every server binds 127.0.0.1 on a port the kernel picks; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from autoexp_mcp import httpauth, httpserve
from autoexp_mcp.cli import main as cli_main
from autoexp_mcp.clients import snippet
from autoexp_mcp.errors import ConfigError, GuardError
from autoexp_mcp.ledger import EXPERIMENTS_JSONL
from autoexp_mcp.verify import verify
from conftest import (
    MakeRepo,
    call,
    call_error,
    cmdline_pids,
    eval_to_end,
    harness_config,
    installed_command,
    server_env,
)

START_S = 30.0  # a server start (imports, the repository's open) on a loaded machine
EXIT_S = 30.0
GONE_S = 30.0
HTTP_S = 30.0
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}


def token_path() -> Path:
    return Path(os.environ["AUTOEXP_KEY_FILE"]).parent / httpauth.TOKEN_FILE_NAME


def wait_until(cond: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g}s for {what}")
        time.sleep(0.02)


class HttpServer:
    """`autoexp-mcp serve --http 127.0.0.1:0` on `repo`, ready when it has written its endpoint."""

    def __init__(self, repo: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.repo = repo
        self.log_path = repo.parent / f"http-{uuid.uuid4().hex[:6]}.log"
        argv = [installed_command(), "serve", "--repo", str(repo), "--http", "127.0.0.1:0", *args]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env={**server_env(), **(env or {})}
            )
        self.pid = self.proc.pid

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.stderr}")
            ep = httpserve.read_endpoint(repo)
            return ep is not None and ep.pid == self.pid

        wait_until(ready, START_S, "the server to listen")
        ep = httpserve.read_endpoint(repo)
        assert ep is not None
        self.url = ep.url

    @property
    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def token(self) -> str:
        return token_path().read_text().strip()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
        return self.proc.wait(EXIT_S)


@pytest.fixture
def serve() -> Iterator[Callable[..., HttpServer]]:
    started: list[HttpServer] = []

    def start(repo: Path, *args: str, env: dict[str, str] | None = None) -> HttpServer:
        server = HttpServer(repo, *args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL)


@asynccontextmanager
async def connect(
    server: HttpServer,
    *,
    mode: str = "auto",
    token: str | None = None,
    url: str | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Client]:
    """The SDK's Streamable HTTP client, sending the server's token (or `token`, or `headers`)."""
    if headers is None:
        headers = {"Authorization": f"Bearer {server.token if token is None else token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(HTTP_S, read=300)) as http:
        transport = streamable_http_client(url or server.url, http_client=http)
        async with Client(transport, mode=mode) as c:
            yield c


def post(server: HttpServer, body: dict[str, Any], headers: dict[str, str]) -> httpx2.Response:
    base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    return httpx2.post(server.url, json=body, headers={**base, **headers}, timeout=HTTP_S)


def ledger_rows(repo: Path) -> list[dict[str, Any]]:
    path = repo / EXPERIMENTS_JSONL
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- bind addresses, tokens, Host and Origin (no server) -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8765", ("127.0.0.1", 8765)),
        (":8765", ("127.0.0.1", 8765)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::1]:8765", ("::1", 8765)),
        ("gpu-box:0", ("gpu-box", 0)),
    ],
)
def test_bind_addresses_default_to_loopback(text: str, expected: tuple[str, int]) -> None:
    assert httpserve.parse_bind(text) == expected


@pytest.mark.parametrize(("text", "words"), [("::1:80", "brackets"), ("host:http", "number"), ("70000", "65535")])
def test_bad_bind_addresses_say_how_to_write_one(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        httpserve.parse_bind(text)


def test_no_token_is_refused_off_loopback() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        httpauth.check_bind(host, None)
    with pytest.raises(ConfigError, match="only on a loopback address"):
        httpauth.check_bind("0.0.0.0", None)
    httpauth.check_bind("0.0.0.0", "a-token")


def test_a_new_token_file_is_private_and_kept(tmp_path: Path) -> None:
    env = {"OTHER": "1"}
    first = httpauth.load_token(tmp_path / "repo", None, env)
    assert first.path == token_path() and stat_mode(token_path()) == 0o600
    assert stat_mode(token_path().parent) & 0o077 == 0
    assert len(first.value) >= 40 and httpauth.load_token(tmp_path / "repo", None, env).value == first.value


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_token_from_the_environment_is_taken_and_removed_from_it(tmp_path: Path) -> None:
    env = {httpauth.TOKEN_ENV: "s3cret-token-of-enough-length"}
    token = httpauth.load_token(tmp_path, None, env)
    assert (token.value, token.path, env) == ("s3cret-token-of-enough-length", None, {})
    with pytest.raises(GuardError, match="characters"):
        httpauth.load_token(tmp_path, None, {httpauth.TOKEN_ENV: "short"})


def test_unsafe_token_files_are_refused(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    good = tmp_path / "token"
    good.write_text("a-token-of-enough-length\n")
    good.chmod(0o644)
    with pytest.raises(GuardError, match="chmod 600"):
        httpauth.load_token(repo, good, {})
    good.chmod(0o600)
    assert httpauth.load_token(repo, good, {}).value == "a-token-of-enough-length"
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(GuardError, match="symlink"):
        httpauth.load_token(repo, link, {})
    inside = repo / "token"
    inside.write_text("a-token-of-enough-length\n")
    inside.chmod(0o600)
    with pytest.raises(GuardError, match="inside the repository"):
        httpauth.load_token(repo, inside, {})
    with pytest.raises(GuardError, match="no such file"):
        httpauth.load_token(repo, tmp_path / "missing", {})


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer right-token-123456", True),
        ("bearer right-token-123456", True),
        ("Bearer wrong-token-123456", False),
        ("Bearer right-token-1234567", False),
        ("Basic right-token-123456", False),
        ("right-token-123456", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_header_must_carry_exactly_the_token(header: str | None, ok: bool) -> None:
    assert httpauth.bearer_ok(header, "right-token-123456") is ok


LOOPBACK = httpauth.Access.build(bind_host="127.0.0.1", token="t" * 20)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1:8765", True),
        ("localhost:8765", True),
        ("[::1]:8765", True),
        ("192.168.1.20:8765", True),  # an IP literal: no name an attacker could rebind
        ("evil.example.com:8765", False),
        ("evil.example.com", False),
        ("localhost.evil.example.com:8765", False),
        ("", False),
        (None, False),
    ],
)
def test_host_must_be_an_address_or_a_name_of_ours(host: str | None, ok: bool) -> None:
    assert LOOPBACK.host_ok(host) is ok


def test_a_proxy_name_is_accepted_only_when_allowed() -> None:
    proxied = httpauth.Access.build(bind_host="127.0.0.1", token="t" * 20, allow_hosts=["gpu.example.com"])
    assert proxied.host_ok("gpu.example.com") and proxied.host_ok("GPU.example.com:443")
    assert not proxied.host_ok("cpu.example.com")


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        (None, True),  # not a browser
        ("http://127.0.0.1:8765", True),  # the request's own host
        ("http://localhost:3000", False),  # another local page
        ("http://evil.example.com", False),
        ("null", False),
        ("https://app.example.org", True),  # allowed by name
    ],
)
def test_origin_must_be_the_servers_own_or_allowed(origin: str | None, ok: bool) -> None:
    access = httpauth.Access.build(bind_host="127.0.0.1", token=None, allow_origins=["https://app.example.org/"])
    assert access.origin_ok(origin, "127.0.0.1:8765") is ok


# --- a real server through the SDK's HTTP client --------------------------------------------------


@pytest.mark.anyio
async def test_the_whole_loop_runs_over_http(make_repo: MakeRepo, serve: Callable[..., HttpServer]) -> None:
    repo = make_repo(value="1")
    server = serve(repo)
    assert stat_mode(token_path()) == 0o600 and not token_path().is_relative_to(repo)
    # Connect as `install --client claude-code --http URL` says, with the variable set as its notes say.
    snip = snippet("claude-code", repo=repo, exe=Path("unused"), home=repo.parent, url=server.url, environ={})
    entry = json.loads(snip.text)["mcpServers"]["autoexp"]
    variable = f"${{{httpauth.TOKEN_ENV}}}"  # what Claude Code expands from its environment
    headers = {k: v.replace(variable, server.token) for k, v in entry["headers"].items()}
    async with connect(server, url=entry["url"], headers=headers) as c:
        assert {t.name for t in (await c.list_tools()).tools} >= {"run_eval", "decide", "log_result"}
        assert (await eval_to_end(c))["status"] == "done"
        assert (await call(c, "decide"))["status"] == "keep"
        await call(c, "log_result")
        await call(c, "write_target", content="3\n")
        await call(c, "commit", description="three")
        assert (await eval_to_end(c))["metrics"] == {"score": 3.0}
        assert (await call(c, "decide"))["status"] == "keep"
        await call(c, "log_result", notes="better")
        assert (await call(c, "budget_status"))["experiments_used"] == 2
    async with connect(server, mode="legacy") as c:  # the 2025 handshake desktop clients use
        prompts = (await c.list_prompts()).prompts
        assert [p.name for p in prompts] == ["autoexp"]
        assert (await c.get_prompt("autoexp")).messages
        results = await c.read_resource("autoexp://results")
        assert "three" in results.contents[0].text  # type: ignore[union-attr]
    assert [r["status"] for r in ledger_rows(repo)] == ["keep", "keep"]
    assert server.stop() == 0
    assert httpserve.read_endpoint(repo) is None, "a clean stop removes the endpoint record"
    assert "Traceback" not in server.stderr


@pytest.mark.anyio
async def test_a_client_that_leaves_mid_eval_is_followed_by_one_that_finishes_it(
    make_repo: MakeRepo, serve: Callable[..., HttpServer]
) -> None:
    repo = make_repo(value="sleep 1 5")
    server = serve(repo)
    async with connect(server) as first:
        ev = await call(first, "run_eval", wait_seconds=0.2)
        assert ev["status"] == "running"
        with anyio.move_on_after(0.3):  # leaves in the middle of a long poll: the connection drops
            await first.call_tool("run_eval", {"wait_seconds": 30})
    async with connect(server, mode="legacy") as second:
        again = await eval_to_end(second)
        assert (again["run"], again["status"], again["metrics"]) == (ev["run"], "done", {"score": 5.0})
        await call(second, "decide")
        await call(second, "log_result")
    assert [r["experiment"] for r in ledger_rows(repo)] == [1]
    assert len(list((repo / ".autoexp" / "runs").glob("*"))) == 1, "one eval run, not a second one"


@pytest.mark.anyio
async def test_a_wrong_or_missing_token_is_refused_and_changes_nothing(
    make_repo: MakeRepo, serve: Callable[..., HttpServer]
) -> None:
    repo = make_repo(value="1")
    server = serve(repo)
    state = (repo / ".autoexp" / "state.json").read_bytes()
    write = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "write_target", "arguments": {"content": "999\n"}},
    }
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {server.token}"}):
        for body in (INIT, write):
            res = post(server, body, headers)
            assert res.status_code == 401, (headers, res.text)
            assert res.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer <token>" in res.json()["error"]["message"]
    with pytest.raises(Exception):  # noqa: B017 - the SDK client cannot even connect
        async with connect(server, token="wrong-token-0123456789") as c:
            await c.list_tools()
    assert (repo / ".autoexp" / "state.json").read_bytes() == state
    assert (repo / "value.txt").read_text() == "1\n"
    assert post(server, INIT, {"Authorization": f"Bearer {server.token}"}).status_code == 200


def test_a_foreign_host_or_origin_is_refused_before_the_token(
    make_repo: MakeRepo, serve: Callable[..., HttpServer]
) -> None:
    server = serve(make_repo())
    auth = {"Authorization": f"Bearer {server.token}"}
    port = server.url.split(":")[2].split("/")[0]
    assert post(server, INIT, {**auth, "Host": f"evil.example.com:{port}"}).status_code == 421
    assert post(server, INIT, {"Host": f"evil.example.com:{port}"}).status_code == 421
    refused = post(server, INIT, {**auth, "Origin": "http://evil.example.com"})
    assert refused.status_code == 403 and "--allow-origin" in refused.json()["error"]["message"]
    assert post(server, INIT, {**auth, "Origin": f"http://127.0.0.1:{port}"}).status_code == 200
    assert post(server, INIT, {**auth, "Host": f"localhost:{port}"}).status_code == 200


@pytest.mark.anyio
async def test_two_clients_at_once_share_one_run_and_log_it_once(
    make_repo: MakeRepo, serve: Callable[..., HttpServer]
) -> None:
    repo = make_repo(value="sleep 0.5 2")
    server = serve(repo)
    async with connect(server) as a, connect(server, mode="legacy") as b:
        views: list[dict[str, Any]] = []

        async def wait(c: Client) -> None:
            views.append(await eval_to_end(c))

        with anyio.fail_after(HTTP_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, a)
                tg.start_soon(wait, b)
        assert views[0]["run"] == views[1]["run"] and {v["status"] for v in views} == {"done"}
        assert "next: decide" in await call_error(b, "log_result")
        await call(a, "decide")
        assert "next: log_result" in await call_error(b, "decide")
        await call(b, "log_result")
        assert "next: write_target" in await call_error(a, "log_result")
    assert [r["experiment"] for r in ledger_rows(repo)] == [1]
    assert verify(repo) == []


def test_status_says_which_server_holds_the_repository(
    make_repo: MakeRepo, serve: Callable[..., HttpServer], capsys: pytest.CaptureFixture[str]
) -> None:
    repo = make_repo()
    server = serve(repo)

    def status(*args: str) -> str:
        assert cli_main(["status", "--repo", str(repo), *args]) == 0
        return capsys.readouterr().out

    assert f"server: HTTP at {server.url} (pid {server.pid}" in status()
    out = status("--json")
    held = json.loads(out)["server"]
    assert (held["transport"], held["url"], held["pid"]) == ("http", server.url, server.pid)
    assert held["token"] == str(token_path()) and server.token not in out, "where the token is, never the token"
    server.stop()
    assert "server: none holds the repository" in status()


def test_a_second_server_on_the_repository_is_refused_at_start(
    make_repo: MakeRepo, serve: Callable[..., HttpServer]
) -> None:
    repo = make_repo()
    first = serve(repo)
    res = subprocess.run(
        [installed_command(), "serve", "--repo", str(repo), "--http", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=START_S,
    )
    assert res.returncode != 0 and f"pid {first.pid}" in res.stderr
    ep = httpserve.read_endpoint(repo)
    assert ep is not None and ep.pid == first.pid, "the refused server left the record alone"


def test_no_token_off_loopback_is_refused_before_anything_opens(make_repo: MakeRepo) -> None:
    repo = make_repo()
    res = subprocess.run(
        [installed_command(), "serve", "--repo", str(repo), "--http", "0.0.0.0:0", "--no-token"],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=START_S,
    )
    assert res.returncode == 2 and "only on a loopback address" in res.stderr
    assert not (repo / ".autoexp").exists()


@pytest.mark.anyio
async def test_a_server_without_a_token_on_loopback_answers_anyone_local(
    make_repo: MakeRepo, serve: Callable[..., HttpServer]
) -> None:
    server = serve(make_repo(), "--no-token")
    assert "WITHOUT a token" in server.stderr
    assert post(server, INIT, {}).status_code == 200
    async with connect(server, token="anything-at-all-here") as c:
        assert (await call(c, "budget_status"))["next"] == "run_eval"


def test_a_token_file_wins_over_the_variable_and_a_proxy_name_is_accepted(
    make_repo: MakeRepo, serve: Callable[..., HttpServer], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-from-the-file-0123456789\n")
    token_file.chmod(0o600)
    env = {httpauth.TOKEN_ENV: "token-from-the-variable-0123456789"}
    server = serve(make_repo(), "--token-file", str(token_file), "--allow-host", "gpu.example.com", env=env)
    port = server.url.split(":")[2].split("/")[0]
    assert post(server, INIT, {"Authorization": "Bearer token-from-the-variable-0123456789"}).status_code == 401
    auth = {"Authorization": "Bearer token-from-the-file-0123456789"}
    assert post(server, INIT, {**auth, "Host": "gpu.example.com"}).status_code == 200
    assert post(server, INIT, {**auth, "Host": f"cpu.example.com:{port}"}).status_code == 421
    ep = httpserve.read_endpoint(server.repo)
    assert ep is not None and ep.token == f"--token-file {token_file}"


def test_http_options_without_http_are_refused(make_repo: MakeRepo, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo()
    assert cli_main(["serve", "--repo", str(repo), "--no-token"]) == 2
    assert "go with --http" in capsys.readouterr().err
    assert not (repo / ".autoexp").exists(), "refused before anything opened"


# --- stopping: SIGTERM and kill -9 mid-eval ------------------------------------------------------------


def marked_repo(make_repo: MakeRepo, value: str = "sleep 60 1") -> tuple[Path, str]:
    """A repository whose eval carries a marker on its command line (to find its processes)."""
    marker = f"autoexp-http-{uuid.uuid4().hex[:8]}"
    config = harness_config(timeout=60, wait=20).replace("evaluate.py", f"evaluate.py {marker}", 1)
    return make_repo(value=value, config=config), marker


async def start_eval(server: HttpServer) -> int:
    async with connect(server) as c:
        ev = await call(c, "run_eval", wait_seconds=0.2)
    assert ev["status"] == "running"
    return int(ev["run"])


async def after_restart(server: HttpServer) -> dict[str, Any]:
    async with connect(server) as c:
        return await call(c, "budget_status")


@pytest.mark.slow
@pytest.mark.anyio
async def test_sigterm_mid_eval_stops_the_eval_and_a_restart_logs_it_interrupted(
    make_repo: MakeRepo, serve: Callable[..., HttpServer]
) -> None:
    repo, marker = marked_repo(make_repo)
    server = serve(repo)
    await start_eval(server)
    wait_until(lambda: cmdline_pids(marker), GONE_S, "the eval to start")
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < httpserve.GRACE_S + 10
    wait_until(lambda: not cmdline_pids(marker), GONE_S, "the eval's processes to be gone")
    assert httpserve.read_endpoint(repo) is None and httpserve.server_status(repo) is None
    assert "SIGTERM: stopping the eval" in server.stderr and "Traceback" not in server.stderr
    again = serve(repo)
    budget = await after_restart(again)
    assert (budget["experiments_used"], budget["consecutive_crashes"], budget["next"]) == (1, 1, "run_eval")
    assert [r["status"] for r in ledger_rows(repo)] == ["interrupted"]
    assert verify(repo) == []


@pytest.mark.slow
@pytest.mark.anyio
async def test_kill_9_mid_eval_leaves_a_state_the_next_server_makes_consistent(
    make_repo: MakeRepo, serve: Callable[..., HttpServer]
) -> None:
    repo, marker = marked_repo(make_repo, value="1")
    server = serve(repo)
    async with connect(server) as c:  # the baseline, then an experiment that is killed mid-eval
        for tool in ("run_eval", "decide", "log_result"):
            await call(c, tool)
        await call(c, "write_target", content="sleep 60 2\n")
        await call(c, "commit", description="slow")
    await start_eval(server)
    wait_until(lambda: cmdline_pids(marker), GONE_S, "the eval to start")
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert httpserve.read_endpoint(repo) is not None, "nothing cleaned up after a kill -9 ..."
    assert httpserve.server_status(repo) is None, "... but no server holds the repository"
    again = serve(repo)
    wait_until(lambda: not cmdline_pids(marker), GONE_S, "the old eval to be gone")
    budget = await after_restart(again)
    assert (budget["experiments_used"], budget["phase"], budget["next"]) == (2, "idle", "write_target")
    assert [r["status"] for r in ledger_rows(repo)] == ["keep", "interrupted"]
    assert (repo / "value.txt").read_text() == "1\n", "back at the incumbent"
    async with connect(again) as c:  # and the experiment goes on
        await call(c, "write_target", content="2\n")
        await call(c, "commit", description="two")
        assert (await eval_to_end(c))["metrics"] == {"score": 2.0}
    assert verify(repo) == []


def test_the_readme_lists_the_conformance_scenarios_ci_runs() -> None:
    root = Path(__file__).resolve().parent.parent
    script = (root / ".ci" / "conformance").read_text()
    listed = script[script.index("SCENARIOS=(") : script.index(")", script.index("SCENARIOS=("))]
    ci = set(listed.removeprefix("SCENARIOS=(").split())
    readme = (root / "README.md").read_text()
    section = readme[readme.index("### Conformance") :]
    table = section[section.index("| scenario |") : section.index("\n\n", section.index("| scenario |"))]
    documented = set(re.findall(r"`([a-z0-9-]+)`", table))
    assert ci == documented and len(ci) == 8
