"""Score the date-extraction rules in patterns.yaml against the labeled corpus.

Usage: python evaluate.py [--show N]

Every rule's regex is run over every corpus line; the union of the matched spans is compared
with the gold spans (the dates marked [[...]] in corpus.txt). A predicted span counts as
correct only if it is exactly a gold span. The last three lines are the metrics:

    precision: 0.8421
    recall: 0.4848
    f1: 0.6154

Exit status: 0 on success, 2 if patterns.yaml is malformed or a regex does not compile.
This file and corpus.txt are the harness: the experiment loop edits only patterns.yaml.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PATTERNS_FILE = HERE / "patterns.yaml"
CORPUS_FILE = HERE / "corpus.txt"
SHOW_DEFAULT = 5  # mistakes of each kind printed to help whoever reads the output

_ITEM_RE = re.compile(r"^- +([A-Za-z_]+):(.*)$")
_KEY_RE = re.compile(r"^ +([A-Za-z_]+):(.*)$")
_KEYS = ("name", "pattern")
# 'value' with '' for a quote inside, then nothing but an optional comment.
_QUOTED_RE = re.compile(r"^'((?:[^']|'')*)'\s*(?:#.*)?$")
# A plain (unquoted) YAML scalar cannot start with these; a regex often does, so quote it.
_PLAIN_FORBIDDEN_START = set("|>[]{}&*!%@`'\"?,#-")


class PatternFileError(Exception):
    pass


@dataclass(frozen=True)
class Rule:
    name: str
    regex: re.Pattern[str]


def _scalar(raw: str, where: str) -> str:
    """A YAML scalar as written after 'key:': 'single quoted' ('' is a quote) or plain."""
    text = raw.strip()
    if text.startswith("'"):
        m = _QUOTED_RE.match(text)
        if not m:
            raise PatternFileError(
                f"{where}: bad single-quoted value {text!r} (close the quote; write '' for a quote inside)"
            )
        return m.group(1).replace("''", "'")
    if text.startswith('"'):
        raise PatternFileError(f"{where}: use single quotes; double quotes change backslashes in YAML")
    if text[:1] in _PLAIN_FORBIDDEN_START or " #" in text or ": " in text or text.endswith(":"):
        raise PatternFileError(f"{where}: put this value in single quotes: {text!r}")
    return text


def parse_patterns(text: str, source: str = "patterns.yaml") -> list[tuple[str, str, int]]:
    """Parse the restricted YAML: a list of {name, pattern} mappings -> (name, pattern, its line)."""
    items: list[dict[str, tuple[str, int]]] = []  # key -> (value, line)
    starts: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{lineno}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise PatternFileError(f"{where}: indent with spaces, not tabs")
        m = _ITEM_RE.match(line)
        if m:
            items.append({})
            starts.append(lineno)
        else:
            m = _KEY_RE.match(line)
            if not m:
                raise PatternFileError(f"{where}: expected '- name: ...' or '  pattern: ...', got {line.strip()!r}")
            if not items:
                raise PatternFileError(f"{where}: a key before the first '- ' list item")
        key, value = m.group(1), _scalar(m.group(2), where)
        if key not in _KEYS:
            raise PatternFileError(f"{where}: unknown key {key!r} (allowed: {', '.join(_KEYS)})")
        if key in items[-1]:
            raise PatternFileError(f"{where}: key {key!r} given twice in one rule")
        items[-1][key] = (value, lineno)
    if not items:
        raise PatternFileError(f"{source}: no rules; add at least one '- name: ...' / '  pattern: ...'")
    rules = []
    for item, lineno in zip(items, starts, strict=True):
        for key in _KEYS:
            if not item.get(key, ("", 0))[0]:
                raise PatternFileError(f"{source}:{lineno}: the rule has no {key!r} (or it is empty)")
        rules.append((item["name"][0], item["pattern"][0], item["pattern"][1]))
    names = [r[0] for r in rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise PatternFileError(f"{source}: rule names must be unique, repeated: {', '.join(dup)}")
    return rules


def compile_rules(parsed: list[tuple[str, str, int]], source: str = "patterns.yaml") -> list[Rule]:
    rules = []
    for name, pattern, lineno in parsed:
        try:
            rules.append(Rule(name, re.compile(pattern)))
        except re.error as e:
            raise PatternFileError(f"{source}:{lineno}: rule {name!r}: invalid regex: {e}") from None
    return rules


def load_corpus(path: Path) -> list[tuple[str, set[tuple[int, int]]]]:
    """Lines of text with their gold spans; '[[' and ']]' mark a date and are removed."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        text, spans, pos = [], set(), 0
        for m in re.finditer(r"\[\[(.+?)\]\]", line):
            text.append(line[pos : m.start()])
            start = sum(map(len, text))
            text.append(m.group(1))
            spans.add((start, start + len(m.group(1))))
            pos = m.end()
        text.append(line[pos:])
        out.append(("".join(text), spans))
    return out


def score(rules: list[Rule], corpus: list[tuple[str, set[tuple[int, int]]]], show: int) -> dict[str, float]:
    gold_n = pred_n = correct_n = 0
    per_rule = {r.name: [0, 0] for r in rules}  # matches, correct
    misses: list[str] = []
    false_hits: list[str] = []
    for i, (text, gold) in enumerate(corpus, start=1):
        pred: set[tuple[int, int]] = set()
        for rule in rules:
            for m in rule.regex.finditer(text):
                if m.end() == m.start():
                    continue  # empty matches are ignored
                per_rule[rule.name][0] += 1
                per_rule[rule.name][1] += m.span() in gold
                pred.add(m.span())
        gold_n += len(gold)
        pred_n += len(pred)
        correct_n += len(pred & gold)
        misses += [f"  line {i}: {text[a:b]!r} in {text!r}" for a, b in sorted(gold - pred)]
        false_hits += [f"  line {i}: {text[a:b]!r} in {text!r}" for a, b in sorted(pred - gold)]

    width = max(len(r.name) for r in rules)
    for name, (matches, correct) in per_rule.items():
        print(f"rule {name:<{width}}  matches {matches:4d}  correct {correct:4d}")
    for title, items in (("missed dates", misses), ("false matches", false_hits)):
        if items and show:
            print(f"{title} (first {min(show, len(items))} of {len(items)}):")
            print("\n".join(items[:show]))
    precision = correct_n / pred_n if pred_n else 0.0
    recall = correct_n / gold_n if gold_n else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    print(f"gold {gold_n}  predicted {pred_n}  correct {correct_n}")
    return {"precision": precision, "recall": recall, "f1": f1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--show", type=int, default=SHOW_DEFAULT, help="mistakes of each kind to print")
    args = ap.parse_args(argv)
    try:
        rules = compile_rules(parse_patterns(PATTERNS_FILE.read_text(encoding="utf-8")))
    except (PatternFileError, OSError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = score(rules, load_corpus(CORPUS_FILE), args.show)
    for name, value in metrics.items():
        print(f"{name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
