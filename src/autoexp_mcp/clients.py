"""Registering the server with MCP clients: the snippet for each client and a careful merge.

`snippet()` is pure (apart from looking for a packaged Claude Desktop on Windows): it says
where the entry goes and what to paste. `write_config()` is the only function that writes; it
merges our one entry into the client's file, keeps everything else, makes a backup first and
refuses to touch a file it cannot parse.

Formats, as documented by each client:
- Claude Code: project scope `.mcp.json` with `mcpServers` (entries carry `"type": "stdio"`, as
  `claude mcp add --scope project` writes them), or the `claude mcp add` command line.
- Claude Desktop: `claude_desktop_config.json`, `mcpServers`, in a per-OS directory.
- Codex: `~/.codex/config.toml` (`$CODEX_HOME`), table `[mcp_servers.NAME]` with `command`,
  `args`, `env`, `tool_timeout_sec`. Codex passes only a short list of variables to servers.
- Cursor: `.cursor/mcp.json` in the project, `mcpServers`.
- VS Code: `.vscode/mcp.json` in the workspace, top-level `servers`, entries need `"type"`.
- Gemini CLI: `.gemini/settings.json` in the project, `mcpServers` (`command/args/env/cwd/timeout`).

With `url` (a server started with `serve --http`), the entry points at the URL instead and
sends the token in `Authorization: Bearer`, read from `$AUTOEXP_HTTP_TOKEN` on the client's
machine by each client's own mechanism, so no config file holds the token: `${VAR}` in
Claude Code's `.mcp.json` and Gemini's settings, `${env:VAR}` in Cursor's, Codex's
`bearer_token_env_var`, and a password prompt (`${input:ID}`) in VS Code. Claude Desktop
adds remote servers only as connectors that sign in with OAuth, so it gets no HTTP entry.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import tomli_w

from .errors import ConfigError
from .guard import atomic_write_file
from .httpauth import TOKEN_ENV, is_loopback

CLIENTS: tuple[str, ...] = ("claude-code", "claude-desktop", "codex", "cursor", "vscode", "gemini")

DEFAULT_NAME = "autoexp"
# Codex cuts a tool call after 60 s by default; run_eval waits about 45 s, so leave headroom.
CODEX_TOOL_TIMEOUT_S = 120

# Codex's own rule for server names (letters, digits, '_' and '-'); the other clients accept it.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

Format = Literal["json", "toml"]


@dataclass(frozen=True)
class Snippet:
    client: str
    config_path: Path  # where the entry goes, absolute
    format: Format
    text: str  # the exact snippet to paste (a complete document with only our entry)
    command_line: str | None  # a CLI that registers the server instead, when the client has one
    notes: str  # one or two lines for the user


def _check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"server name {name!r} must be 1-64 letters, digits, '_' or '-' (Codex rejects other names)")
    return name


def server_entry(exe: Path, repo: Path, name: str = DEFAULT_NAME) -> dict[str, Any]:
    """The client-neutral entry: absolute executable, `serve --repo <absolute repo>`, no env."""
    _check_name(name)
    return {
        "command": str(Path(exe).absolute()),
        "args": ["serve", "--repo", str(Path(repo).resolve())],
        "env": {},
    }


def _claude_desktop_dir(home: Path, platform: str) -> Path:
    if platform == "darwin":
        return home / "Library" / "Application Support" / "Claude"
    if platform == "win32":
        # The MSIX build (the default Windows installer) reads a virtualised copy of
        # %APPDATA%\Claude and ignores the real one; prefer it when it is installed.
        packages = home / "AppData" / "Local" / "Packages"
        for pkg in sorted(packages.glob("Claude_*")) if packages.is_dir() else []:
            roaming = pkg / "LocalCache" / "Roaming"
            if roaming.is_dir():
                return roaming / "Claude"
        return home / "AppData" / "Roaming" / "Claude"
    return home / ".config" / "Claude"


def _dedup_path(path: str, sep: str) -> str:
    """PATH without repeated entries, first occurrence kept (the one that wins a lookup)."""
    return sep.join(dict.fromkeys(path.split(sep)))


def _quote_command(argv: list[str], platform: str) -> str:
    if platform == "win32":
        return subprocess.list2cmdline(argv)
    return shlex.join(argv)


def snippet(
    client: str,
    *,
    repo: Path,
    exe: Path,
    home: Path,
    platform: str = sys.platform,
    name: str = DEFAULT_NAME,
    environ: Mapping[str, str] | None = None,
    url: str | None = None,
) -> Snippet:
    """What to add to `client`'s config so that it starts this server for `repo` (or, with
    `url`, connects to a server started with `serve --http`).

    `environ` (default: the current environment) supplies the PATH and HOME written into the
    Codex entry and `CODEX_HOME`; nothing else reads the environment.
    """
    environ = os.environ if environ is None else environ
    repo = Path(repo).resolve()
    home = Path(home)
    if client not in CLIENTS:
        raise ConfigError(f"unknown client {client!r}: choose one of {', '.join(CLIENTS)}")
    if url is not None:
        return http_snippet(client, url=url, repo=repo, home=home, platform=platform, name=name, environ=environ)
    entry = server_entry(exe, repo, name)
    notes: str
    command_line: str | None = None

    if client == "codex":
        codex_home = Path(environ["CODEX_HOME"]) if environ.get("CODEX_HOME") else home / ".codex"
        # Codex starts servers with a short allow-list of variables. Pin PATH and HOME as they
        # are now, so the server (and the eval it runs) finds the same tools as this shell.
        env = {k: environ[k] for k in ("PATH", "HOME") if environ.get(k)}
        if "PATH" in env:
            env["PATH"] = _dedup_path(env["PATH"], ";" if platform == "win32" else ":")
        doc: dict[str, Any] = {
            "mcp_servers": {
                name: {
                    "command": entry["command"],
                    "args": entry["args"],
                    "tool_timeout_sec": CODEX_TOOL_TIMEOUT_S,
                    "env": env,
                }
            }
        }
        return Snippet(
            client=client,
            config_path=codex_home / "config.toml",
            format="toml",
            text=tomli_w.dumps(doc),
            command_line=None,
            notes=(
                "Restart Codex and check with /mcp. Writing config.toml does not keep its comments "
                "(a backup is made first). Codex shows no prompts: the loop rules come from the server."
            ),
        )

    if client == "claude-code":
        path = repo / ".mcp.json"
        doc = {"mcpServers": {name: {"type": "stdio", **entry}}}
        argv = ["claude", "mcp", "add", "--scope", "project", name, "--", entry["command"], *entry["args"]]
        command_line = _quote_command(argv, platform)
        notes = (
            "Run the command line from the repository, or write .mcp.json; Claude Code asks you to "
            "approve project servers on first start (check with /mcp)."
        )
    elif client == "claude-desktop":
        path = _claude_desktop_dir(home, platform) / "claude_desktop_config.json"
        doc = {"mcpServers": {name: entry}}
        notes = "Quit Claude Desktop completely and start it again (closing the window is not enough)."
        if platform not in ("darwin", "win32"):
            notes += " Claude Desktop has no official Linux build; this is where Linux builds look."
    elif client == "cursor":
        path = repo / ".cursor" / "mcp.json"
        doc = {"mcpServers": {name: entry}}
        notes = "Restart Cursor, then enable the server under Settings > MCP."
    elif client == "vscode":
        path = repo / ".vscode" / "mcp.json"
        doc = {"servers": {name: {"type": "stdio", **entry}}}
        notes = (
            "Open .vscode/mcp.json and press Start on the server, then use it from Chat in Agent mode. "
            "A mcp.json with comments cannot be merged automatically: paste the entry by hand."
        )
    else:  # gemini
        path = repo / ".gemini" / "settings.json"
        doc = {"mcpServers": {name: entry}}
        notes = "Start Gemini CLI in the repository and check with /mcp."

    return Snippet(
        client=client,
        config_path=path,
        format="json",
        text=json.dumps(doc, indent=2) + "\n",
        command_line=command_line,
        notes=notes,
    )


# --- a server over HTTP ----------------------------------------------------------------------

BEARER = f"Bearer ${{{TOKEN_ENV}}}"  # the header value, for clients that expand ${VAR}


def check_url(url: str) -> str:
    """A server URL as `serve --http` prints it (http or https, a host, the /mcp path)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"--http {url!r}: give the server's URL, e.g. http://127.0.0.1:8765/mcp (what `autoexp-mcp serve "
            "--http` prints) or https://gpu.example.com/mcp behind a TLS proxy"
        )
    if parts.username or parts.password:
        raise ConfigError(f"--http {url!r}: no user or password in the URL; the token travels in a header")
    return url.strip()


