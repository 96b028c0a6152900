"""Hyperparameter benchmark: the harness. Do not edit; the agent edits hparams.json only.

Generates a fixed binary classification data set (seeded, with interaction, periodic and
threshold effects plus noise features and label noise), trains gradient-boosted decision
trees (logistic loss, Newton leaf values, histogram splits) with the hyperparameters in
hparams.json, and prints

    val_accuracy: <accuracy on the validation split>   (higher is better)

Everything is deterministic: the same hparams.json always gives the same number.
Invalid JSON, a missing or unknown key or a value out of range exits non-zero.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent
HPARAMS = ROOT / "hparams.json"
DATA_SEED = 7
N_TRAIN = 1000
N_VAL = 1000
N_FEATURES = 6

# name -> (type, low, high), inclusive
SPACE: dict[str, tuple[type, float, float]] = {
    "n_estimators": (int, 1, 300),
    "learning_rate": (float, 0.001, 2.0),
    "max_depth": (int, 1, 6),
    "min_samples_leaf": (int, 1, 500),
    "l2": (float, 0.0, 1000.0),
    "subsample": (float, 0.1, 1.0),
    "n_bins": (int, 2, 64),
}


class HparamError(Exception):
    pass


def load_hparams(text: str) -> dict[str, float]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise HparamError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise HparamError("must be a JSON object")
    unknown, missing = sorted(set(data) - set(SPACE)), sorted(set(SPACE) - set(data))
    if unknown or missing:
        raise HparamError(f"unknown keys {unknown}, missing keys {missing} (expected: {', '.join(SPACE)})")
    out: dict[str, float] = {}
    for key, (kind, lo, hi) in SPACE.items():
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not isinstance(v, int)):
            raise HparamError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
        if not lo <= v <= hi:
            raise HparamError(f"{key} must be in [{lo}, {hi}], got {v}")
        out[key] = v
    return out


def make_data(rng: random.Random, n: int) -> tuple[list[list[float]], list[int]]:
    xs, ys = [], []
    for _ in range(n):
        x = [rng.uniform(-1, 1) for _ in range(N_FEATURES)]
        # x0*x1 is an XOR-like interaction that no single split can see; x4, x5 are noise.
        score = 3.0 * x[0] * x[1] + math.sin(3.0 * x[2]) + (0.8 if x[3] > 0.3 else -0.4)
        p = 1 / (1 + math.exp(-3.0 * score))
        xs.append(x)
        ys.append(1 if rng.random() < p else 0)
    return xs, ys


def bin_edges(col: list[float], n_bins: int) -> list[float]:
    s = sorted(col)
    return sorted({s[len(s) * k // n_bins] for k in range(1, n_bins)})


def to_bin(v: float, edges: list[float]) -> int:
    lo, hi = 0, len(edges)
    while lo < hi:
        mid = (lo + hi) // 2
        if v < edges[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


def histograms(idx, cols, g, h, n_bins):
    """Per feature: (gradient sum, hessian sum, count) of the rows `idx` in each bin."""
    g_node, h_node = [g[i] for i in idx], [h[i] for i in idx]
    out = []
    for col in cols:
        bins = [col[i] for i in idx]
        gh, hh, cnt = [0.0] * n_bins, [0.0] * n_bins, [0] * n_bins
        for b, gi, hi in zip(bins, g_node, h_node, strict=True):
            gh[b] += gi
            hh[b] += hi
        for b, c in Counter(bins).items():
            cnt[b] = c
        out.append((gh, hh, cnt))
    return out


def subtract(parent, child):
    """The sibling's histograms: parent minus child (half the work of counting them)."""
    return [
        (
            [a - b for a, b in zip(pg, cg, strict=True)],
            [a - b for a, b in zip(ph, ch, strict=True)],
            [a - b for a, b in zip(pc, cc, strict=True)],
        )
        for (pg, ph, pc), (cg, ch, cc) in zip(parent, child, strict=True)
    ]


