"""The stdio transport, without a worker thread per message.

The SDK's `stdio_server()` reads stdin and writes stdout through `anyio.wrap_file`, which
runs every readline, write and flush in a worker thread: three thread hops per request,
about 0.6 ms of the ~4 ms a tool call costs over stdio. When stdin and stdout are pipes or
sockets (how every MCP client starts a server) the event loop can wait on the descriptors
itself; anything else (a terminal, a redirected file) takes the SDK's own path.

Both ways, while serving, fd 0 reads the null device and fd 1 goes to stderr, so nothing a
child process or a stray print writes can land in the protocol stream; both are restored on
exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server.stdio import stdio_server

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

READ_CHUNK = 256 * 1024
log = logging.getLogger("autoexp_mcp")


def _is_stream(fd: int) -> bool:
    """A pipe or a socket: something the event loop can wait on (epoll refuses regular files)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class FdLineReader:
    """Newline-delimited messages from a readable pipe, as the SDK's reader expects them
    (text lines, undecodable bytes replaced)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline

    def __aiter__(self) -> FdLineReader:
        return self

    async def __anext__(self) -> str:
        while True:
            nl = self._buf.find(b"\n", self._scanned)
            if nl >= 0:
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                self._scanned = 0
                return line.decode("utf-8", errors="replace")
            self._scanned = len(self._buf)
            await anyio.wait_readable(self.fd)
            try:
                chunk = os.read(self.fd, READ_CHUNK)  # readable: returns at once
            except BlockingIOError:  # a socket shared with the (non-blocking) write side
                continue
            if not chunk:
                if self._buf:  # a last message without its newline
                    line = bytes(self._buf)
                    self._buf.clear()
                    self._scanned = 0
                    return line.decode("utf-8", errors="replace")
                raise StopAsyncIteration
            self._buf += chunk


class FdWriter:
    """Buffered writes to a non-blocking pipe; `flush` waits for room instead of blocking."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = bytearray()

    async def write(self, text: str) -> None:
        self._buf += text.encode("utf-8")

    async def flush(self) -> None:
        view = memoryview(bytes(self._buf))
        self._buf.clear()
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self.fd)


def _divert(fd: int, target: int) -> int:
    """Point `fd` at `target`'s file and return a private (close-on-exec) copy of the original."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(target, fd)
    return private


@asynccontextmanager
async def _pipe_streams() -> AsyncIterator[tuple[Any, Any]]:
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        rfd = _divert(0, null)
    finally:
        os.close(null)
    wfd = _divert(1, 2)
    flags = fcntl.fcntl(wfd, fcntl.F_GETFL)
    fcntl.fcntl(wfd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        async with stdio_server(FdLineReader(rfd), FdWriter(wfd)) as streams:  # type: ignore[arg-type]
            yield streams
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(wfd, fcntl.F_SETFL, flags)
        for fd, private in ((1, wfd), (0, rfd)):
            with contextlib.suppress(OSError):
                os.dup2(private, fd)
            os.close(private)


@asynccontextmanager
async def stdio_streams() -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) message streams of the process's stdin and stdout."""
    if _is_stream(0) and _is_stream(1):
        async with _pipe_streams() as streams:
            yield streams
    else:
        async with stdio_server() as streams:
            yield streams


async def serve_stdio(mcp: MCPServer[Any]) -> None:
    """Serve `mcp` over stdin and stdout until the client closes stdin or stops reading."""
    # What MCPServer.run_stdio_async does, on our streams; the SDK's in-memory client reaches
    # the low-level server the same way.
    lowlevel = mcp._lowlevel_server
    try:
        async with stdio_streams() as (read_stream, write_stream):
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
    except* BrokenPipeError:  # the client closed its end of our stdout: the session is over
        log.info("the client stopped reading; shutting down")
