"""Client registration: snippets per client and the merge into existing config files.

Every test uses a temporary home and repository; the real $HOME is never read or written.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp.clients import CLIENTS, CODEX_TOOL_TIMEOUT_S, Snippet, server_entry, snippet, write_config
from autoexp_mcp.errors import ConfigError
from autoexp_mcp.httpauth import TOKEN_ENV

CONTAINER = {"vscode": "servers", "codex": "mcp_servers"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    home = tmp_path / "home"
    home.mkdir()
    repo = tmp_path / "my repo"
    repo.mkdir()
    exe = tmp_path / "venv" / "bin" / "autoexp-mcp"
    environ = {"PATH": "/opt/tools/bin:/usr/bin", "HOME": str(home)}
    return {"home": home, "repo": repo, "exe": exe, "environ": environ}


def make(client: str, env: dict[str, Any], **kw: Any) -> Snippet:
    args = {"repo": env["repo"], "exe": env["exe"], "home": env["home"], "environ": env["environ"]}
    args.update(kw)
    return snippet(client, **args)


def parse(text: str, fmt: str) -> dict[str, Any]:
    return tomllib.loads(text) if fmt == "toml" else json.loads(text)


def read(s: Snippet) -> dict[str, Any]:
    return parse(s.config_path.read_text(encoding="utf-8"), s.format)


def servers(doc: dict[str, Any], client: str) -> dict[str, Any]:
    return doc[CONTAINER.get(client, "mcpServers")]


def existing_file(s: Snippet) -> str:
    """A config of the user's: another server, other top-level keys, (for TOML) a comment."""
    if s.format == "toml":
        return (
            'model = "o3"\n'
            "# my comment\n"
            "[features]\nweb_search_request = true\n\n"
            '[mcp_servers.other]\ncommand = "npx"\nargs = ["-y", "other-server"]\n'
        )
    key = CONTAINER.get(s.client, "mcpServers")
    doc: dict[str, Any] = {
        "theme": "dark",
        key: {"other": {"command": "npx", "args": ["-y", "other-server"]}},
    }
    if s.client == "vscode":
        doc["inputs"] = [{"id": "api-key", "type": "promptString"}]
    return json.dumps(doc, indent=4)


# --- snippets ----------------------------------------------------------------------------