def build_tree(idx, hists, cols, g, h, depth, hp, n_bins):
    """A node: ("leaf", value) or ("split", feature, bin threshold, left, right)."""
    l2, min_leaf = hp["l2"], hp["min_samples_leaf"]
    gs, hs = math.fsum(g[i] for i in idx), math.fsum(h[i] for i in idx)
    leaf = ("leaf", -gs / (hs + l2))
    if depth == 0 or len(idx) < 2 * min_leaf:
        return leaf
    parent = gs * gs / (hs + l2)
    best = (1e-9, -1, -1)
    for j, (gh, hh, cnt) in enumerate(hists):
        gl = hl = 0.0
        nl = 0
        for b in range(n_bins - 1):
            gl, hl, nl = gl + gh[b], hl + hh[b], nl + cnt[b]
            if nl < min_leaf:
                continue
            if len(idx) - nl < min_leaf:
                break
            gr, hr = gs - gl, hs - hl
            gain = gl * gl / (hl + l2) + gr * gr / (hr + l2) - parent
            if gain > best[0]:
                best = (gain, j, b)
    _, j, b = best
    if j < 0:
        return leaf
    left = [i for i in idx if cols[j][i] <= b]
    right = [i for i in idx if cols[j][i] > b]
    h_left = h_right = None
    if depth > 1:
        if len(left) <= len(right):
            h_left = histograms(left, cols, g, h, n_bins)
            h_right = subtract(hists, h_left)
        else:
            h_right = histograms(right, cols, g, h, n_bins)
            h_left = subtract(hists, h_right)
    return (
        "split",
        j,
        b,
        build_tree(left, h_left, cols, g, h, depth - 1, hp, n_bins),
        build_tree(right, h_right, cols, g, h, depth - 1, hp, n_bins),
    )


def predict(tree, row_bins) -> float:
    while tree[0] == "split":
        tree = tree[3] if row_bins[tree[1]] <= tree[2] else tree[4]
    return tree[1]


def stable_sample(rng: random.Random, n: int, k: int) -> list[int]:
    """k of range(n), sorted (a partial Fisher-Yates on random(), whose sequence is the same on
    every Python version, unlike random.sample's)."""
    pool = list(range(n))
    for i in range(k):
        j = i + int(rng.random() * (n - i))
        pool[i], pool[j] = pool[j], pool[i]
    return sorted(pool[:k])


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def train_and_score(hp: dict[str, float]) -> tuple[float, float]:
    rng = random.Random(DATA_SEED)
    xtr, ytr = make_data(rng, N_TRAIN)
    xva, yva = make_data(rng, N_VAL)
    n_bins = int(hp["n_bins"])
    edges = [bin_edges([x[j] for x in xtr], n_bins) for j in range(N_FEATURES)]
    cols = [[to_bin(x[j], edges[j]) for x in xtr] for j in range(N_FEATURES)]
    rows_tr = [[cols[j][i] for j in range(N_FEATURES)] for i in range(N_TRAIN)]
    rows_va = [[to_bin(x[j], edges[j]) for j in range(N_FEATURES)] for x in xva]

    base = math.log((sum(ytr) + 1) / (N_TRAIN - sum(ytr) + 1))
    ftr, fva = [base] * N_TRAIN, [base] * N_VAL
    sub_rng = random.Random(DATA_SEED + 1)
    n_sub = max(1, round(hp["subsample"] * N_TRAIN))
    for _ in range(int(hp["n_estimators"])):
        p = [sigmoid(f) for f in ftr]
        g = [pi - yi for pi, yi in zip(p, ytr, strict=True)]
        h = [max(pi * (1 - pi), 1e-6) for pi in p]
        idx = stable_sample(sub_rng, N_TRAIN, n_sub) if n_sub < N_TRAIN else list(range(N_TRAIN))
        tree = build_tree(idx, histograms(idx, cols, g, h, n_bins), cols, g, h, int(hp["max_depth"]), hp, n_bins)
        lr = hp["learning_rate"]
        ftr = [f + lr * predict(tree, r) for f, r in zip(ftr, rows_tr, strict=True)]
        fva = [f + lr * predict(tree, r) for f, r in zip(fva, rows_va, strict=True)]
    train_acc = sum((f > 0) == (y == 1) for f, y in zip(ftr, ytr, strict=True)) / N_TRAIN
    val_acc = sum((f > 0) == (y == 1) for f, y in zip(fva, yva, strict=True)) / N_VAL
    return train_acc, val_acc


def main() -> int:
    try:
        hp = load_hparams(HPARAMS.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, HparamError) as e:
        print(f"error: hparams.json: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    train_acc, val_acc = train_and_score(hp)
    print(f"hparams: {json.dumps(hp)}")
    print(f"train_time_s: {time.perf_counter() - t0:.2f}")
    print(f"train_accuracy: {train_acc:.4f}")
    print(f"val_accuracy: {val_acc:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
