"""The per-user key that authenticates what a restarted server reads back.

The eval runs the target's code with the server's uid and can write the repository, so
`.autoexp/state.json`, `.autoexp/protect.json` and the ledger's records carry an HMAC made
with a key kept outside the repository (the sandbox hides its directory from evals). A file
the server did not write with this key is refused, never guessed at.

The key file: `$AUTOEXP_KEY_FILE`, else `$XDG_CONFIG_HOME/autoexp-mcp/key`, else
`~/.config/autoexp-mcp/key`; 32 random bytes, created on first use (directory 0700, file
0600), refused when it is a symlink, not a regular file, not the user's, or open to others.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import GuardError

KEY_ENV = "AUTOEXP_KEY_FILE"
KEY_BYTES = 32
MAC_FIELD = "mac"
KEY_ID_FIELD = "key_id"  # which key signed: tells "another key" apart from "edited"
_KEY_ID_LABEL = b"autoexp-mcp key id"

_lock = threading.Lock()
_keys: dict[Path, bytes] = {}  # per process, per path: tests point AUTOEXP_KEY_FILE elsewhere


class KeyMissingError(GuardError):
    """Something signed is to be checked, but the key file does not exist."""


class Verdict(StrEnum):
    OK = "ok"
    MISSING = "missing"  # no mac at all
    FORGED = "forged"  # this key's id, but the mac does not match
    OTHER_KEY = "other key"  # signed with a key that is not this one
    NO_KEY = "no key"  # signed, but the key file is gone


def key_path() -> Path:
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser().absolute()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "autoexp-mcp" / "key"


def key_dir() -> Path:
    """The directory holding the key: the sandbox hides it from evals."""
    return key_path().parent


def _refuse(path: Path, why: str, fix: str) -> GuardError:
    return GuardError(f"the autoexp-mcp key file {path} {why}; {fix} (or set {KEY_ENV} to another path).")


@dataclass(frozen=True)
class PrivateFile:
    """How to refuse a secret file that is not safe to read, in the words of what it holds."""

    refuse: Callable[[str, str], GuardError]  # (why, fix) -> the error
    symlink_fix: str
    not_regular_fix: str
    owner_fix: str


def _check_private(path: Path, st: os.stat_result, how: PrivateFile) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise how.refuse("is a symlink", how.symlink_fix)
    if not stat.S_ISREG(st.st_mode):
        raise how.refuse("is not a regular file", how.not_regular_fix)
    if st.st_uid != os.getuid():
        raise how.refuse(f"belongs to uid {st.st_uid}, not to you ({os.getuid()})", how.owner_fix)
    if st.st_mode & 0o077:
        raise how.refuse(f"is open to group or others (mode {stat.S_IMODE(st.st_mode):o})", f"run `chmod 600 {path}`")


def read_private(path: Path, limit: int, how: PrivateFile) -> bytes | None:
    """At most `limit` bytes of a secret file, or None when there is none: only a regular file of
    this user's, mode 0600 or stricter, checked before and after the open (no symlink swapped in)."""
    try:
        _check_private(path, os.lstat(path), how)
        # O_NOFOLLOW: no symlink swapped in after the lstat; O_NONBLOCK: a FIFO does not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise how.refuse(f"cannot be read ({e.strerror})", "fix its permissions") from None
    try:
        _check_private(path, os.fstat(fd), how)
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _read(path: Path) -> bytes | None:
    """The key in `path`, or None when there is none; refuses an unsafe file."""
    how = PrivateFile(
        refuse=lambda why, fix: _refuse(path, why, fix),
        symlink_fix=f"replace it with the regular file it points to (`chmod 600 {path}`)",
        not_regular_fix="move it away so that a new key is created",
        owner_fix="use a key of your own",
    )
    data = read_private(path, KEY_BYTES + 1, how)
    if data is None:
        return None
    if len(data) != KEY_BYTES:
        raise _refuse(path, f"holds {len(data)} bytes, not {KEY_BYTES}", "restore the key file you had")
    return data


