"""Game AI benchmark: the harness. Do not edit; the agent edits ai_config.json only.

Plays MATCHES seeded matches of Frontier (game.py) between the bot configured in
ai_config.json and the fixed opponent below, and prints

    win_rate: <(wins + draws / 2) / matches>   (higher is better)

The result is noisy on purpose. Which block of match seeds is played depends on the
environment the autoexp server sets:
- with `[policy] repeats = K` (K > 1), repeat r of run n plays block (r + n) mod K, so each
  batch of K repeats covers the same K blocks in a rotated order: one repeat of a config
  differs from run to run by a few points, but the batch mean of a config does not;
- with one repeat per experiment, run n plays block n: every run sees new matches.
Run by hand (no AUTOEXP_* variables) it plays block 0.

An invalid config (bad JSON, a missing or unknown key, a value out of range) exits non-zero.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the repository
from game import PARAMS, play  # noqa: E402

ROOT = Path(__file__).resolve().parent
CONFIG = ROOT / "ai_config.json"
MATCHES = 100
SEEDS_PER_BLOCK = 1_000_003  # spacing of the seed blocks (a prime, so blocks never overlap)
IGNORED_KEYS = {"name"}  # allowed in the config, not used by the game

OPPONENT = {
    "economy": 0.4,
    "military": 0.45,
    "defense": 0.15,
    "max_workers": 12,
    "aggression": 0.6,
    "attack_ratio": 0.5,
    "retreat_threshold": 0.4,
    "min_army": 6,
}


class ConfigError(Exception):
    pass


def load_config(text: str) -> dict[str, float]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("must be a JSON object of parameter -> number")
    unknown = sorted(set(data) - set(PARAMS) - IGNORED_KEYS)
    missing = sorted(set(PARAMS) - set(data))
    if unknown or missing:
        raise ConfigError(f"unknown keys {unknown}, missing keys {missing} (expected: {', '.join(PARAMS)})")
    cfg: dict[str, float] = {}
    for key, (lo, hi) in PARAMS.items():
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"{key} must be a number, got {v!r}")
        if not lo <= v <= hi:
            raise ConfigError(f"{key} must be in [{lo}, {hi}], got {v}")
        cfg[key] = v
    if cfg["economy"] + cfg["military"] + cfg["defense"] <= 0:
        raise ConfigError("economy, military and defense cannot all be 0")
    return cfg


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def seed_block() -> int:
    run = _env_int("AUTOEXP_RUN", 0)
    repeat = _env_int("AUTOEXP_REPEAT", 0)
    repeats = max(1, _env_int("AUTOEXP_REPEATS", 1))
    return (repeat + run) % repeats if repeats > 1 else run


def main() -> int:
    try:
        cfg = load_config(CONFIG.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ConfigError) as e:
        print(f"error: ai_config.json: {e}", file=sys.stderr)
        return 2
    block = seed_block()
    first = 1 + block * SEEDS_PER_BLOCK
    results = [play(cfg, OPPONENT, first + i) for i in range(MATCHES)]
    wins, draws = results.count(1.0), results.count(0.5)
    print(f"seed block: {block} (matches {first}..{first + MATCHES - 1})")
    print(f"wins: {wins}  draws: {draws}  losses: {MATCHES - wins - draws}")
    print(f"win_rate: {(wins + 0.5 * draws) / MATCHES:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
