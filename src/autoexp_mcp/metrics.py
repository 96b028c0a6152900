"""Metric extraction from eval output: regex, `<name>: <number>` lines, JSON lines, files.

The last match wins (harnesses print progress before the final figure). Every failure says
exactly why: no line matched, not a number, not finite, file missing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import fsafe
from .config import MetricConfig

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|infinity|nan)"
MAX_METRIC_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Extraction:
    values: dict[str, float]
    errors: dict[str, str]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.errors.items())


def default_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{re.escape(name)}\s*[:=]\s*({_NUMBER})\s*$", re.MULTILINE | re.IGNORECASE)


def describe(m: MetricConfig) -> str:
    """How the server reads this metric, in words the agent and the user understand."""
    where = f"the file {m.file}" if m.file else "the eval output"
    if m.channel == "fd":
        where = "the metric channel (AUTOEXP_METRIC_FD)"
    if m.json_key:
        return f"{m.name}: key {m.json_key!r} of the last JSON object line in {where}"
    if m.pattern:
        return f"{m.name}: the last match of the regex {m.pattern!r} in {where}"
    return f"{m.name}: the last line '{m.name}: <number>' in {where}"


def _to_float(raw: str) -> tuple[float | None, str | None]:
    try:
        v = float(raw.strip())
    except ValueError:
        return None, f"matched {raw.strip()[:60]!r}, which is not a number"
    if not math.isfinite(v):
        return None, f"value is {raw.strip()!r}, not a finite number"
    return v, None


def _json_lookup(obj: object, dotted: str) -> object:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(part)
        cur = cur[part]
    return cur


def _from_lines(m: MetricConfig, lines: Sequence[str]) -> tuple[float | None, str | None]:
    if m.json_key:
        for line in reversed(lines):
            s = line.strip()
            if not (s.startswith("{") and s.endswith("}")):
                continue
            try:
                obj = json.loads(s)
            except ValueError:
                continue
            try:
                value = _json_lookup(obj, m.json_key)
            except KeyError:
                return None, f"the last JSON object line has no key {m.json_key!r}"
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                return None, f"key {m.json_key!r} holds {type(value).__name__}, not a number"
            return _to_float(str(value))
        return None, "no line of the output is a JSON object"
    rx = re.compile(m.pattern, re.MULTILINE) if m.pattern else default_pattern(m.name)
    text = "\n".join(lines)
    last = None
    for last in rx.finditer(text):  # noqa: B007 - we want the final match
        pass
    if last is None:
        if m.pattern:
            return None, f"no line matched the pattern {m.pattern!r}"
        loose = None
        for loose in _loose_pattern(m.name).finditer(text):  # noqa: B007 - the final one
            pass
        if loose is not None:  # a metric line whose value is not a number: say so
            return _to_float(loose.group(1))
        return None, f"no line '{m.name}: <number>' in the output"
    return _to_float(last.group(1))


def _loose_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\s*{re.escape(name)}\s*[:=]\s*(.*?)\s*$", re.MULTILINE | re.IGNORECASE)


class MetricFileError(ValueError):
    """A metric file that is there but cannot be a result (too large)."""


def read_file(root: Path, rel: str) -> str | None:
    """A metric file's text, read once without following symlinks; None when it is missing,
    a symlink or not a regular file. Raises MetricFileError when it is too large."""
    try:
        data = fsafe.read_beneath(root, rel, MAX_METRIC_FILE_BYTES)
    except (OSError, ValueError):
        return None
    if len(data) > MAX_METRIC_FILE_BYTES:
        raise MetricFileError(f"{rel} is larger than {MAX_METRIC_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def read_files(root: Path, rels: Iterable[str]) -> dict[str, str | MetricFileError | None]:
    out: dict[str, str | MetricFileError | None] = {}
    for rel in rels:
        try:
            out[rel] = read_file(root, rel)
        except MetricFileError as e:
            out[rel] = e
    return out


def extract(
    metrics: Iterable[MetricConfig],
    output: str,
    cwd: Path | None = None,
    *,
    files: Mapping[str, str | MetricFileError | None] | None = None,
    channel: str | None = None,
) -> Extraction:
    """Extract each metric from `output`, from the metric channel's text, or from its `file`:
    the text in `files` (read by the caller right after the run), else read now under `cwd`."""
    lines = output.splitlines()
    channel_lines = (channel or "").splitlines()
    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    for m in metrics:
        src_lines: Sequence[str] = lines
        if m.channel == "fd":
            if not channel_lines:
                errors[m.name] = "nothing arrived on the metric channel (the fd named by AUTOEXP_METRIC_FD)"
                continue
            src_lines = channel_lines
        elif m.file:
            text = (files if files is not None else read_files(cwd or Path.cwd(), [m.file])).get(m.file)
            if text is None:
                errors[m.name] = (
                    f"the eval did not write {m.file} during this run (a file left from an earlier run, put there "
                    "by anyone else, or a symlink, is not a result)"
                )
                continue
            if isinstance(text, MetricFileError):
                errors[m.name] = str(text)
                continue
            src_lines = text.splitlines()
        value, err = _from_lines(m, src_lines)
        if err is not None:
            errors[m.name] = err
        else:
            assert value is not None
            values[m.name] = value
    return Extraction(values, errors)
