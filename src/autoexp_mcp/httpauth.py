"""Who may talk to the HTTP server: the bearer token, and Host/Origin checks against DNS rebinding.

The token: `--token-file PATH`, else `$AUTOEXP_HTTP_TOKEN`, else `<key dir>/http-token`
(the directory of auth.py's key, which the sandbox hides from evals), created on first start
with mode 0600. A token file must be the user's own regular file, closed to others, and
outside the repository (an eval without a sandbox could read it there, and a commit could
publish it).

`Guard` wraps the whole ASGI app, so every request meets the same checks before the SDK sees
it, in this order: Host (421), Origin (403), token (401). The SDK's own Host/Origin check is
switched off: it runs inside the transport, after the session lookup (a request with an
unknown session id gets its 404 before any check), and it takes only loopback names, while a
server behind a proxy or on a LAN needs its own names and IP addresses.

Rebinding needs a DNS name that the attacker controls, so a Host that is an IP literal, the
loopback name, this machine's name (on a non-loopback bind) or a name given with
`--allow-host` is accepted; any other name is refused. An Origin header (browsers send one)
must be the request's own host or one given with `--allow-origin`.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import socket
import tempfile
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .auth import PrivateFile, read_private
from .errors import ConfigError, GuardError

log = logging.getLogger("autoexp_mcp")

TOKEN_ENV = "AUTOEXP_HTTP_TOKEN"
TOKEN_FILE_NAME = "http-token"
TOKEN_BYTES = 32  # random bytes behind a generated token (43 url-safe characters)
MIN_TOKEN_CHARS = 16  # a token given by the user must be at least this long
MAX_TOKEN_CHARS = 4096
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- the token -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    value: str
    source: str  # where it came from, for the log and `status` (never the token itself)
    path: Path | None  # the file, when it came from one


def default_token_path() -> Path:
    from .auth import key_dir

    return key_dir() / TOKEN_FILE_NAME


def _refuse(path: Path, why: str, fix: str) -> GuardError:
    return GuardError(f"the token file {path} {why}; {fix}.")


def _valid(text: str, where: str) -> str:
    token = text.strip()
    if len(token) < MIN_TOKEN_CHARS or len(token) > MAX_TOKEN_CHARS:
        raise GuardError(
            f"the token in {where} has {len(token)} characters; give {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} "
            "(e.g. `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise GuardError(f"the token in {where} must be printable ASCII without spaces (it travels in a header)")
    return token


def read_token_file(path: Path) -> str | None:
    """The token in `path`, or None when there is no such file; refuses an unsafe file."""
    how = PrivateFile(
        refuse=lambda why, fix: _refuse(path, why, fix),
        symlink_fix="give the path of the regular file it points to",
        not_regular_fix="give a file that holds the token",
        owner_fix="use a token file of your own",
    )
    data = read_private(path, MAX_TOKEN_CHARS + 2, how)
    if data is None:
        return None
    try:
        return _valid(data.decode("ascii"), str(path))
    except UnicodeDecodeError:
        raise GuardError(f"the token in {path} must be printable ASCII without spaces") from None


def _create_token_file(path: Path) -> str:
    """A new random token, published whole or not at all (as auth.py creates the key)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    fd, tmp = tempfile.mkstemp(prefix=".http-token.", dir=path.parent)  # O_EXCL, mode 0600
    try:
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:  # another server was first: use its token
        theirs = read_token_file(path)
        if theirs is None:
            raise _refuse(path, "appeared and vanished while it was being created", "start again") from None
        return theirs
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return token


def _outside(path: Path, repo: Path) -> None:
    if path.resolve().is_relative_to(repo.resolve()):
        raise GuardError(
            f"the token file {path} is inside the repository {repo}, where an eval or a commit could expose it; "
            f"keep it elsewhere (the default is {default_token_path()})"
        )


