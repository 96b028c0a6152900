"""Regenerate objects.csv and access.log (deterministic). Not part of the eval.

One hour of requests to a web cache: Zipf-like popularity over API responses, HTML pages,
images and videos, plus two sequential scans over large archive files (a backup job and a
crawler) that are each read once per scan.
"""

from __future__ import annotations

import bisect
import random
from itertools import accumulate
from pathlib import Path

SEED = 4242
DURATION_S = 3600
N_REGULAR = 7000
ZIPF_S = 0.9
# type: (number of objects, smallest KB, largest KB); sizes are log-uniform.
TYPES = {
    "api": (300, 2, 30),
    "html": (500, 20, 200),
    "image": (1000, 100, 2048),
    "video": (80, 10 * 1024, 80 * 1024),
    "archive": (500, 2 * 1024, 12 * 1024),
}
SCANS = ((900, 0, 500), (2400, 0, 500))  # (start second, first archive, end archive)
SCAN_RATE_S = 0.5  # seconds between two requests of a scan

HERE = Path(__file__).resolve().parent


def main() -> None:
    r = random.Random(SEED)
    objects = []
    for kind, (count, lo, hi) in TYPES.items():
        for i in range(count):
            size = round(lo * (hi / lo) ** r.random())
            objects.append((f"{kind}/{i:04d}", kind, size))

    # Popularity: shuffle the non-archive objects, but pull API responses towards the top.
    popular = [o for o in objects if o[1] != "archive"]
    popular.sort(key=lambda o: r.random() * (0.25 if o[1] == "api" else 1.0))
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(len(popular))]
    cum = list(accumulate(weights))

    events: list[tuple[float, str]] = []
    for _ in range(N_REGULAR):
        t = r.random() * DURATION_S
        k = bisect.bisect_left(cum, r.random() * cum[-1])
        events.append((t, popular[k][0]))
    archives = [o for o in objects if o[1] == "archive"]
    for start, first, end in SCANS:
        for j, obj in enumerate(archives[first:end]):
            events.append((start + j * SCAN_RATE_S, obj[0]))
    events.sort()

    with (HERE / "objects.csv").open("w", encoding="utf-8") as f:
        f.write("key,type,size_kb\n")
        for key, kind, size in objects:
            f.write(f"{key},{kind},{size}\n")
    with (HERE / "access.log").open("w", encoding="utf-8") as f:
        f.write("# second key\n")
        for t, key in events:
            f.write(f"{int(t)} {key}\n")


if __name__ == "__main__":
    main()