def _token_note(url: str) -> str:
    note = (
        f"Set {TOKEN_ENV} to the server's token in the environment the client starts from (the server's "
        "machine has it in the file `autoexp-mcp serve --http` names, by default ~/.config/autoexp-mcp/http-token)."
    )
    parts = urlsplit(url)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        note += " This URL is plain http to another machine: the token would cross the network in clear; use TLS."
    return note


def http_snippet(
    client: str,
    *,
    url: str,
    repo: Path,
    home: Path,
    platform: str = sys.platform,
    name: str = DEFAULT_NAME,
    environ: Mapping[str, str] | None = None,
) -> Snippet:
    """What to add to `client`'s config so that it connects to the server at `url`, sending the
    token from `$AUTOEXP_HTTP_TOKEN` (never written into the file)."""
    _check_name(name)
    url = check_url(url)
    environ = os.environ if environ is None else environ
    token_note = _token_note(url)
    command_line: str | None = None
    doc: dict[str, Any]
    if client == "claude-desktop":
        raise ConfigError(
            "Claude Desktop adds remote servers only as connectors (Settings > Connectors), which sign in with "
            "OAuth and cannot send this server's token. Run the server on the same machine over stdio "
            "(install --client claude-desktop without --http), or use a client that takes a URL and a header "
            "(claude-code, codex, cursor, vscode, gemini)."
        )
    if client == "codex":
        codex_home = Path(environ["CODEX_HOME"]) if environ.get("CODEX_HOME") else home / ".codex"
        doc = {
            "mcp_servers": {
                name: {"url": url, "bearer_token_env_var": TOKEN_ENV, "tool_timeout_sec": CODEX_TOOL_TIMEOUT_S}
            }
        }
        return Snippet(
            client=client,
            config_path=codex_home / "config.toml",
            format="toml",
            text=tomli_w.dumps(doc),
            command_line=None,
            notes=f"{token_note} Restart Codex and check with /mcp.",
        )
    if client == "claude-code":
        path = repo / ".mcp.json"
        doc = {"mcpServers": {name: {"type": "http", "url": url, "headers": {"Authorization": BEARER}}}}
        argv = ["claude", "mcp", "add", "--transport", "http", "--scope", "project", name, url]
        command_line = _quote_command([*argv, "--header", f"Authorization: {BEARER}"], platform)
        notes = f"{token_note} Claude Code expands ${{{TOKEN_ENV}}} when it reads .mcp.json; check with /mcp."
    elif client == "cursor":
        path = repo / ".cursor" / "mcp.json"
        doc = {"mcpServers": {name: {"url": url, "headers": {"Authorization": f"Bearer ${{env:{TOKEN_ENV}}}"}}}}
        notes = f"{token_note} Restart Cursor, then enable the server under Settings > MCP."
    elif client == "vscode":
        path = repo / ".vscode" / "mcp.json"
        prompt_id = f"{name}-token"
        doc = {
            "servers": {
                name: {"type": "http", "url": url, "headers": {"Authorization": f"Bearer ${{input:{prompt_id}}}"}}
            },
            "inputs": [
                {
                    "type": "promptString",
                    "id": prompt_id,
                    "description": "autoexp-mcp token (in the file `autoexp-mcp serve --http` names)",
                    "password": True,
                }
            ],
        }
        notes = "VS Code asks for the token when it starts the server and keeps it in its secret storage."
    else:  # gemini
        path = repo / ".gemini" / "settings.json"
        doc = {"mcpServers": {name: {"httpUrl": url, "headers": {"Authorization": BEARER}}}}
        notes = f"{token_note} Start Gemini CLI in the repository and check with /mcp."
    return Snippet(
        client=client,
        config_path=path,
        format="json",
        text=json.dumps(doc, indent=2) + "\n",
        command_line=command_line,
        notes=notes,
    )


