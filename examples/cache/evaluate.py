"""Replay access.log through a cache configured by cache_config.json; report hit rate and memory.

Usage: python evaluate.py

Deterministic: the same config always gives the same numbers. The last two lines are the
metrics:

    hit_rate: 0.4123      requests served from the cache / all requests (higher is better)
    memory_mb: 257.31     peak memory of the cache: stored objects + per-entry bookkeeping

Exit status: 0 on success, 2 if cache_config.json is not valid (the message says why).
This file, objects.csv and access.log are the harness: the experiment loop edits only
cache_config.json.
"""

from __future__ import annotations

import heapq
import json
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG_FILE = HERE / "cache_config.json"
OBJECTS_FILE = HERE / "objects.csv"
LOG_FILE = HERE / "access.log"

TYPES = ("api", "html", "image", "video", "archive")
POLICIES = ("lru", "fifo", "lfu", "2q")
ENTRY_OVERHEAD_KB = 2.0  # index entry, headers and metadata of each stored object
GHOST_OVERHEAD_KB = 0.125  # a remembered key in 2Q's ghost queue
SKETCH_MB = 4.0  # the request counter behind admit_after > 1
KB_PER_MB = 1024


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class CacheConfig:
    capacity_mb: float
    policy: str
    ttl_s: dict[str, float]
    admit_after: int
    max_object_mb: float
    in_fraction: float
    ghost_entries: int


def _number(data: dict, key: str, lo: float, hi: float, integer: bool = False) -> float:
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or (integer and not isinstance(v, int)):
        raise ConfigError(f"{key!r} must be {'an integer' if integer else 'a number'}, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{key!r} must be between {lo:g} and {hi:g}, got {v!r}")
    return v


def load_config(text: str) -> CacheConfig:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a JSON object")
    required = {"capacity_mb", "policy", "ttl_s", "admit_after", "max_object_mb"}
    optional = {"in_fraction", "ghost_entries", "comment"}
    unknown = sorted(set(data) - required - optional)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; allowed: {sorted(required | optional)}")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"missing key(s) {missing}")
    if data["policy"] not in POLICIES:
        raise ConfigError(f"'policy' must be one of {list(POLICIES)}, got {data['policy']!r}")
    ttl = data["ttl_s"]
    if not isinstance(ttl, dict) or set(ttl) != set(TYPES):
        raise ConfigError(f"'ttl_s' must give a TTL in seconds for exactly these types: {list(TYPES)}")
    for kind in TYPES:
        _number(ttl, kind, 0, 10**9)
    data.setdefault("in_fraction", 0.25)
    data.setdefault("ghost_entries", 1000)
    return CacheConfig(
        capacity_mb=_number(data, "capacity_mb", 1, 10**6),
        policy=data["policy"],
        ttl_s={k: float(ttl[k]) for k in TYPES},
        admit_after=int(_number(data, "admit_after", 1, 1000, integer=True)),
        max_object_mb=_number(data, "max_object_mb", 0, 10**6),
        in_fraction=_number(data, "in_fraction", 0.01, 0.99),
        ghost_entries=int(_number(data, "ghost_entries", 0, 10**6, integer=True)),
    )


# --- eviction policies: each tracks the stored keys and picks the next victim -------------


class Lru:
    def __init__(self) -> None:
        self.order: OrderedDict[str, None] = OrderedDict()

    def insert(self, key: str) -> None:
        self.order[key] = None

    def hit(self, key: str) -> None:
        self.order.move_to_end(key)

    def remove(self, key: str) -> None:
        del self.order[key]

    def victim(self) -> str:
        return next(iter(self.order))

    def ghosts(self) -> int:
        return 0


class Fifo(Lru):
    def hit(self, key: str) -> None:
        pass


class Lfu:
    """Least frequently used; ties go to the least recently used. Counts are kept while stored."""

    def __init__(self) -> None:
        self.freq: dict[str, int] = {}
        self.stamp: dict[str, int] = {}
        self.heap: list[tuple[int, int, str]] = []
        self.tick = 0

    def _push(self, key: str) -> None:
        self.tick += 1
        self.stamp[key] = self.tick
        heapq.heappush(self.heap, (self.freq[key], self.tick, key))

    def insert(self, key: str) -> None:
        self.freq[key] = 1
        self._push(key)

    def hit(self, key: str) -> None:
        self.freq[key] += 1
        self._push(key)

    def remove(self, key: str) -> None:
        del self.freq[key], self.stamp[key]

    def victim(self) -> str:
        while True:
            _, tick, key = self.heap[0]
            if self.stamp.get(key) == tick:
                return key
            heapq.heappop(self.heap)  # stale heap entry

    def ghosts(self) -> int:
        return 0


