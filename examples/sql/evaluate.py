"""Time query.sql on a generated SQLite shop database and check that its result is right.

Usage: python evaluate.py [--write-expected]

The database (customers, products, orders, order_items) is generated in memory from a fixed
seed, so every run sees the same data. query.sql may hold several statements: all but the
last are setup (CREATE INDEX, CREATE TEMP TABLE, ...), the last is the SELECT whose rows are
the result. Each of the RUNS runs starts from a fresh copy of the database and times all the
statements together (including fetching the rows). The result must equal expected.json as a
set of rows (order and column names do not matter); a different result exits non-zero, the
same as a crash. The last line is the metric, the median over the runs:

    exec_time_ms: 12.345

Exit status: 0 on success, 1 on a wrong result, 2 on an SQL error, 3 if a run is too slow.
This file and expected.json are the harness: the experiment loop edits only query.sql.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUERY_FILE = HERE / "query.sql"
EXPECTED_FILE = HERE / "expected.json"

RUNS = 5
RUN_CAP_S = 10.0  # a run slower than this is aborted: the query is broken, not just slow
SEED = 20240601
N_CUSTOMERS = 800
N_PRODUCTS = 200
N_ORDERS = 3500
REGIONS = ("north", "south", "east", "west", "central")
CATEGORIES = ("books", "games", "garden", "kitchen", "music", "sports", "toys", "tools")
STATUSES = ("complete", "complete", "complete", "complete", "complete", "complete", "pending", "cancelled")

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, region TEXT NOT NULL, signup_day INTEGER NOT NULL);
CREATE TABLE products (
    id INTEGER PRIMARY KEY, category TEXT NOT NULL, price_cents INTEGER NOT NULL);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
    order_day INTEGER NOT NULL, status TEXT NOT NULL);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id), product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL, price_cents INTEGER NOT NULL);
"""


class EvalError(Exception):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def build_database() -> sqlite3.Connection:
    """The shop database. Only Random.random() is used: its sequence is stable across Pythons."""
    rng = random.Random(SEED)

    def pick(n: int) -> int:  # 0 <= k < n
        return int(rng.random() * n)

    customers = [(i, f"customer{i:04d}", REGIONS[pick(5)], pick(730)) for i in range(1, N_CUSTOMERS + 1)]
    products = [(i, CATEGORIES[pick(8)], 199 + pick(19800)) for i in range(1, N_PRODUCTS + 1)]
    orders, items = [], []
    for i in range(1, N_ORDERS + 1):
        customer = 1 + int(rng.random() ** 2 * N_CUSTOMERS)  # a few customers order a lot
        orders.append((i, customer, pick(730), STATUSES[pick(len(STATUSES))]))
        for _ in range(1 + pick(4)):
            product = products[pick(N_PRODUCTS)]
            items.append((i, product[0], 1 + pick(5), product[2]))
    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA)
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", customers)
    conn.executemany("INSERT INTO products VALUES (?, ?, ?)", products)
    conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", orders)
    conn.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?)", items)
    conn.commit()
    return conn


def split_statements(sql: str) -> list[str]:
    """Split on the semicolons that end a statement (not those inside strings or comments)."""
    statements, current = [], ""
    for ch in sql:
        current += ch
        if ch == ";" and sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip() and not _only_comments(current):
        statements.append(current.strip())
    return [s for s in statements if not _only_comments(s)]


def _only_comments(sql: str) -> bool:
    lines = [ln.split("--", 1)[0].strip() for ln in sql.splitlines()]
    return not "".join(lines).strip(" ;")


def fresh_copy(template: sqlite3.Connection) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    template.backup(conn)
    return conn


def run_once(template: sqlite3.Connection, statements: list[str]) -> tuple[float, list[tuple[object, ...]]]:
    conn = fresh_copy(template)
    deadline = time.perf_counter() + RUN_CAP_S
    conn.set_progress_handler(lambda: int(time.perf_counter() > deadline), 10_000)
    try:
        start = time.perf_counter()
        cur = None
        for stmt in statements:
            cur = conn.execute(stmt)
        rows = cur.fetchall() if cur is not None else []
        elapsed = time.perf_counter() - start
    except sqlite3.OperationalError as e:
        if time.perf_counter() > deadline:
            raise EvalError(f"a run took longer than {RUN_CAP_S:.0f} s; aborted", 3) from None
        raise EvalError(f"SQL error: {e}", 2) from None
    except sqlite3.Error as e:
        raise EvalError(f"SQL error: {e}", 2) from None
    finally:
        conn.close()
    if cur is None or cur.description is None:
        raise EvalError("the last statement of query.sql must be a SELECT that returns rows", 2)
    return elapsed, rows


def normalise(rows: list[tuple[object, ...]] | list[list[object]]) -> list[list[object]]:
    """Rows as sorted JSON-like lists; floats rounded so the summation order does not matter."""
    out = [[round(v, 6) if isinstance(v, float) else v for v in row] for row in rows]
    return sorted(out, key=lambda row: json.dumps(row))


def compare(got: list[list[object]], expected: list[list[object]]) -> None:
    if got == expected:
        return
    width = {len(r) for r in got} | {len(r) for r in expected}
    exp_set = {json.dumps(r) for r in expected}
    got_set = {json.dumps(r) for r in got}
    lines = [f"wrong result: expected {len(expected)} rows, got {len(got)}"]
    if len(width) > 1:
        lines.append(f"  column counts differ: expected {len(expected[0])}, got {len(got[0]) if got else 0}")
    missing = [r for r in expected if json.dumps(r) not in got_set]
    extra = [r for r in got if json.dumps(r) not in exp_set]
    lines += [f"  missing: {r}" for r in missing[:5]] + (
        [f"  ... {len(missing) - 5} more missing"] if len(missing) > 5 else []
    )
    lines += [f"  unexpected: {r}" for r in extra[:5]] + (
        [f"  ... {len(extra) - 5} more unexpected"] if len(extra) > 5 else []
    )
    raise EvalError("\n".join(lines), 1)


def print_plan(template: sqlite3.Connection, statements: list[str]) -> None:
    conn = fresh_copy(template)
    try:
        for stmt in statements[:-1]:
            conn.execute(stmt)
        print("query plan of the last statement:")
        for row in conn.execute("EXPLAIN QUERY PLAN " + statements[-1]):
            print(f"  {row[-1]}")
    except sqlite3.Error as e:
        print(f"  (no plan: {e})")
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-expected", action="store_true", help="store the current result as expected.json")
    args = ap.parse_args(argv)
    try:
        statements = split_statements(QUERY_FILE.read_text(encoding="utf-8"))
        if not statements:
            raise EvalError("query.sql has no statements", 2)
        template = build_database()
        times, results = [], []
        for _ in range(RUNS):
            elapsed, rows = run_once(template, statements)
            times.append(elapsed * 1000)
            results.append(normalise(rows))
        if any(r != results[0] for r in results):
            raise EvalError("the query returned different rows on different runs", 1)
        if args.write_expected:
            EXPECTED_FILE.write_text(json.dumps(results[0], separators=(",", ":")) + "\n", encoding="utf-8")
            print(f"wrote {len(results[0])} rows to {EXPECTED_FILE.name}")
        compare(results[0], json.loads(EXPECTED_FILE.read_text(encoding="utf-8")))
        print_plan(template, statements)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    print(f"result: {len(results[0])} rows, as expected")
    print("runs_ms: " + " ".join(f"{t:.2f}" for t in times))
    print(f"exec_time_ms: {statistics.median(times):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
