"""Train the model in train.py on data/train.csv and score it on data/val.csv.

Usage: python evaluate.py

train.py must define train(x, y, num_classes) returning a function that maps an (n, 2)
array of inputs to an (n, num_classes) array of class probabilities. The harness times the
call to train() and refuses a run over TIME_CAP_S (like a fixed compute budget). The last
lines are the metrics:

    val_accuracy: 0.8133
    val_loss: 0.5123       mean cross-entropy on the validation set (lower is better)

Exit status: 0 on success, 1 if train.py fails or returns bad predictions (wrong shape,
NaN, not probabilities), 3 if training exceeds the time cap.
This file and data/ are the harness: the experiment loop edits only train.py.

train.py's code runs in a child process that never gets the metric channel: under
autoexp-mcp (AUTOEXP_METRIC_FD set) the harness reports its figures there, so whatever
train.py prints, the server reads only what this file computed.
"""

from __future__ import annotations

import os

# One BLAS thread: results are bit-for-bit reproducible and small matrices run faster.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import ctypes  # noqa: E402
import importlib.util  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
TRAIN_FILE = HERE / "train.py"
DATA_DIR = HERE / "data"
TIME_CAP_S = 5.0  # wall-clock budget of one call to train()
NUM_CLASSES = 3
PROB_FLOOR = 1e-12  # a probability of 0 for the true class costs -log(1e-12) = 27.6
CHILD_SLACK_S = 30.0  # start-up and prediction time of the child, beyond the training cap

# The metric channel, taken before any code of train.py runs, and closed in every child.
_METRIC_FD = os.environ.pop("AUTOEXP_METRIC_FD", None)
if _METRIC_FD is not None:
    os.set_inheritable(int(_METRIC_FD), False)
    if sys.platform.startswith("linux"):
        # Not dumpable: train.py's processes cannot open this one's descriptors through
        # /proc/<pid>/fd and write to the channel themselves (in the sandbox they lack the
        # capability that would override it).
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0


class EvalError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(DATA_DIR / f"{name}.csv", delimiter=",", skiprows=1)
    return data[:, :2].copy(), data[:, 2].astype(np.int64)


def load_train_module():
    sys.dont_write_bytecode = True  # no __pycache__ in the user's repository
    spec = importlib.util.spec_from_file_location("train", TRAIN_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "train", None)):
        raise EvalError("train.py must define a function train(x, y, num_classes)")
    return module


class _OverBudget(BaseException):  # not an Exception: train.py's own handlers do not catch it
    pass


def _over_budget(signum: int, frame: object) -> None:
    raise _OverBudget


def call_with_cap(fn, *args):
    """fn(*args) and its wall time; stopped with SIGALRM at the cap where the platform has it."""
    armed = hasattr(signal, "setitimer")
    if armed:
        signal.signal(signal.SIGALRM, _over_budget)
        signal.setitimer(signal.ITIMER_REAL, TIME_CAP_S)
    start = time.perf_counter()
    stopped = False
    try:
        result = fn(*args)
    except _OverBudget:
        stopped, result = True, None
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
    elapsed = time.perf_counter() - start
    if stopped or elapsed > TIME_CAP_S:
        raise EvalError(f"training took over the {TIME_CAP_S:.0f} s budget ({elapsed:.2f} s); stopped", 3)
    return result, elapsed


def check_probabilities(p: object, n: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (n, NUM_CLASSES):
        raise EvalError(f"predictions must have shape ({n}, {NUM_CLASSES}), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise EvalError("predictions contain NaN or infinity (did training diverge?)")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise EvalError("predictions must be probabilities: non-negative, each row summing to 1")
    return p


def run_train() -> int:
    """In the child: train, predict, and save the predictions for the parent to score."""
    out = sys.argv[2]
    x_train, y_train = load_split("train")
    x_val, _ = load_split("val")
    try:
        module = load_train_module()
        predict, train_s = call_with_cap(module.train, x_train.copy(), y_train.copy(), NUM_CLASSES)
        if not callable(predict):
            raise EvalError(f"train() must return a function from inputs to probabilities, got {predict!r:.80}")
        p_val = np.asarray(predict(x_val.copy()), dtype=np.float64)
        p_train = np.asarray(predict(x_train.copy()), dtype=np.float64)
        np.savez(out, p_val=p_val, p_train=p_train, t=train_s)  # plain arrays: no pickle crosses back
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except Exception:
        traceback.print_exc(limit=-3)
        print("error: train.py raised an exception", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    _, y_train = load_split("train")
    _, y_val = load_split("val")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "predictions.npz")
        try:
            child = subprocess.run(
                [sys.executable, __file__, "--train", out], stdin=subprocess.DEVNULL, timeout=TIME_CAP_S + CHILD_SLACK_S
            )
        except subprocess.TimeoutExpired:
            print(f"error: training took over the {TIME_CAP_S:.0f} s budget; stopped", file=sys.stderr)
            return 3
        if child.returncode != 0:
            return child.returncode
        try:
            with np.load(out, allow_pickle=False) as saved:
                p = check_probabilities(saved["p_val"], len(y_val))
                p_train = check_probabilities(saved["p_train"], len(y_train))
                train_s = float(saved["t"])
        except EvalError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.status
    train_acc = float(np.mean(p_train.argmax(axis=1) == y_train))
    val_loss = float(-np.mean(np.log(np.maximum(p[np.arange(len(y_val)), y_val], PROB_FLOOR))))
    val_acc = float(np.mean(p.argmax(axis=1) == y_val))
    figures = (
        f"train_time_s: {train_s:.3f}\n"
        f"train_accuracy: {train_acc:.4f}\n"
        f"val_accuracy: {val_acc:.4f}\n"
        f"val_loss: {val_loss:.4f}\n"
    )
    print(figures, end="")
    if _METRIC_FD is not None:
        with os.fdopen(int(_METRIC_FD), "w") as channel:
            channel.write(figures)
    return 0


if __name__ == "__main__":
    sys.exit(run_train() if sys.argv[1:2] == ["--train"] else main())