# --- writing -----------------------------------------------------------------------------


def _parse(text: str, fmt: Format) -> Any:
    if fmt == "toml":
        return tomllib.loads(text)
    return json.loads(text) if text.strip() else {}


def _dump(doc: dict[str, Any], fmt: Format) -> str:
    if fmt == "toml":
        return tomli_w.dumps(doc)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _backup(path: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.bak-{stamp}-{n}")
        n += 1
    shutil.copy2(path, backup)
    return backup


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_config(s: Snippet, *, name: str = DEFAULT_NAME) -> Path | None:
    """Merge the snippet's entry `name` into `s.config_path`; return the backup path, if any.

    Other servers and other top-level keys are kept; an existing entry `name` is replaced.
    A file that does not parse is left untouched and raises ConfigError.
    """
    ours = _parse(s.text, s.format)
    container_key = next(iter(ours))
    entry = ours[container_key].get(name)
    if entry is None:
        raise ConfigError(f"the {s.client} snippet has no server named {name!r}")

    # Follow a symlinked config (dotfile managers) so the link itself survives the rename.
    path = Path(os.path.realpath(s.config_path))
    if path.exists() and not path.is_file():
        raise ConfigError(f"{path} exists but is not a regular file; remove it or add the entry by hand")
    existed = path.is_file()
    if existed:
        raw = path.read_bytes()
        try:
            doc = _parse(raw.decode("utf-8"), s.format)
        except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(
                f"{path}: cannot parse it as {s.format.upper()} ({e}); it was left unchanged. "
                f"Fix the file, or add this entry by hand:\n{s.text}"
            ) from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the top level is not an object; it was left unchanged. Add the entry by hand.")
        servers = doc.get(container_key, {})
        if not isinstance(servers, dict):
            raise ConfigError(
                f"{path}: {container_key!r} is not a table of servers; it was left unchanged. "
                "Fix it or add the entry by hand."
            )
        mode = path.stat().st_mode & 0o7777
    else:
        doc, servers, mode = {}, {}, _default_mode()

    merged = {**servers, name: entry}
    doc[container_key] = merged
    for key, items in ours.items():  # VS Code's `inputs`: ours replace those with the same id
        if key != container_key and isinstance(items, list):
            theirs = doc.get(key, [])
            if not isinstance(theirs, list):
                raise ConfigError(f"{path}: {key!r} is not a list; it was left unchanged. Add the entry by hand.")
            ids = {i.get("id") for i in items if isinstance(i, dict)}
            doc[key] = [i for i in theirs if not (isinstance(i, dict) and i.get("id") in ids)] + items
    backup = _backup(path) if existed else None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_file(path, _dump(doc, s.format).encode("utf-8"), mode)
    return backup
