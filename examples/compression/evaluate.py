"""Compression benchmark: the harness. Do not edit; the agent edits compress.conf only.

Reads compress.conf, compresses every file in data/ with it, checks the round trip and prints

    compression_ratio: <total raw bytes / total compressed bytes>   (higher is better)
    decode_time_ms: <median time to decode the whole set>            (lower is better)

Times are CPU time of this process (time.process_time), not wall-clock time, so other
programs competing for the CPU barely move them.

A config that cannot be parsed, names an unknown key or value, or fails the round trip
exits non-zero (the experiment is a crash).
"""

from __future__ import annotations

import bz2
import lzma
import statistics
import struct
import sys
import time
import zlib
from itertools import accumulate, pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONF = ROOT / "compress.conf"
DATA = ROOT / "data"
DECODE_PASSES = 9  # the median of this many full decodes is reported
FILTERED_SUFFIX = ".bin"  # the pre-filter applies to these files only

DEFAULTS = {
    "algorithm": "zlib",
    "level": "6",
    "wbits": "15",
    "memlevel": "8",
    "strategy": "default",
    "extreme": "false",
    "filter": "none",
    "filter_width": "4",
    "solid": "false",
}
ZLIB_STRATEGIES = {
    "default": zlib.Z_DEFAULT_STRATEGY,
    "filtered": zlib.Z_FILTERED,
    "huffman_only": zlib.Z_HUFFMAN_ONLY,
    "rle": zlib.Z_RLE,
    "fixed": zlib.Z_FIXED,
}
WIDTH_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class ConfigError(Exception):
    pass


def parse_conf(text: str) -> dict[str, str]:
    conf = dict(DEFAULTS)
    seen: set[str] = set()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise ConfigError(f"line {n}: expected 'key = value', got {raw!r}")
        key, value = (s.strip() for s in line.split("=", 1))
        if key not in DEFAULTS:
            raise ConfigError(f"line {n}: unknown key {key!r} (known: {', '.join(DEFAULTS)})")
        if key in seen:
            raise ConfigError(f"line {n}: key {key!r} given twice")
        seen.add(key)
        conf[key] = value.lower()
    return conf


def _int(conf: dict[str, str], key: str, lo: int, hi: int) -> int:
    try:
        v = int(conf[key])
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {conf[key]!r}") from None
    if not lo <= v <= hi:
        raise ConfigError(f"{key} must be in {lo}..{hi} for this algorithm, got {v}")
    return v


def _bool(conf: dict[str, str], key: str) -> bool:
    if conf[key] not in ("true", "false"):
        raise ConfigError(f"{key} must be true or false, got {conf[key]!r}")
    return conf[key] == "true"


def make_codec(conf: dict[str, str]):
    """(compress, decompress) functions of bytes for the configured algorithm."""
    algo = conf["algorithm"]
    if algo == "zlib":
        level = _int(conf, "level", 0, 9)
        wbits = _int(conf, "wbits", 9, 15)
        memlevel = _int(conf, "memlevel", 1, 9)
        if conf["strategy"] not in ZLIB_STRATEGIES:
            known = ", ".join(ZLIB_STRATEGIES)
            raise ConfigError(f"strategy must be one of {known}, got {conf['strategy']!r}")
        strategy = ZLIB_STRATEGIES[conf["strategy"]]

        def compress(b: bytes) -> bytes:
            c = zlib.compressobj(level, zlib.DEFLATED, wbits, memlevel, strategy)
            return c.compress(b) + c.flush()

        return compress, lambda b: zlib.decompress(b, wbits)
    if algo == "bz2":
        level = _int(conf, "level", 1, 9)
        return (lambda b: bz2.compress(b, level)), bz2.decompress
    if algo == "lzma":
        preset = _int(conf, "level", 0, 9) | (lzma.PRESET_EXTREME if _bool(conf, "extreme") else 0)
        return (lambda b: lzma.compress(b, preset=preset)), lzma.decompress
    raise ConfigError(f"algorithm must be zlib, bz2 or lzma, got {algo!r}")


