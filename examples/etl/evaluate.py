"""ETL benchmark: the harness. Do not edit; the agent edits transform.py only.

Calls `transform(text)` from transform.py on data/orders.csv, compares the records with the
expected ones (gen_data.py) and prints

    error_rate: <(missing + wrong + extra records) / expected records>   (must stay <= 0.01)
    rows_per_sec: <input rows / fastest of several timed calls>         (higher is better)

Calls are timed in CPU time of this process (time.process_time), not wall-clock time, so
other programs competing for the CPU barely move the number.

An exception in transform.py, or a result that is not a list of dicts, exits non-zero.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the repository
from gen_data import CSV_PATH, generate  # noqa: E402

ROOT = Path(__file__).resolve().parent
TARGET = ROOT / "transform.py"
KEYS = ("order_id", "date", "email", "amount_cents", "currency", "country", "quantity")
MAX_CALLS = 7  # timed calls: the fastest one is reported
TIME_BUDGET_S = 0.3  # CPU seconds: stop timing further calls once this much has been spent


def load_transform():
    spec = importlib.util.spec_from_file_location("transform", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.transform


def count_errors(records: list, expected: list[dict]) -> tuple[int, int, int]:
    """(missing, wrong, extra): a record is wrong when its values differ from the expected."""
    want = {r["order_id"]: r for r in expected}
    seen: set = set()
    wrong = extra = 0
    for rec in records:
        oid = rec.get("order_id")
        if oid not in want or oid in seen:
            extra += 1
            continue
        seen.add(oid)
        got = {k: rec.get(k) for k in KEYS}
        if set(rec) != set(KEYS) or any(type(got[k]) is not type(want[oid][k]) for k in KEYS) or got != want[oid]:
            wrong += 1
    return len(want) - len(seen), wrong, extra


def main() -> int:
    text = CSV_PATH.read_text(encoding="utf-8")
    raw, expected = generate()
    if text != raw:
        print("error: data/orders.csv differs from gen_data.generate(); run `python gen_data.py`", file=sys.stderr)
        return 3
    n_rows = len(text.splitlines()) - 1
    try:
        transform = load_transform()
        times = []
        records = None
        while len(times) < MAX_CALLS and sum(times) < TIME_BUDGET_S:
            t0 = time.process_time()
            out = transform(text)
            times.append(time.process_time() - t0)
            records = out if records is None else records
    except Exception:
        print("error: transform.py raised:", file=sys.stderr)
        traceback.print_exc(limit=-3)
        return 1
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        print(f"error: transform() must return a list of dicts, got {type(records).__name__}", file=sys.stderr)
        return 1
    missing, wrong, extra = count_errors(records, expected)
    best = min(times)
    print(f"rows: {n_rows}  records: {len(records)}  expected: {len(expected)}")
    print(f"missing: {missing}  wrong: {wrong}  extra: {extra}")
    print(f"timed calls: {len(times)}  fastest: {best * 1000:.1f} ms")
    print(f"error_rate: {(missing + wrong + extra) / len(expected):.4f}")
    print(f"rows_per_sec: {n_rows / best:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