class TwoQ:
    """Simplified 2Q: new keys enter a FIFO (A1in); keys seen again after leaving it go to an
    LRU (Am). A1out remembers the keys recently pushed out of A1in (the ghost queue)."""

    def __init__(self, capacity_kb: float, in_fraction: float, ghost_entries: int, sizes: dict[str, int]) -> None:
        self.a1in: OrderedDict[str, None] = OrderedDict()
        self.am: OrderedDict[str, None] = OrderedDict()
        self.a1out: OrderedDict[str, None] = OrderedDict()
        self.in_limit_kb = capacity_kb * in_fraction
        self.in_kb = 0
        self.ghost_entries = ghost_entries
        self.sizes = sizes

    def insert(self, key: str) -> None:
        if key in self.a1out:
            del self.a1out[key]
            self.am[key] = None
        else:
            self.a1in[key] = None
            self.in_kb += self.sizes[key]

    def hit(self, key: str) -> None:
        if key in self.am:
            self.am.move_to_end(key)

    def remove(self, key: str) -> None:
        if key in self.a1in:
            del self.a1in[key]
            self.in_kb -= self.sizes[key]
        else:
            del self.am[key]

    def victim(self) -> str:
        if self.a1in and (self.in_kb > self.in_limit_kb or not self.am):
            key = next(iter(self.a1in))
            self.a1out[key] = None
            while len(self.a1out) > self.ghost_entries:
                self.a1out.popitem(last=False)
            return key
        return next(iter(self.am))

    def ghosts(self) -> int:
        return len(self.a1out)


# --- the simulation -----------------------------------------------------------------------


def load_objects() -> tuple[dict[str, str], dict[str, int]]:
    kinds, sizes = {}, {}
    for line in OBJECTS_FILE.read_text(encoding="utf-8").splitlines()[1:]:
        key, kind, size_kb = line.split(",")
        kinds[key], sizes[key] = kind, int(size_kb)
    return kinds, sizes


def load_log() -> list[tuple[int, str]]:
    out = []
    for line in LOG_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            t, key = line.split()
            out.append((int(t), key))
    return out


def simulate(cfg: CacheConfig, kinds: dict[str, str], sizes: dict[str, int], log: list[tuple[int, str]]) -> dict:
    capacity_kb = cfg.capacity_mb * KB_PER_MB
    max_object_kb = cfg.max_object_mb * KB_PER_MB
    policy: Lru | Lfu | TwoQ
    if cfg.policy == "2q":
        policy = TwoQ(capacity_kb, cfg.in_fraction, cfg.ghost_entries, sizes)
    else:
        policy = {"lru": Lru, "fifo": Fifo, "lfu": Lfu}[cfg.policy]()
    stored: dict[str, int] = {}  # key -> insertion number (to match expiry records)
    expiries: list[tuple[float, int, str]] = []
    seen: dict[str, int] = {}
    used_kb = 0
    peak_kb = 0.0
    inserts = evictions = expired = 0
    stats = {k: [0, 0] for k in TYPES}  # requests, hits
    hit_kb = total_kb = 0

    def drop(key: str) -> None:
        nonlocal used_kb
        del stored[key]
        policy.remove(key)
        used_kb -= sizes[key]

    for t, key in log:
        while expiries and expiries[0][0] <= t:
            _, n, k = heapq.heappop(expiries)
            if stored.get(k) == n:
                drop(k)
                expired += 1
        kind, size = kinds[key], sizes[key]
        stats[kind][0] += 1
        total_kb += size
        seen[key] = seen.get(key, 0) + 1
        if key in stored:
            stats[kind][1] += 1
            hit_kb += size
            policy.hit(key)
            continue
        ttl = cfg.ttl_s[kind]
        if ttl <= 0 or size > max_object_kb or size > capacity_kb or seen[key] < cfg.admit_after:
            continue
        while used_kb + size > capacity_kb:
            drop(policy.victim())
            evictions += 1
        inserts += 1
        stored[key] = inserts
        used_kb += size
        policy.insert(key)
        heapq.heappush(expiries, (t + ttl, inserts, key))
        peak_kb = max(peak_kb, used_kb + ENTRY_OVERHEAD_KB * len(stored) + GHOST_OVERHEAD_KB * policy.ghosts())

    requests = len(log)
    hits = sum(h for _, h in stats.values())
    memory_mb = peak_kb / KB_PER_MB + (SKETCH_MB if cfg.admit_after > 1 else 0.0)
    return {
        "requests": requests,
        "hits": hits,
        "inserts": inserts,
        "evictions": evictions,
        "expired": expired,
        "by_type": stats,
        "byte_hit_rate": hit_kb / total_kb,
        "hit_rate": hits / requests,
        "memory_mb": memory_mb,
    }


def main() -> int:
    try:
        cfg = load_config(CONFIG_FILE.read_text(encoding="utf-8"))
    except (ConfigError, OSError, UnicodeDecodeError) as e:
        print(f"error: cache_config.json: {e}", file=sys.stderr)
        return 2
    kinds, sizes = load_objects()
    r = simulate(cfg, kinds, sizes, load_log())
    print(f"policy {cfg.policy}, capacity {cfg.capacity_mb:g} MB, admit_after {cfg.admit_after}")
    print(f"requests {r['requests']}  hits {r['hits']}  inserts {r['inserts']}  ", end="")
    print(f"evictions {r['evictions']}  expired {r['expired']}")
    for kind, (n, h) in r["by_type"].items():
        print(f"  {kind:8s} requests {n:5d}  hit rate {h / n if n else 0:.3f}")
    print(f"byte_hit_rate: {r['byte_hit_rate']:.4f}")
    print(f"hit_rate: {r['hit_rate']:.4f}")
    print(f"memory_mb: {r['memory_mb']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