def make_filter(conf: dict[str, str]):
    """(forward, inverse) pre-filter of bytes; the trailing partial element is left as is."""
    kind = conf["filter"]
    try:
        width = int(conf["filter_width"])
    except ValueError:
        raise ConfigError(f"filter_width must be 1, 2, 4 or 8, got {conf['filter_width']!r}") from None
    if width not in WIDTH_CODES:
        raise ConfigError(f"filter_width must be 1, 2, 4 or 8, got {width}")
    if kind == "none":
        return (lambda b: b), (lambda b: b)
    if kind == "shuffle":
        # Byte i of every element goes to plane i: slowly varying high bytes become long runs.
        def shuffle(b: bytes) -> bytes:
            body = len(b) - len(b) % width
            return b"".join(b[i:body:width] for i in range(width)) + b[body:]

        def unshuffle(b: bytes) -> bytes:
            body = len(b) - len(b) % width
            plane = body // width
            out = bytearray(body)
            for i in range(width):
                out[i::width] = b[i * plane : (i + 1) * plane]
            return bytes(out) + b[body:]

        return shuffle, unshuffle
    if kind == "delta":
        code = WIDTH_CODES[width]
        mask = (1 << (8 * width)) - 1

        def delta(b: bytes) -> bytes:
            n = len(b) // width
            vals = struct.unpack(f"<{n}{code}", b[: n * width])
            out = [vals[0]] if n else []
            out += [(v - u) & mask for u, v in pairwise(vals)]
            return struct.pack(f"<{n}{code}", *out) + b[n * width :]

        def undelta(b: bytes) -> bytes:
            n = len(b) // width
            vals = struct.unpack(f"<{n}{code}", b[: n * width])
            return struct.pack(f"<{n}{code}", *[v & mask for v in accumulate(vals)]) + b[n * width :]

        return delta, undelta
    raise ConfigError(f"filter must be none, shuffle or delta, got {kind!r}")


def main() -> int:
    try:
        conf = parse_conf(CONF.read_text(encoding="utf-8"))
        compress, decompress = make_codec(conf)
        forward, inverse = make_filter(conf)
        solid = _bool(conf, "solid")
    except (OSError, UnicodeDecodeError, ConfigError) as e:
        print(f"error: compress.conf: {e}", file=sys.stderr)
        return 2

    files = sorted(p for p in DATA.iterdir() if p.is_file())
    raw = {p.name: p.read_bytes() for p in files}
    filtered = {n: forward(b) if n.endswith(FILTERED_SUFFIX) else b for n, b in raw.items()}
    t0 = time.process_time()
    if solid:
        # One stream for the whole set: later files can refer back to earlier ones.
        sizes = [len(filtered[n]) for n in sorted(filtered)]
        blobs = {"*": compress(b"".join(filtered[n] for n in sorted(filtered)))}
    else:
        blobs = {n: compress(b) for n, b in filtered.items()}
    encode_ms = (time.process_time() - t0) * 1000

    def decode_all() -> dict[str, bytes]:
        if solid:
            whole, out, pos = decompress(blobs["*"]), {}, 0
            for n, size in zip(sorted(filtered), sizes, strict=True):
                out[n] = whole[pos : pos + size]
                pos += size
        else:
            out = {n: decompress(b) for n, b in blobs.items()}
        return {n: inverse(b) if n.endswith(FILTERED_SUFFIX) else b for n, b in out.items()}

    times = []
    for _ in range(DECODE_PASSES):
        t0 = time.process_time()
        decoded = decode_all()
        times.append((time.process_time() - t0) * 1000)
        if decoded != raw:
            bad = sorted(n for n in raw if decoded.get(n) != raw[n])
            print(f"error: round trip failed for {', '.join(bad)}", file=sys.stderr)
            return 1

    total_raw = sum(len(b) for b in raw.values())
    total_comp = sum(len(b) for b in blobs.values())
    print(f"config: {', '.join(f'{k}={v}' for k, v in conf.items())}")
    if not solid:
        for n in sorted(raw):
            print(f"  {n}: {len(raw[n])} -> {len(blobs[n])} bytes ({len(raw[n]) / len(blobs[n]):.2f}x)")
    print(f"raw_bytes: {total_raw}")
    print(f"compressed_bytes: {total_comp}")
    print(f"encode_time_ms: {encode_ms:.2f}")
    print(f"compression_ratio: {total_raw / total_comp:.4f}")
    print(f"decode_time_ms: {statistics.median(times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