def _create(path: Path) -> bytes:
    """A new random key, published whole or not at all: written to a 0600 temp file (O_EXCL),
    then hard-linked into place, which fails if another process was first."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_BYTES)
    fd, tmp = tempfile.mkstemp(prefix=".key.", dir=path.parent)  # O_EXCL, mode 0600
    try:
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)
    except FileExistsError:
        theirs = _read(path)
        if theirs is None:
            raise _refuse(path, "appeared and vanished while it was being created", "start again") from None
        return theirs
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return key


def _key(create: bool) -> bytes:
    path = key_path()
    with _lock:
        key = _keys.get(path)
        if key is None:
            key = _read(path)
            if key is None:
                if not create:
                    raise KeyMissingError(f"the autoexp-mcp key file {path} does not exist.")
                key = _create(path)
            _keys[path] = key
        return key


def has_key() -> bool:
    """Whether the key file exists (an unsafe one still raises)."""
    try:
        _key(create=False)
    except KeyMissingError:
        return False
    return True


def mac(data: bytes) -> str:
    """HMAC-SHA256 of `data` with this user's key (created on first use), hex."""
    return hmac.new(_key(create=True), data, hashlib.sha256).hexdigest()


def check(data: bytes, mac_hex: str) -> bool:
    """Whether `mac_hex` is this key's mac of `data`. Never creates a key: raises
    KeyMissingError when there is none."""
    good = hmac.new(_key(create=False), data, hashlib.sha256).hexdigest()
    return hmac.compare_digest(good, mac_hex)


def key_id() -> str:
    """A public name of the key (not the key): tells a file signed by another key apart."""
    return hmac.new(_key(create=True), _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def verdict(data: bytes, mac_hex: object, signer: object) -> Verdict:
    """Check `mac_hex` (as read from a file: anything) over `data`, signed by key `signer`."""
    if not isinstance(mac_hex, str) or not mac_hex:
        return Verdict.MISSING
    try:
        if check(data, mac_hex):
            return Verdict.OK
        mine = hmac.new(_key(create=False), _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]
    except KeyMissingError:
        return Verdict.NO_KEY
    return Verdict.OTHER_KEY if signer != mine else Verdict.FORGED


# --- signed JSON objects (state.json, protect.json) -----------------------------------------


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _signed_bytes(purpose: str, body: dict[str, Any]) -> bytes:
    # The purpose keeps a mac made for one kind of file from passing as another's.
    return f"autoexp-mcp {purpose}\n".encode() + canonical(body)


def seal(payload: dict[str, Any], purpose: str) -> dict[str, Any]:
    """`payload` with the signer's key id and a mac over both."""
    body = {k: v for k, v in payload.items() if k not in (MAC_FIELD, KEY_ID_FIELD)}
    body[KEY_ID_FIELD] = key_id()
    return {**body, MAC_FIELD: mac(_signed_bytes(purpose, body))}


def unseal(payload: dict[str, Any], purpose: str) -> Verdict:
    """Whether `payload` (as parsed from a file) was sealed with this key for `purpose`."""
    body = {k: v for k, v in payload.items() if k != MAC_FIELD}
    return verdict(_signed_bytes(purpose, body), payload.get(MAC_FIELD), payload.get(KEY_ID_FIELD))


def explain(what: str, v: Verdict) -> str:
    """Why `what` is not trusted, naming the key file where the key is the question."""
    path = key_path()
    if v is Verdict.MISSING:
        return (
            f"{what} carries no mac, so it was not written by this server with this user's key (written by "
            "hand, by the eval, or by a version of autoexp-mcp from before files were signed)"
        )
    if v is Verdict.FORGED:
        return (
            f"{what} does not match its mac: it was not written by this server with this user's key (edited "
            "by hand, or by the eval)"
        )
    if v is Verdict.OTHER_KEY:
        return (
            f"{what} was signed with a different key than the one in {path} (another user's key, or the key "
            f"file was deleted or replaced since); if you still have that key, put it back at {path} (mode 600)"
        )
    return (
        f"{what} is signed, but the key file {path} does not exist (deleted, or HOME, XDG_CONFIG_HOME or "
        f"{KEY_ENV} differ from when it was written); put the key file back (mode 600)"
    )