def load_token(repo: Path, token_file: Path | None, environ: MutableMapping[str, str]) -> Token:
    """The server's token: from `token_file`, else the environment, else the default file
    (created on first use). The variable is removed from `environ` once read, so nothing the
    server starts inherits it."""
    if token_file is not None:
        path = Path(token_file).expanduser().absolute()
        _outside(path, repo)
        token = read_token_file(path)
        if token is None:
            raise GuardError(
                f"--token-file {path}: no such file; write a token into it (`umask 077; python3 -c 'import "
                f"secrets; print(secrets.token_urlsafe(32))' > {path}`) or leave --token-file out to use {TOKEN_ENV} "
                f"or {default_token_path()}"
            )
        environ.pop(TOKEN_ENV, None)
        return Token(token, f"--token-file {path}", path)
    from_env = environ.pop(TOKEN_ENV, None)
    if from_env:
        return Token(_valid(from_env, f"${TOKEN_ENV}"), f"${TOKEN_ENV}", None)
    path = default_token_path()
    _outside(path, repo)
    token = read_token_file(path)
    if token is None:
        token = _create_token_file(path)
        log.info("created a new token in %s", path)
    return Token(token, str(path), path)


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (constant time in the token)."""
    if not header:
        return False
    scheme, _, presented = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode("utf-8", "replace"), token.encode())


# --- Host and Origin ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _split_authority(authority: str) -> str:
    """The host name of `name[:port]` or `[v6][:port]`, lower case, without brackets or a final dot."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else ""
    if authority.count(":") > 1:  # a bare IPv6 address
        return authority
    return authority.partition(":")[0].rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Access:
    """What the guard lets through."""

    token: str | None  # None: no token asked (loopback binds only)
    names: frozenset[str]  # accepted Host names besides IP literals and loopback names
    origins: frozenset[str] = field(default_factory=frozenset)  # accepted Origins besides the request's host

    @classmethod
    def build(
        cls, *, bind_host: str, token: str | None, allow_hosts: Iterable[str] = (), allow_origins: Iterable[str] = ()
    ) -> Access:
        names = {_split_authority(h) for h in allow_hosts}
        bind = bind_host.strip("[]").lower()
        if not is_loopback(bind):
            if not _is_ip(bind):
                names.add(bind)
            else:  # the names this machine answers to on its interfaces
                names.update(n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n)
        origins = {o.rstrip("/").lower() for o in allow_origins}
        return cls(token=token, names=frozenset(n for n in names if n), origins=frozenset(origins))

    def host_ok(self, host: str | None) -> bool:
        if not host:
            return False
        name = _split_authority(host)
        return bool(name) and (_is_ip(name) or name in LOOPBACK_NAMES or name in self.names)

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True  # not a browser (or a same-origin GET): the token decides
        origin = origin.strip().rstrip("/").lower()
        if origin in self.origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or not host:
            return False  # "null" (a sandboxed page or a file) and anything malformed
        return parts.netloc == host.strip().lower()


# --- the ASGI guard ------------------------------------------------------------------------------


async def _refuse_request(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """An ASGI middleware that refuses, before the app sees it, a request with a foreign Host
    or Origin or without the token."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for k, v in scope.get("headers", []):
            key = k.decode("latin-1").lower()
            if key in ("host", "origin", "authorization") and key not in headers:
                headers[key] = v.decode("latin-1")
        host, origin = headers.get("host"), headers.get("origin")
        access = self.access
        if not access.host_ok(host):
            log.warning("refused a request for Host %r (DNS rebinding?); --allow-host NAME accepts a name", host)
            msg = f"Host {host!r} is not a name of this server; start it with --allow-host NAME to accept a name"
            await _refuse_request(send, 421, msg, [])
            return
        if not access.origin_ok(origin, host):
            log.warning("refused a request from Origin %r; --allow-origin ORIGIN accepts an origin", origin)
            msg = f"Origin {origin!r} may not call this server; start it with --allow-origin ORIGIN to accept one"
            await _refuse_request(send, 403, msg, [])
            return
        if access.token is not None and not bearer_ok(headers.get("authorization"), access.token):
            log.warning("refused a request without the right bearer token from %s", _peer(scope))
            msg = (
                "missing or wrong token: send the header 'Authorization: Bearer <token>' with the token "
                "that `autoexp-mcp serve --http` named when it started"
            )
            await _refuse_request(send, 401, msg, [(b"www-authenticate", b'Bearer realm="autoexp-mcp"')])
            return
        await self.app(scope, receive, send)


def _peer(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve without a token on anything but loopback."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"--no-token is allowed only on a loopback address (127.0.0.1, ::1, localhost), not {host}: anyone who "
            "can reach the port could run evals. Leave --no-token out (clients then send the token), or bind "
            "127.0.0.1 and reach it through an SSH tunnel or a reverse proxy."
        )
