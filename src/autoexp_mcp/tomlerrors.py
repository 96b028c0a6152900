"""Validation errors of autoexp.toml in TOML words, not pydantic's.

Each error names the key as the user wrote it (`[budget].max_experiments`,
`[[metric]] #2 .direction`, `[[stage]] #1 [stage.budget].max_experiments`), says what is wrong
in TOML terms (a table, an array of tables, a string in quotes, true or false) and, where there
is one, the fix. The schema itself is walked to tell tables from keys, so this module knows
nothing about autoexp's own sections.
"""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

_TYPE_WORDS = {
    "string_type": "a string in quotes",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "tuple_type": "an array",
    "list_type": "an array",
}
_TABLE_TYPES = ("model_type", "dict_type", "model_attributes_type")
_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models(a)]


def _is_array(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (tuple, list):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_array(a) for a in get_args(annotation))
    return False


def _choices(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    for a in get_args(annotation):
        if found := _choices(a):
            return found
    return ()


def _kind(field: FieldInfo | None) -> str:
    """ "tables" (an array of tables), "table" or "key"."""
    if field is None or not _models(field.annotation):
        return "key"
    return "tables" if _is_array(field.annotation) else "table"


def _toml(value: Any) -> str:
    """A value as TOML shows it (strings in double quotes), or what it is when it is a container."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array of tables" if value and all(isinstance(v, dict) for v in value) else "an array"
    return str(value)


def _number(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


@dataclass(frozen=True)
class _Where:
    head: str  # the enclosing table as the user wrote it ("" at the top level)
    table: str  # its dotted TOML name ("" at the top level)
    parent: type[BaseModel] | None  # its schema (None inside an unknown key)
    key: str | None  # the key the error is about (None: the enclosing table itself)
    item: int | None = None  # the entry of an array of plain values

    @property
    def field(self) -> FieldInfo | None:
        if self.parent is None or self.key is None:
            return None
        return self.parent.model_fields.get(self.key)

    @property
    def name(self) -> str:
        """The key's dotted TOML name (`stage.metric`)."""
        return f"{self.table}.{self.key}" if self.table else str(self.key)

    def shown(self, kind: str | None = None) -> str:
        """The key as the user wrote it, after the enclosing tables."""
        kind = kind or _kind(self.field)
        if self.key is None:
            return self.head
        if kind == "tables":
            own = f"[[{self.name}]]"
        elif kind == "table":
            own = f"[{self.name}]"
        elif not self.head:
            own = self.key
        else:
            return f"{self.head}{'.' if self.head.endswith(']') else ' .'}{self.key}" + self._entry()
        return f"{self.head} {own}".strip() + self._entry()

    def _entry(self) -> str:
        return f" entry #{self.item + 1}" if self.item is not None else ""


def _where(loc: Sequence[int | str], root: type[BaseModel]) -> _Where:
    head, table, model = "", "", root
    i = 0
    while i < len(loc):
        key = loc[i]
        if not isinstance(key, str):  # an index pydantic gives without an array before it
            i += 1
            continue
        field = model.model_fields.get(key) if model is not None else None
        subs = _models(field.annotation) if field is not None else []
        name = f"{table}.{key}" if table else key
        nxt = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(nxt, int):
            if not subs:  # an entry of an array of plain values
                return _Where(head, table, model, key, nxt)
            head, table, model = f"{head} [[{name}]] #{nxt + 1}".strip(), name, subs[0]
            i += 2
            continue
        if nxt is None:
            return _Where(head, table, model, key)
        head, table = f"{head} [{name}]".strip(), name
        model = subs[0] if subs else None  # type: ignore[assignment]
        i += 1
    return _Where(head, table, model, None)


def _suggest(where: _Where) -> str:
    if where.parent is None or where.key is None:
        return ""
    close = difflib.get_close_matches(where.key, list(where.parent.model_fields), n=1, cutoff=0.6)
    if not close:
        return ""
    other = _Where("", where.table, where.parent, close[0])
    return f" (did you mean {other.shown()}?)"


def _hint(field: FieldInfo | None) -> str:
    if field is None:
        return ""
    if field.description:
        return f" ({field.description})"
    choices = _choices(field.annotation)
    return f" (one of {', '.join(_toml(c) for c in choices)})" if choices else ""


def describe(err: Any, root: type[BaseModel]) -> str:
    """One pydantic error (an item of `ValidationError.errors()`) as a line in TOML words."""
    where = _where(err.get("loc", ()), root)
    kind, t = _kind(where.field), err["type"]
    value, ctx = err.get("input"), err.get("ctx") or {}
    path = where.shown()
    got = f", got {_toml(value)}"
    if t == "extra_forbidden":
        if isinstance(value, dict):
            what, path = "table", where.shown("table")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            what, path = "table", where.shown("tables")
        else:
            what = "key"
        return f"unknown {what} {path}: remove it or check its spelling{_suggest(where)}"
    if t == "missing":
        sub = _models(where.field.annotation) if where.field is not None else []
        if kind != "key" and sub:
            keys = [n for n, f in sub[0].model_fields.items() if f.is_required()]
            return f"missing table {path}: add it with the keys {_and(keys)}"
        return f"missing key {path}: add it{_hint(where.field)}"
    if kind == "tables" and t in ("tuple_type", "list_type"):
        entry = where.name.rsplit(".", 1)[-1]
        plain = f"{where.head} [{where.name}]".strip()
        return f"{plain} must be an array of tables — write [[{where.name}]] (double brackets), once per {entry}"
    if kind == "table" and t in _TABLE_TYPES:
        if isinstance(value, list):
            wrote = f"{where.head} [[{where.name}]]".strip()
            return f"{wrote} must be a single table — write [{where.name}] (single brackets), once"
        return f"{path} must be a table (a [{where.name}] header with its keys below it){got}"
    if t == "too_short":
        if kind == "tables":
            return f"{where.head or 'the file'} needs at least one [[{where.name}]]"
        return f"{path} needs at least {ctx.get('min_length')} entries{got}"
    if t in _BOUNDS:
        key, words = _BOUNDS[t]
        return f"{path} must be {words} {_number(ctx.get(key))}{got}"
    if t == "literal_error":
        choices = _choices(where.field.annotation) if where.field is not None else ()
        allowed = ", ".join(_toml(c) for c in choices) if choices else str(ctx.get("expected", "")).replace("'", '"')
        return f"{path} must be one of {allowed}{got}"
    if t in ("tuple_type", "list_type") and not isinstance(value, (list, dict)):
        return f"{path} must be an array{got}: write {where.key} = [{_toml(value)}]"
    if t in _TYPE_WORDS:
        return f"{path} must be {_TYPE_WORDS[t]}{got}"
    msg = str(err.get("msg", "")).removeprefix("Value error, ")
    return f"{path}: {msg}" if path else msg
