"""Which way a metric is better, read from its name (for `init`): val_loss -> min, f1 -> max.

Only usual words count; a name without one, or with words that disagree, gives None, and the
user says which way is better (`--metric NAME:max|min`). Never a silent default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LOWER_IS_BETTER = frozenset(
    [
        *("loss", "error", "err", "latency", "lat", "time", "duration", "runtime", "ms", "us", "ns"),
        *("sec", "secs", "second", "seconds", "size", "bytes", "kb", "mb", "gb", "memory", "mem", "rss"),
        *("cost", "usd", "price", "perplexity", "ppl", "bpb", "bpc", "wer", "cer", "mse", "mae", "rmse"),
        *("mape", "nll", "regret", "miss", "failure", "violation"),
    ]
)
HIGHER_IS_BETTER = frozenset(
    [
        *("acc", "accuracy", "f1", "score", "auc", "precision", "recall", "throughput", "qps", "rps", "tps"),
        *("fps", "reward", "bleu", "rouge", "chrf", "map", "ndcg", "mrr", "iou", "dice", "psnr", "ssim", "r2"),
        *("hit", "win", "quality", "speedup", "gain", "improvement", "reduction", "saving", "coverage"),
        *("success", "pass", "correct", "top1", "top5"),
    ]
)
# "<something> per <unit of time>" is a rate: a throughput unless the something is a cost.
_TIME_UNITS = frozenset(["s", "sec", "secs", "second", "seconds", "min", "minute", "minutes", "h", "hour", "hours"])


def words(name: str) -> list[str]:
    """`p99LatencyMs` -> ["p99", "latency", "ms"]; `val_loss` -> ["val", "loss"]."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    return [w for w in re.split(r"[^a-z0-9]+", spaced) if w]


def _votes(ws: Sequence[str]) -> dict[str, str]:
    """direction -> the first word that says so (plural and trailing digits ignored)."""
    found: dict[str, str] = {}
    for w in ws:
        for form in (w, w.rstrip("0123456789"), w.removesuffix("s")):
            if form in LOWER_IS_BETTER:
                found.setdefault("min", w)
            elif form in HIGHER_IS_BETTER:
                found.setdefault("max", w)
    return found


def infer_direction(name: str) -> tuple[str, str] | None:
    """("min" | "max", the words it came from) for a usual metric name, else None.

    `X_per_Y` is judged by X (errors_per_hour: lower is better); a neutral X per unit of time is
    a throughput (rows_per_sec: higher is better). Names whose words disagree (loss_reduction)
    get None.
    """
    ws = words(name)
    after: list[str] = []
    if "per" in ws:
        cut = ws.index("per")
        ws, after = ws[:cut], ws[cut + 1 :]
    votes = _votes(ws)
    if not votes and after[:1] and after[0] in _TIME_UNITS:
        return "max", f"per {after[0]}"
    if len(votes) != 1:
        return None
    direction, word = next(iter(votes.items()))
    return direction, word
