"""The YAML the built-in agent reads and edits, without a YAML library.

A subset, enough for settings files: block mappings by indentation, `key: value` lines,
block lists (`- value`, `- key: value`), one-line flow lists and mappings of scalars
(`[1, 2]`, `{a: 1}`), comments, `---`. Block scalars (`|`, `>`) are skipped. Anchors,
aliases, tags and multi-line plain scalars are refused by `load` (and never edited).

`scalar_spans` gives where each plain scalar stands (to edit a number in place); `load`
gives the plain Python value (to read a strategy file).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_KEY = r"(?:\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'#\-\[\]{},&*!|>%@`][^#\n]*?|-[^\s#\n][^#\n]*?)"
_LINE = re.compile(rf"^(?P<indent> *)(?P<dash>-(?: +|$))?(?:(?P<key>{_KEY}) *:(?: +|$))?(?P<rest>.*)$")
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_BLOCK_SCALAR = re.compile(r"[|>][-+]?\d*")


class YamlError(ValueError):
    pass


@dataclass(frozen=True)
class _Event:
    path: tuple[str | int, ...]
    raw: str | None  # the scalar's text; None where a block mapping or list starts
    span: tuple[int, int]
    line: int
    opens: str = ""  # "[" or "{" where a flow collection starts; "" where a block may follow


def key_of(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _strip_comment(rest: str) -> str:
    """`rest` without a trailing comment (a # after whitespace, outside quotes)."""
    quote = None
    for i, c in enumerate(rest):
        if quote:
            if c == quote:
                quote = None
        elif c in "\"'" and (i == 0 or rest[i - 1] in " [{,:"):
            quote = c
        elif c == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].rstrip()
    return rest.rstrip()


def _unquote(key: str) -> str:
    key = key.strip()
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'" else key


def _flow(path: tuple[str | int, ...], rest: str, at: int, line: int) -> Iterator[_Event]:
    """The scalars of a one-line flow list or mapping (no nesting)."""
    inner = rest[1:-1]
    if any(c in inner for c in "[]{}") or not rest.endswith("]" if rest[0] == "[" else "}"):
        raise YamlError(f"line {line}: nested or multi-line flow collections are not supported")
    yield _Event(path, None, (at, at), line, rest[0])
    pos = at + 1
    for k, item in enumerate(inner.split(",")):
        s = pos + len(item) - len(item.lstrip())
        text = item.strip()
        pos += len(item) + 1
        if not text:
            continue
        if rest[0] == "[":
            yield _Event((*path, k), text, (s, s + len(text)), line)
        else:
            name, colon, value = text.partition(":")
            if not colon:
                raise YamlError(f"line {line}: expected 'key: value' in {rest!r}")
            vs = s + len(name) + 1 + len(value) - len(value.lstrip())
            yield _Event((*path, _unquote(name)), value.strip(), (vs, vs + len(value.strip())), line)


def _events(text: str) -> Iterator[_Event]:
    stack: list[tuple[int, tuple[str | int, ...]]] = []  # (indent, path) of open blocks
    counters: dict[tuple[str | int, ...], int] = {}
    block_scalar_indent: int | None = None
    offset = 0
    for n, raw_line in enumerate(text.splitlines(keepends=True), 1):
        start = offset
        offset += len(raw_line)
        body = raw_line.rstrip("\r\n")
        if "\t" in body[: len(body) - len(body.lstrip())]:
            raise YamlError(f"line {n}: a tab in the indentation (YAML indents with spaces)")
        indent = len(body) - len(body.lstrip(" "))
        if block_scalar_indent is not None:
            if not body.strip() or indent > block_scalar_indent:
                continue
            block_scalar_indent = None
        stripped = body.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "...") or stripped.startswith("%"):
            continue
        m = _LINE.match(body)
        assert m is not None  # the pattern matches any line
        rest_at = start + m.start("rest")
        rest = _strip_comment(m.group("rest"))
        if m.group("dash"):
            # Deeper blocks end here, and so does the previous item of this same list.
            while stack and (stack[-1][0] > indent or (stack[-1][0] == indent and isinstance(stack[-1][1][-1], int))):
                stack.pop()
            parent = stack[-1][1] if stack else ()
            k = counters.get(parent, 0)
            counters[parent] = k + 1
            path: tuple[str | int, ...] = (*parent, k)
            if m.group("key") is None:
                if rest:
                    yield from _scalar(path, rest, rest_at, n)
                continue
            stack.append((indent, path))  # a mapping inside the list: its keys sit deeper
            yield _Event(path, None, (rest_at, rest_at), n, "{")
            indent = m.start("key")
        elif m.group("key") is None:
            raise YamlError(f"line {n}: expected 'key: value' or '- item', got {stripped!r}")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(stack[-1][1] if stack else ()), _unquote(m.group("key")))
        if not rest:
            stack.append((indent, path))
            yield _Event(path, None, (rest_at, rest_at), n)
        elif _BLOCK_SCALAR.fullmatch(rest):
            block_scalar_indent = indent
            yield _Event(path, "", (rest_at, rest_at), n)
        else:
            yield from _scalar(path, rest, rest_at, n)


def _scalar(path: tuple[str | int, ...], rest: str, at: int, line: int) -> Iterator[_Event]:
    if rest[0] in "[{":
        yield from _flow(path, rest, at, line)
    else:
        yield _Event(path, rest, (at, at + len(rest)), line)


def scalar_spans(text: str) -> list[tuple[str, tuple[int, int]]]:
    """(key, span) of every plain (unquoted) scalar, in file order."""
    return [
        (key_of(e.path), e.span)
        for e in _events(text)
        if e.raw and e.raw[0] not in "\"'&*!" and not _BLOCK_SCALAR.fullmatch(e.raw)
    ]


def scalar(raw: str, line: int = 0) -> Any:
    """A scalar's value by YAML 1.2's core schema (quoted: a string)."""
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if raw[:1] in ("&", "*", "!"):
        raise YamlError(f"line {line}: anchors, aliases and tags are not supported: {raw!r}")
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~"):
        return None
    if _INT.fullmatch(raw):
        return int(raw)
    if _FLOAT.fullmatch(raw):
        return float(raw)
    return raw


def load(text: str) -> Any:
    """The document as dicts, lists and scalars (an empty document: an empty dict)."""
    root: dict[str, Any] = {}
    containers: dict[tuple[str | int, ...], Any] = {(): root}
    events = list(_events(text))
    for i, e in enumerate(events):
        parent = containers.get(e.path[:-1])
        if parent is None:
            raise YamlError(f"line {e.line}: {key_of(e.path)} is not inside a mapping or list")
        value: Any
        if e.opens:
            value = [] if e.opens == "[" else {}
        elif e.raw is None:  # a block follows, or nothing (null)
            nxt = events[i + 1].path if i + 1 < len(events) else ()
            inside = len(nxt) == len(e.path) + 1 and nxt[:-1] == e.path
            value = None if not inside else [] if isinstance(nxt[-1], int) else {}
        else:
            value = scalar(e.raw, e.line) if e.raw else ""
        if isinstance(e.path[-1], int):
            if not isinstance(parent, list):
                raise YamlError(
                    f"line {e.line}: a list item where {key_of(e.path[:-1]) or 'the document'} is a mapping"
                )
            parent.append(value)
        else:
            if not isinstance(parent, dict):
                raise YamlError(f"line {e.line}: a key inside {key_of(e.path[:-1])}, which is a list")
            parent[e.path[-1]] = value
        if isinstance(value, dict | list):
            containers[e.path] = value
    return root
