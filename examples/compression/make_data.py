"""Regenerate the benchmark file set in data/ (deterministic; the committed files are its output).

Run `python make_data.py` from this directory. The eval never calls this: it reads data/ as is.
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SEED = 20240611

WORD_TEXT = (
    "the a of to and in is for on with that by from as at this be are it or an was which "
    "server request cache latency queue worker batch index shard replica timeout retry "
    "commit merge branch build deploy config metric trace span token buffer stream page "
    "disk memory thread socket packet header payload schema record field value key"
)
WORDS = WORD_TEXT.split()
PATHS = ["/api/v1/users", "/api/v1/orders", "/static/app.js", "/health", "/api/v2/search", "/login"]
LEVELS = ["INFO"] * 8 + ["WARN"] * 2 + ["ERROR"]


def server_log(rng: random.Random, lines: int) -> bytes:
    out = []
    t = 1_700_000_000.0
    for _ in range(lines):
        t += rng.expovariate(5.0)
        ip = f"10.{rng.randint(0, 3)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        status = rng.choice([200] * 12 + [201, 204, 301, 404, 500])
        ms = round(rng.lognormvariate(3.0, 0.8), 1)
        out.append(
            f"{t:.3f} {rng.choice(LEVELS):5s} {ip} {rng.choice(['GET', 'GET', 'POST', 'PUT'])} "
            f"{rng.choice(PATHS)} status={status} time_ms={ms} user={rng.randint(1000, 1400)}\n"
        )
    return "".join(out).encode()


def notes(rng: random.Random, sentences: int) -> bytes:
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        out.append(" ".join(words).capitalize() + ".")
        out.append("\n" if rng.random() < 0.2 else " ")
    return "".join(out).encode()


def sensors_csv(rng: random.Random, rows: int) -> bytes:
    out = ["timestamp,sensor,temperature_c,humidity_pct,pressure_hpa\n"]
    temps = {s: 20.0 + 3 * s for s in range(6)}
    for i in range(rows):
        s = i % 6
        temps[s] += rng.gauss(0.0, 0.05)
        hum = 45 + 10 * math.sin(i / 300) + rng.gauss(0, 0.3)
        hpa = 1013 + rng.gauss(0, 0.4)
        out.append(f"{1_700_000_000 + 10 * i},S{s:02d},{temps[s]:.2f},{hum:.1f},{hpa:.1f}\n")
    return "".join(out).encode()


def samples_bin(rng: random.Random, count: int) -> bytes:
    # A smooth multi-tone signal with a little noise: int32 little-endian, like raw sensor/audio
    # frames. Plain LZ77 finds few repeats in it; a delta or byte-shuffle pre-filter exposes them.
    vals = []
    for i in range(count):
        v = 200_000 * math.sin(i / 97) + 60_000 * math.sin(i / 13.3) + rng.gauss(0, 40)
        vals.append(int(v))
    return struct.pack(f"<{count}i", *vals)


def main() -> None:
    rng = random.Random(SEED)
    DATA.mkdir(exist_ok=True)
    (DATA / "server.log").write_bytes(server_log(rng, 800))
    (DATA / "notes.txt").write_bytes(notes(rng, 320))
    (DATA / "sensors.csv").write_bytes(sensors_csv(rng, 1600))
    (DATA / "samples.bin").write_bytes(samples_bin(rng, 14_000))
    for p in sorted(DATA.iterdir()):
        print(f"{p.name}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
