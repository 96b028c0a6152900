"""Feature-engineering benchmark: the harness. Do not edit; the agent edits features.py only.

Calls `features(row)` from features.py on every row of data/train.csv and data/test.csv,
standardises each feature with the training mean and deviation, fits a fixed model (logistic
regression with an L2 penalty L2, by Newton's method) on the training split and prints

    auc: <area under the ROC curve on the test split>   (higher is better)

Deterministic. An exception in features.py, rows with different feature names, a value that
is not a finite number, or more than MAX_FEATURES features exits non-zero.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
import time
import traceback
from math import exp, log1p
from operator import mul
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the repository

ROOT = Path(__file__).resolve().parent
TARGET = ROOT / "features.py"
DATA = ROOT / "data"
LABEL = "churned"
NEWTON_STEPS = 25  # at most; it stops earlier once the loss no longer falls
L2 = 1e-3
MAX_FEATURES = 40
NUMERIC = ("customer_id", "age", "income", "tenure_months", "visits_per_month", "support_tickets")


class FeatureError(Exception):
    pass


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in NUMERIC:
            r[k] = float(r[k])
        r[LABEL] = int(r[LABEL])
    return rows


def load_features():
    spec = importlib.util.spec_from_file_location("features", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.features


def matrix(fn, rows: list[dict], names: list[str] | None) -> tuple[list[str], list[list[float]]]:
    """Feature columns (one list per feature) for `rows`; `names` fixes the expected names."""
    out: list[dict] = []
    for i, r in enumerate(rows):
        row = {k: v for k, v in r.items() if k != LABEL}  # the label is never shown to features()
        f = fn(row)
        if not isinstance(f, dict):
            raise FeatureError(f"features() must return a dict of name -> number, got {type(f).__name__}")
        if names is None:
            names = list(f)
            if not 1 <= len(names) <= MAX_FEATURES:
                raise FeatureError(f"features() must return 1 to {MAX_FEATURES} features, got {len(names)}")
        elif list(f) != names:
            raise FeatureError(f"row {i}: feature names {sorted(f)} differ from the first row's {sorted(names)}")
        out.append(f)
    cols = []
    for name in names:
        col = []
        for f in out:
            v = f[name]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise FeatureError(f"feature {name!r} must be a finite number, got {v!r}")
            col.append(float(v))
        cols.append(col)
    return names, cols


def standardise(train: list[list[float]], test: list[list[float]]) -> None:
    for tr, te in zip(train, test, strict=True):
        mean = math.fsum(tr) / len(tr)
        sd = math.sqrt(math.fsum((x - mean) ** 2 for x in tr) / len(tr)) or 1.0
        tr[:] = [(x - mean) / sd for x in tr]
        te[:] = [(x - mean) / sd for x in te]


def scores(cols: list[list[float]], w: list[float], b: float) -> list[float]:
    z = [b] * len(cols[0])
    for wj, col in zip(w, cols, strict=True):
        z = [zi + wj * xi for zi, xi in zip(z, col, strict=True)]
    return z


def solve(a: list[list[float]], v: list[float]) -> list[float]:
    """Solve a x = v by Gaussian elimination with partial pivoting (a is small and well-posed)."""
    n = len(v)
    m = [[*row, vi] for row, vi in zip(a, v, strict=True)]
    for c in range(n):
        piv = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[piv] = m[piv], m[c]
        for r in range(c + 1, n):
            f = m[r][c] / m[c][c]
            if f:
                m[r] = [x - f * y for x, y in zip(m[r], m[c], strict=True)]
    x = [0.0] * n
    for c in range(n - 1, -1, -1):
        x[c] = (m[c][n] - sum(m[c][k] * x[k] for k in range(c + 1, n))) / m[c][c]
    return x


def loss(cols: list[list[float]], y: list[int], w: list[float], b: float) -> float:
    total = math.fsum(
        (log1p(exp(-z)) if z >= 0 else log1p(exp(z)) - z) + (z if yi == 0 else 0.0)
        for z, yi in zip(scores(cols, w, b), y, strict=True)
    )
    return total / len(y) + L2 / 2 * math.fsum(wj * wj for wj in w)


def train(cols: list[list[float]], y: list[int]) -> tuple[list[float], float]:
    """L2-regularised logistic regression (intercept not penalised), fitted by Newton's method."""
    n, d = len(y), len(cols)
    xs = [*cols, [1.0] * n]  # the last column is the intercept
    w, b = [0.0] * d, 0.0
    current = loss(cols, y, w, b)
    for _ in range(NEWTON_STEPS):
        p = [1 / (1 + exp(-z)) if z >= 0 else 1 - 1 / (1 + exp(z)) for z in scores(cols, w, b)]
        r = [pi - yi for pi, yi in zip(p, y, strict=True)]
        q = [pi * (1 - pi) for pi in p]
        grad = [sum(map(mul, r, x)) / n for x in xs]
        for j in range(d):
            grad[j] += L2 * w[j]
        qx = [list(map(mul, q, x)) for x in xs]
        hess = [[0.0] * (d + 1) for _ in range(d + 1)]
        for j in range(d + 1):
            for k in range(j, d + 1):
                hess[j][k] = hess[k][j] = sum(map(mul, qx[j], xs[k])) / n
            if j < d:
                hess[j][j] += L2
        step = solve(hess, grad)
        # Halve the step until the loss does not rise (Newton can overshoot far from the optimum).
        for _ in range(30):
            w_new = [wj - sj for wj, sj in zip(w, step, strict=False)]
            b_new = b - step[d]
            new = loss(cols, y, w_new, b_new)
            if new <= current:
                break
            step = [s / 2 for s in step]
        else:
            break
        w, b, done = w_new, b_new, current - new < 1e-12
        current = new
        if done:
            break
    return w, b


def auc(s: list[float], y: list[int]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    order = sorted(range(len(s)), key=s.__getitem__)
    ranks = [0.0] * len(s)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and s[order[j + 1]] == s[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    pos = sum(y)
    neg = len(y) - pos
    rank_sum = math.fsum(r for r, yi in zip(ranks, y, strict=True) if yi)
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def main() -> int:
    tr_rows, te_rows = read_rows(DATA / "train.csv"), read_rows(DATA / "test.csv")
    t0 = time.perf_counter()
    try:
        fn = load_features()
        names, tr = matrix(fn, tr_rows, None)
        _, te = matrix(fn, te_rows, names)
    except FeatureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception:
        print("error: features.py raised:", file=sys.stderr)
        traceback.print_exc(limit=-3)
        return 1
    standardise(tr, te)
    y_tr, y_te = [r[LABEL] for r in tr_rows], [r[LABEL] for r in te_rows]
    w, b = train(tr, y_tr)
    print(f"features ({len(names)}): " + ", ".join(f"{n}={wj:+.3f}" for n, wj in zip(names, w, strict=True)))
    print(f"time_s: {time.perf_counter() - t0:.2f}")
    print(f"auc_train: {auc(scores(tr, w, b), y_tr):.4f}")
    print(f"auc: {auc(scores(te, w, b), y_te):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
