"""The Streamable HTTP transport: one long-lived server per repository that agents come and go from.

The SDK's session manager enters the server's lifespan once, for the life of the process,
so every client session (and every 2026-style stateless request) drives the same open
Experiment: a client that reconnects, or a new agent, finds the eval still running and the
phase where the last one left it. A client that leaves mid-call leaves the eval running.

uvicorn serves the SDK's Starlette app behind `httpauth.Guard`, on a socket bound here (so a
port in use is our error message, and port 0 picks a free one). SIGTERM, SIGINT and SIGHUP
first stop the running eval (its whole process tree, as a closed stdin does over stdio: the
state stays RUNNING and the next start logs the run as `interrupted`), then let uvicorn close
the connections and the lifespan.

While serving, `.autoexp/http.json` says where (pid, URL, token source; never the token), so
`autoexp-mcp status` can tell whether an HTTP server holds the repository.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .httpauth import Access, Guard, is_loopback

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

log = logging.getLogger("autoexp_mcp")

DEFAULT_HOST = "127.0.0.1"
MCP_PATH = "/mcp"
ENDPOINT_FILE = "http.json"  # in .autoexp/
GRACE_S = 3  # after a stop signal: how long open streams (a GET stream, a long-poll) may take to close
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# --- where to listen -----------------------------------------------------------------------


def parse_bind(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` (HOST may be `[v6]`) -> (host, port); the host defaults to 127.0.0.1."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, text
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"--http {text}: write an IPv6 address in brackets, e.g. --http [::1]:8765")
    host = host or DEFAULT_HOST
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--http {text}: the port must be a number from 0 to 65535, e.g. --http 127.0.0.1:8765")
    return host, int(port_text)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), with an error that says what to do when it fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--http {host}:{port}: cannot resolve {host!r} ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"--http {host}:{port}: the port is in use (another autoexp-mcp server? `autoexp-mcp status` "
                "says); pick another port, or 0 for any free one"
            ) from None
        raise ConfigError(f"--http {host}:{port}: cannot listen there ({e.strerror})") from None
    sock.set_inheritable(False)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = host if host not in ("0.0.0.0", "::", "") else socket.gethostname()
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}{MCP_PATH}"


# --- the endpoint record -------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    pid: int
    url: str
    bind: str
    token: str  # where the token comes from ("none" without one); never the token itself
    started: float  # unix time


def endpoint_path(root: Path) -> Path:
    from .state import STATE_DIR

    return root / STATE_DIR / ENDPOINT_FILE


def write_endpoint(root: Path, ep: Endpoint) -> None:
    from .guard import atomic_write_file

    atomic_write_file(endpoint_path(root), (json.dumps(asdict(ep), indent=1) + "\n").encode(), 0o644)


def remove_endpoint(root: Path, pid: int) -> None:
    """Remove the record if it is still ours (a later server may have replaced it)."""
    ep = read_endpoint(root)
    if ep is not None and ep.pid == pid:
        with contextlib.suppress(OSError):
            endpoint_path(root).unlink()


def read_endpoint(root: Path) -> Endpoint | None:
    try:
        raw = json.loads(endpoint_path(root).read_text(encoding="utf-8"))
        return Endpoint(
            pid=int(raw["pid"]),
            url=str(raw["url"]),
            bind=str(raw["bind"]),
            token=str(raw["token"]),
            started=float(raw["started"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def lock_holder_pid(root: Path) -> int | None:
    """The pid of the server holding the repository's lock, or None when no server holds it."""
    from .state import STATE_DIR

    try:
        fd = os.open(root / STATE_DIR / "lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    finally:
        os.close(fd)
    return None


def server_status(root: Path) -> dict[str, Any] | None:
    """Which server holds the repository: {"transport", "pid", and for HTTP "url", "bind",
    "token", "since"}; None when none does."""
    pid = lock_holder_pid(root)
    if pid is None:
        return None
    ep = read_endpoint(root)
    if ep is not None and ep.pid == pid:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ep.started))
        return {"transport": "http", "pid": pid, "url": ep.url, "bind": ep.bind, "token": ep.token, "since": since}
    return {"transport": "stdio", "pid": pid if pid > 0 else None}


def describe_server(info: dict[str, Any] | None) -> str:
    """One line for `status`."""
    if info is None:
        return "server: none holds the repository"
    if info["transport"] == "http":
        return f"server: HTTP at {info['url']} (pid {info['pid']}, since {info['since']}, token: {info['token']})"
    return f"server: stdio (pid {info['pid'] or 'unknown'})"


# --- serving -------------------------------------------------------------------------------------


def _uvicorn_server(app: Any, on_started: Callable[[], None], on_stop: Callable[[], None]) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, with our signal handling: stop the eval first, then shut down (a second
        signal skips the wait for open connections). `on_started` runs once it listens, with
        the handlers in place."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                on_started()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            def handle(signum: int, _frame: FrameType | None) -> None:
                if self.should_exit:
                    self.force_exit = True
                    return
                log.info("%s: stopping the eval and the server", signal.Signals(signum).name)
                on_stop()
                self.should_exit = True

            previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    config = uvicorn.Config(
        app,
        log_config=None,  # keep our logging (stderr, our format)
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACE_S,
        server_header=False,
    )
    return Server(config)


def build_app(mcp: MCPServer[Any], access: Access) -> Any:
    """The SDK's Streamable HTTP app at /mcp, behind the guard."""
    from mcp.server.transport_security import TransportSecuritySettings

    inner = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        # Host and Origin are checked by the guard, for every request and before the session lookup.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    return Guard(inner, access)


def serve_http(
    mcp: MCPServer[Any],
    *,
    root: Path,
    sock: socket.socket,
    bind_host: str,
    access: Access,
    token_source: str,
    on_stop: Callable[[], None],
) -> None:
    """Serve `mcp` on the listening `sock` until a stop signal. `on_stop` (called in the
    signal handler, before the connections close) must stop the running eval."""
    import anyio

    url = url_of(sock, bind_host)
    pid = os.getpid()
    endpoint = Endpoint(
        pid=pid, url=url, bind=f"{bind_host}:{sock.getsockname()[1]}", token=token_source, started=time.time()
    )

    def started() -> None:
        write_endpoint(root, endpoint)  # the sign, for `status` and for scripts, that clients may connect
        if access.token is None:
            log.warning("serving %s at %s WITHOUT a token (loopback only)", root, url)
        else:
            log.info("serving %s at %s; clients send 'Authorization: Bearer <token>' (%s)", root, url, token_source)
        if not is_loopback(bind_host):
            log.warning(
                "listening on %s: put TLS in front (a reverse proxy) before the token crosses a network", bind_host
            )

    if not log.isEnabledFor(logging.DEBUG):  # the SDK says INFO for every session it opens and ends
        logging.getLogger("mcp").setLevel(logging.WARNING)
    server = _uvicorn_server(build_app(mcp, access), started, on_stop)
    try:
        anyio.run(server.serve, [sock])
    finally:
        remove_endpoint(root, pid)
        sock.close()
    log.info("stopped serving %s", root)
