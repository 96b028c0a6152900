"""The numbers in a target file, found in its text and changed in place.

The built-in agent edits only numbers, and edits them where they stand: comments, order and
formatting stay, so a diff is one value on one line and a description can name its key.
Four formats, told by the file name: JSON, YAML (a subset, see yamlish.py), TOML, and plain
`key = value` config files (INI-like, `#` and `;` comments, `[section]` headers).

A key is the dotted path of the value (`ttl_s.api`, `[section]` names included); list items
are numbered (`sizes[0]`). A key that occurs twice keeps only its first place.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]

from . import yamlish

FORMATS = ("json", "yaml", "toml", "kv")
SIGNIFICANT_DIGITS = 4  # a moved float is written with this many significant digits

# A decimal number standing alone (TOML and YAML 1.2 spellings without underscores).
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")


class TargetFormatError(ValueError):
    """The target's text cannot be read as its format."""


@dataclass(frozen=True)
class Number:
    key: str
    start: int  # span of the literal in the text
    end: int
    literal: str
    value: float
    integer: bool  # written without a point or exponent: it stays an integer


def format_of(name: str) -> str:
    """The format of a target, from its file name: json, yaml, toml, or kv (anything else)."""
    lower = name.lower()
    if lower.endswith(".json"):
        return "json"
    if lower.endswith((".yaml", ".yml")):
        return "yaml"
    if lower.endswith(".toml"):
        return "toml"
    return "kv"


def find_numbers(text: str, fmt: str) -> list[Number]:
    """Every number of `text` with its key and place, in file order (first place of each key)."""
    if fmt == "json":
        found = _json_numbers(text)
    elif fmt == "yaml":
        found = [_number(k, s, text) for k, s in yamlish.scalar_spans(text)]
    elif fmt == "toml":
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise TargetFormatError(f"not valid TOML: {e}") from None
        found = _line_numbers(text, toml=True)
    elif fmt == "kv":
        found = _line_numbers(text, toml=False)
    else:
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
    seen: set[str] = set()
    out = []
    for n in found:
        if n is not None and n.key not in seen:
            seen.add(n.key)
            out.append(n)
    return out


def _number(key: str, span: tuple[int, int], text: str) -> Number | None:
    literal = text[span[0] : span[1]]
    if not _NUMBER_RE.fullmatch(literal):
        return None
    value = float(literal)
    if not math.isfinite(value):
        return None
    return Number(key, span[0], span[1], literal, value, not re.search(r"[.eE]", literal))


def render(value: float, integer: bool) -> str:
    """`value` as a literal every format reads back as the same kind of number: an integer
    without a point; a float with one (and a signed exponent, which YAML 1.1 readers need)."""
    if integer:
        return str(round(value))
    text = f"{value:.{SIGNIFICANT_DIGITS}g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        if "." not in mantissa:
            mantissa += ".0"
        return f"{mantissa}e{exp[0]}{exp[1:].lstrip('0') or '0'}" if exp[0] in "+-" else f"{mantissa}e+{exp}"
    return text if "." in text else text + ".0"


def rounded(value: float, integer: bool) -> float:
    """The value `render` writes, read back."""
    return float(render(value, integer))


def replace(text: str, changes: list[tuple[Number, float]]) -> str:
    """`text` with each number's literal replaced by its new value (spans from the same text)."""
    out = text
    for n, value in sorted(changes, key=lambda c: c[0].start, reverse=True):
        out = out[: n.start] + render(value, n.integer) + out[n.end :]
    return out


# --- JSON --------------------------------------------------------------------------------


def _json_numbers(text: str) -> list[Number | None]:
    try:
        json.loads(text)
    except ValueError as e:
        raise TargetFormatError(f"not valid JSON: {e}") from None
    found: list[Number | None] = []
    _JsonWalk(text, found).value(_skip_ws(text, 0), "")
    return found


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


class _JsonWalk:
    """A walk over text that json.loads accepted, recording where each number stands."""

    def __init__(self, text: str, found: list[Number | None]) -> None:
        self.text, self.found = text, found

    def value(self, i: int, key: str) -> int:
        t = self.text
        c = t[i]
        if c == "{":
            return self._object(i, key)
        if c == "[":
            return self._array(i, key)
        if c == '"':
            return scanstring(t, i + 1)[1]
        m = _JSON_NUMBER.match(t, i)
        if m:
            self.found.append(_number(key, m.span(), t))
            return m.end()
        for word in ("true", "false", "null"):
            if t.startswith(word, i):
                return i + len(word)
        raise TargetFormatError(f"unexpected character {c!r} at offset {i}")

    def _object(self, i: int, key: str) -> int:
        t = self.text
        i = _skip_ws(t, i + 1)
        while t[i] != "}":
            name, i = scanstring(t, _skip_ws(t, i) + 1)
            i = _skip_ws(t, i) + 1  # past the colon
            i = _skip_ws(t, self.value(_skip_ws(t, i), f"{key}.{name}" if key else name))
            if t[i] == ",":
                i = _skip_ws(t, i + 1)
        return i + 1

    def _array(self, i: int, key: str) -> int:
        t = self.text
        i = _skip_ws(t, i + 1)
        k = 0
        while t[i] != "]":
            i = _skip_ws(t, self.value(i, f"{key}[{k}]"))
            k += 1
            if t[i] == ",":
                i = _skip_ws(t, i + 1)
        return i + 1


# --- TOML and key = value ------------------------------------------------------------------

_KEY = r"(?:[A-Za-z0-9_\-]+|\"[^\"\n]*\"|'[^'\n]*')"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_TABLE = re.compile(rf"^\s*\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:[#;].*)?$")
_PAIR = re.compile(rf"^\s*({_DOTTED})\s*=\s*")
_INLINE_PAIR = re.compile(rf"({_DOTTED})\s*=\s*({_NUMBER})\s*(?=[,}}])")
_VALUE_END = re.compile(r"\s*(?:[#;].*)?$")


def _key_text(dotted: str) -> str:
    parts = re.findall(_KEY, dotted)
    return ".".join(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def _line_numbers(text: str, *, toml: bool) -> list[Number | None]:
    found: list[Number | None] = []
    table = ""
    offset = 0
    in_multiline: str | None = None
    for line in text.splitlines(keepends=True):
        start, body = offset, line.rstrip("\r\n")
        offset += len(line)
        if in_multiline is not None:  # inside a TOML multi-line string: nothing to read
            if in_multiline in body:
                in_multiline = None
            continue
        stripped = body.strip()
        if not stripped or stripped[0] in "#;":
            continue
        m = _TABLE.match(body)
        if m:
            table = _key_text(m.group(1))
            continue
        m = _PAIR.match(body)
        if not m:
            continue
        key = _key_text(m.group(1))
        full = f"{table}.{key}" if table else key
        rest = body[m.end() :]
        for quote in ('"""', "'''"):
            if toml and rest.startswith(quote) and rest.count(quote) == 1:
                in_multiline = quote
        v = _NUMBER_RE.match(rest)
        if v and _VALUE_END.match(rest, v.end()):
            found.append(_number(full, (start + m.end(), start + m.end() + v.end()), text))
        elif toml and rest.startswith("{") and '"' not in rest and "'" not in rest:
            for p in _INLINE_PAIR.finditer(rest):
                s = start + m.end() + p.start(2)
                found.append(_number(f"{full}.{_key_text(p.group(1))}", (s, s + len(p.group(2))), text))
    return found
