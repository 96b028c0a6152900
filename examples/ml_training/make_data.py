"""Regenerate data/train.csv and data/val.csv (deterministic). Not part of the eval.

Three interleaved noisy spirals in the plane, one class per arm: a linear model cannot
separate them, a small MLP can.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 7
N_PER_CLASS = 1000
N_CLASSES = 3
NOISE = 0.3  # radians of jitter: some points land on a neighbouring arm
TURN = 2 * np.pi  # each arm winds once around the centre
N_VAL = 600
HERE = Path(__file__).resolve().parent


def main() -> None:
    rng = np.random.default_rng(SEED)
    xs, ys = [], []
    for k in range(N_CLASSES):
        r = np.sqrt(rng.uniform(0.02, 1.0, N_PER_CLASS))  # denser towards the outside
        theta = TURN * r + 2 * np.pi * k / N_CLASSES + rng.normal(0, NOISE, N_PER_CLASS)
        xs.append(np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1) * 4)
        ys.append(np.full(N_PER_CLASS, k))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    (HERE / "data").mkdir(exist_ok=True)
    for name, sl in (("val", slice(0, N_VAL)), ("train", slice(N_VAL, None))):
        with (HERE / "data" / f"{name}.csv").open("w", encoding="utf-8") as f:
            f.write("x1,x2,label\n")
            for (a, b), c in zip(x[sl], y[sl], strict=True):
                f.write(f"{a:.4f},{b:.4f},{c}\n")


if __name__ == "__main__":
    main()