def test_server_entry_uses_absolute_paths(env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(env["repo"])
    entry = server_entry(Path("bin/autoexp-mcp"), Path("."))
    assert entry["command"] == str(env["repo"] / "bin" / "autoexp-mcp")
    assert entry["args"] == ["serve", "--repo", str(env["repo"].resolve())]
    assert entry["env"] == {}


@pytest.mark.parametrize("client", CLIENTS)
def test_snippet_parses_and_holds_our_entry_with_absolute_paths(client: str, env: dict[str, Any]) -> None:
    s = make(client, env)
    entry = servers(parse(s.text, s.format), client)["autoexp"]
    assert entry["command"] == str(env["exe"])
    assert Path(entry["command"]).is_absolute()
    assert entry["args"] == ["serve", "--repo", str(env["repo"].resolve())]
    assert s.config_path.is_absolute()
    assert s.config_path.is_relative_to(env["home"]) or s.config_path.is_relative_to(env["repo"].resolve())
    assert s.notes


@pytest.mark.parametrize(
    ("client", "where"),
    [
        ("claude-code", ".mcp.json"),
        ("cursor", ".cursor/mcp.json"),
        ("vscode", ".vscode/mcp.json"),
        ("gemini", ".gemini/settings.json"),
    ],
)
def test_project_scoped_clients_write_into_the_repo(client: str, where: str, env: dict[str, Any]) -> None:
    assert make(client, env).config_path == env["repo"].resolve() / where


def test_vscode_entry_uses_servers_key_and_stdio_type(env: dict[str, Any]) -> None:
    doc = json.loads(make("vscode", env).text)
    assert list(doc) == ["servers"]
    assert doc["servers"]["autoexp"]["type"] == "stdio"


def test_codex_entry_pins_path_and_home_and_raises_the_tool_timeout(env: dict[str, Any]) -> None:
    s = make("codex", env)
    assert s.config_path == env["home"] / ".codex" / "config.toml"
    entry = tomllib.loads(s.text)["mcp_servers"]["autoexp"]
    assert entry["env"] == {"PATH": "/opt/tools/bin:/usr/bin", "HOME": str(env["home"])}
    assert entry["tool_timeout_sec"] == CODEX_TOOL_TIMEOUT_S
    assert "comments" in s.notes


def test_codex_honours_codex_home(env: dict[str, Any], tmp_path: Path) -> None:
    s = make("codex", env, environ={**env["environ"], "CODEX_HOME": str(tmp_path / "ch")})
    assert s.config_path == tmp_path / "ch" / "config.toml"


def test_claude_code_command_line_registers_the_same_server(env: dict[str, Any]) -> None:
    s = make("claude-code", env)
    assert s.command_line is not None
    assert shlex.split(s.command_line) == [
        "claude", "mcp", "add", "--scope", "project", "autoexp", "--",
        str(env["exe"]), "serve", "--repo", str(env["repo"].resolve()),
    ]  # fmt: skip
    assert json.loads(s.text)["mcpServers"]["autoexp"]["type"] == "stdio"


@pytest.mark.parametrize(
    ("platform", "parts"),
    [
        ("darwin", ("Library", "Application Support", "Claude")),
        ("win32", ("AppData", "Roaming", "Claude")),
        ("linux", (".config", "Claude")),
    ],
)
def test_claude_desktop_config_location_per_platform(
    platform: str, parts: tuple[str, ...], env: dict[str, Any]
) -> None:
    s = make("claude-desktop", env, platform=platform)
    assert s.config_path == env["home"].joinpath(*parts, "claude_desktop_config.json")


def test_claude_desktop_on_windows_prefers_the_msix_package_directory(env: dict[str, Any]) -> None:
    roaming = env["home"] / "AppData" / "Local" / "Packages" / "Claude_pzs8sxrjxfjjc" / "LocalCache" / "Roaming"
    roaming.mkdir(parents=True)
    s = make("claude-desktop", env, platform="win32")
    assert s.config_path == roaming / "Claude" / "claude_desktop_config.json"


def test_unknown_client_is_refused_with_the_list(env: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="claude-desktop"):
        make("notepad", env)


@pytest.mark.parametrize("name", ["", "auto exp", "a.b", "x" * 65])
def test_bad_server_name_is_refused(name: str, env: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="server name"):
        make("cursor", env, name=name)


# --- writing -----------------------------------------------------------------------------


@pytest.mark.parametrize("client", CLIENTS)
def test_write_into_empty_home_creates_the_file_with_one_entry(client: str, env: dict[str, Any]) -> None:
    s = make(client, env)
    assert not s.config_path.exists()
    assert write_config(s) is None
    doc = read(s)
    assert list(servers(doc, client)) == ["autoexp"]
    assert servers(doc, client)["autoexp"] == servers(parse(s.text, s.format), client)["autoexp"]


@pytest.mark.parametrize("client", CLIENTS)
def test_write_keeps_other_servers_and_keys_and_makes_a_backup(client: str, env: dict[str, Any]) -> None:
    s = make(client, env)
    s.config_path.parent.mkdir(parents=True, exist_ok=True)
    original = existing_file(s)
    s.config_path.write_text(original, encoding="utf-8")

    backup = write_config(s)

    assert backup is not None and backup.read_text(encoding="utf-8") == original
    assert backup.name.startswith(s.config_path.name + ".bak-")
    doc, before = read(s), parse(original, s.format)
    assert set(servers(doc, client)) == {"other", "autoexp"}
    assert servers(doc, client)["other"] == servers(before, client)["other"]
    for key in set(before) - {CONTAINER.get(client, "mcpServers")}:
        assert doc[key] == before[key]


@pytest.mark.parametrize("client", CLIENTS)
def test_second_write_leaves_exactly_one_entry_for_us(client: str, env: dict[str, Any]) -> None:
    s = make(client, env)
    s.config_path.parent.mkdir(parents=True, exist_ok=True)
    s.config_path.write_text(existing_file(s), encoding="utf-8")
    first = write_config(s)
    second = write_config(s)
    assert first is not None and second is not None and first != second
    names = list(servers(read(s), client))
    assert sorted(names) == ["autoexp", "other"]


@pytest.mark.parametrize("client", CLIENTS)
def test_unparseable_file_is_refused_and_left_byte_for_byte(client: str, env: dict[str, Any]) -> None:
    s = make(client, env)
    s.config_path.parent.mkdir(parents=True, exist_ok=True)
    broken = b'{"mcpServers": {"other": ,}}\n' if s.format == "json" else b"[mcp_servers.other\ncommand = \n"
    s.config_path.write_bytes(broken)
    with pytest.raises(ConfigError) as info:
        write_config(s)
    assert str(s.config_path.resolve()) in str(info.value)
    assert "left unchanged" in str(info.value)
    assert s.config_path.read_bytes() == broken
    assert sorted(p.name for p in s.config_path.parent.iterdir()) == [s.config_path.name]


def test_json_with_comments_is_refused_unchanged(env: dict[str, Any]) -> None:
    s = make("vscode", env)
    s.config_path.parent.mkdir(parents=True)
    text = '{\n  // my servers\n  "servers": {}\n}\n'
    s.config_path.write_text(text)
    with pytest.raises(ConfigError, match="by hand"):
        write_config(s)
    assert s.config_path.read_text() == text


def test_servers_key_that_is_not_a_table_is_refused_unchanged(env: dict[str, Any]) -> None:
    s = make("cursor", env)
    s.config_path.parent.mkdir(parents=True)
    s.config_path.write_text('{"mcpServers": ["not", "a", "table"]}')
    with pytest.raises(ConfigError, match="not a table"):
        write_config(s)
    assert json.loads(s.config_path.read_text()) == {"mcpServers": ["not", "a", "table"]}


def test_stale_entry_of_ours_is_replaced(env: dict[str, Any]) -> None:
    s = make("claude-desktop", env, platform="darwin")
    s.config_path.parent.mkdir(parents=True)
    stale = {"mcpServers": {"autoexp": {"command": "/old/autoexp-mcp", "args": ["serve", "--repo", "/old"]}}}
    s.config_path.write_text(json.dumps(stale))
    write_config(s)
    assert read(s)["mcpServers"]["autoexp"]["args"] == ["serve", "--repo", str(env["repo"].resolve())]


def test_symlinked_config_keeps_its_link_and_target_is_updated(env: dict[str, Any], tmp_path: Path) -> None:
    s = make("codex", env)
    real = tmp_path / "dotfiles" / "codex.toml"
    real.parent.mkdir()
    real.write_text('model = "o3"\n')
    s.config_path.parent.mkdir(parents=True)
    s.config_path.symlink_to(real)
    write_config(s)
    assert s.config_path.is_symlink()
    assert tomllib.loads(real.read_text())["model"] == "o3"
    assert "autoexp" in tomllib.loads(real.read_text())["mcp_servers"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_existing_file_mode_is_kept(env: dict[str, Any]) -> None:
    s = make("codex", env)
    s.config_path.parent.mkdir(parents=True)
    s.config_path.write_text('model = "o3"\n')
    s.config_path.chmod(0o600)
    write_config(s)
    assert stat.S_IMODE(s.config_path.stat().st_mode) == 0o600


def test_write_uses_the_given_name(env: dict[str, Any]) -> None:
    s = make("gemini", env, name="autoexp-sql")
    write_config(s, name="autoexp-sql")
    assert list(read(s)["mcpServers"]) == ["autoexp-sql"]
    with pytest.raises(ConfigError, match="no server named"):
        write_config(s)


@pytest.mark.parametrize(
    ("platform", "path", "expected"),
    [
        ("linux", "/a/bin:/usr/bin:/a/bin:/opt/x:/usr/bin", "/a/bin:/usr/bin:/opt/x"),
        ("linux", "/usr/bin", "/usr/bin"),
        ("win32", r"C:\py;C:\Windows;C:\py", r"C:\py;C:\Windows"),
    ],
)
def test_codex_path_is_deduplicated_keeping_order(env: dict[str, Any], platform: str, path: str, expected: str) -> None:
    s = make("codex", env, platform=platform, environ={**env["environ"], "PATH": path})
    assert tomllib.loads(s.text)["mcp_servers"]["autoexp"]["env"]["PATH"] == expected


# --- a server over HTTP (install --http URL) -------------------------------------------------------

URL = "https://gpu.example.com/mcp"
HTTP_CLIENTS = [c for c in CLIENTS if c != "claude-desktop"]
URL_KEY = {"gemini": "httpUrl"}


def http(client: str, env: dict[str, Any], url: str = URL, **kw: Any) -> Snippet:
    return make(client, env, url=url, **kw)


@pytest.mark.parametrize("client", HTTP_CLIENTS)
def test_http_entry_points_at_the_url_and_names_the_token_variable_not_the_token(
    client: str, env: dict[str, Any]
) -> None:
    s = http(client, env, environ={**env["environ"], TOKEN_ENV: "the-real-token-value-here"})
    entry = servers(parse(s.text, s.format), client)["autoexp"]
    assert entry[URL_KEY.get(client, "url")] == URL
    assert "command" not in entry and "args" not in entry
    assert "the-real-token-value-here" not in s.text + (s.command_line or "") + s.notes
    if client == "codex":
        assert entry["bearer_token_env_var"] == TOKEN_ENV
    elif client == "vscode":
        prompt = parse(s.text, s.format)["inputs"][0]
        assert entry["headers"]["Authorization"] == f"Bearer ${{input:{prompt['id']}}}" and prompt["password"] is True
    else:
        variable = f"${{env:{TOKEN_ENV}}}" if client == "cursor" else f"${{{TOKEN_ENV}}}"
        assert entry["headers"] == {"Authorization": f"Bearer {variable}"}
        assert TOKEN_ENV in s.notes


def test_http_entries_carry_the_transport_each_client_needs(env: dict[str, Any]) -> None:
    assert servers(json.loads(http("claude-code", env).text), "claude-code")["autoexp"]["type"] == "http"
    assert servers(json.loads(http("vscode", env).text), "vscode")["autoexp"]["type"] == "http"
    codex = tomllib.loads(http("codex", env).text)["mcp_servers"]["autoexp"]
    assert codex["tool_timeout_sec"] == CODEX_TOOL_TIMEOUT_S


def test_claude_code_http_command_line_keeps_the_variable_for_claude_to_expand(env: dict[str, Any]) -> None:
    s = http("claude-code", env)
    assert s.command_line is not None
    assert shlex.split(s.command_line) == [
        "claude", "mcp", "add", "--transport", "http", "--scope", "project", "autoexp", URL,
        "--header", f"Authorization: Bearer ${{{TOKEN_ENV}}}",
    ]  # fmt: skip
    assert f"'Authorization: Bearer ${{{TOKEN_ENV}}}'" in s.command_line, "single quotes: the shell leaves it alone"


def test_claude_desktop_has_no_http_entry_and_says_what_to_do(env: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="Connectors.*OAuth.*without --http"):
        http("claude-desktop", env)


@pytest.mark.parametrize("url", ["gpu.example.com:8765/mcp", "ftp://gpu.example.com/mcp", "http:///mcp", ""])
def test_a_url_that_is_not_a_server_url_is_refused(url: str, env: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="give the server's URL"):
        http("cursor", env, url=url)


def test_a_url_with_a_password_is_refused(env: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="header"):
        http("cursor", env, url="https://me:pw@gpu.example.com/mcp")


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://gpu.example.com:8765/mcp", True),
        ("http://10.0.0.5:8765/mcp", True),
        ("https://gpu.example.com/mcp", False),
        ("http://127.0.0.1:8765/mcp", False),
        ("http://localhost:8765/mcp", False),
    ],
)
def test_plain_http_to_another_machine_is_called_out(url: str, warned: bool, env: dict[str, Any]) -> None:
    assert ("in clear" in http("gemini", env, url=url).notes) is warned


def test_vscode_http_write_merges_the_token_prompt_once(env: dict[str, Any]) -> None:
    s = http("vscode", env)
    s.config_path.parent.mkdir(parents=True, exist_ok=True)
    s.config_path.write_text(existing_file(s), encoding="utf-8")
    write_config(s)
    write_config(s)
    doc = read(s)
    assert [i["id"] for i in doc["inputs"]] == ["api-key", "autoexp-token"]
    assert set(doc["servers"]) == {"other", "autoexp"} and doc["servers"]["autoexp"]["type"] == "http"


@pytest.mark.parametrize("client", HTTP_CLIENTS)
def test_an_http_entry_replaces_a_stdio_entry_of_the_same_name(client: str, env: dict[str, Any]) -> None:
    write_config(make(client, env))
    s = http(client, env)
    write_config(s)
    entry = servers(read(s), client)["autoexp"]
    assert entry == servers(parse(s.text, s.format), client)["autoexp"] and "command" not in entry
