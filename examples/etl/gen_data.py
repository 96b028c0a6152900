"""The ETL data set: messy order rows and the clean records they must become. Part of the harness.

`generate()` is deterministic: evaluate.py calls it for the expected records and checks that
data/orders.csv is exactly its raw text. `python gen_data.py` rewrites data/orders.csv.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import random
from pathlib import Path

SEED = 1337
ROWS = 3000
HEADER = ["order_id", "order_date", "customer_email", "amount", "currency", "country", "quantity"]
CSV_PATH = Path(__file__).resolve().parent / "data" / "orders.csv"

CURRENCY_SPELLINGS = {
    "USD": ["USD", "usd", "US$", "$", " USD"],
    "EUR": ["EUR", "eur", "€", "Eur "],
    "GBP": ["GBP", "gbp", "£"],
}
SYMBOL = {"USD": "$", "EUR": "€", "GBP": "£"}
COUNTRY_SPELLINGS = {
    "US": ["US", "us", "USA", "United States", "U.S."],
    "DE": ["DE", "de", "Germany", "Deutschland"],
    "GB": ["GB", "UK", "United Kingdom", "gb"],
    "FR": ["FR", "fr", "France"],
    "NL": ["NL", "Netherlands", "Holland", "nl"],
}
NAMES = ["ana", "ben", "chen", "dana", "eli", "fatima", "goran", "hana", "ivan", "jo", "kai", "lena", "mo"]
DOMAINS = ["example.com", "mail.example.org", "shop.test", "corp.example.net"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class StableRandom:
    """choice/randrange/randint built on random() alone: only seed() and random() are
    guaranteed to give the same sequence on every Python version, and the committed CSV must
    match what this module generates wherever the harness runs."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def random(self) -> float:
        return self._r.random()

    def randrange(self, a: int, b: int | None = None) -> int:
        lo, hi = (0, a) if b is None else (a, b)
        return lo + int(self._r.random() * (hi - lo))

    def randint(self, a: int, b: int) -> int:
        return self.randrange(a, b + 1)

    def choice(self, seq):
        return seq[self.randrange(len(seq))]


def _clean_record(rng: StableRandom, order_id: int) -> dict:
    day = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randrange(730))
    email = f"{rng.choice(NAMES)}.{rng.choice(NAMES)}{rng.randrange(100)}@{rng.choice(DOMAINS)}"
    return {
        "order_id": order_id,
        "date": day.isoformat(),
        "email": email,
        "amount_cents": rng.choice([rng.randrange(100, 10_000), rng.randrange(10_000, 500_000)]),
        "currency": rng.choice(["USD"] * 5 + ["EUR"] * 3 + ["GBP"] * 2),
        "country": rng.choice(list(COUNTRY_SPELLINGS)),
        "quantity": rng.choice([1] * 6 + [2, 2, 3, 4, 10]),
    }


def _messy_id(rng: StableRandom, oid: int) -> str:
    return rng.choice([str(oid)] * 6 + [f" {oid}", f"ORD-{oid}", f"#{oid}", f"{oid} "])


def _messy_date(rng: StableRandom, iso: str) -> str:
    d = dt.date.fromisoformat(iso)
    forms = [
        iso,
        iso,
        d.strftime("%Y/%m/%d"),
        d.strftime("%d.%m.%Y"),
        d.strftime("%m/%d/%Y"),
        f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    ]
    return rng.choice(forms)


def _messy_email(rng: StableRandom, email: str) -> str:
    forms = [email] * 5 + [email.upper(), f" {email} ", f"mailto:{email}", email.capitalize()]
    return rng.choice(forms)


def _messy_amount(rng: StableRandom, cents: int, currency: str) -> str:
    units, frac = divmod(cents, 100)
    plain = f"{units}.{frac:02d}"
    grouped = f"{units:,}.{frac:02d}"
    forms = [plain] * 4 + [grouped, f"{SYMBOL[currency]}{grouped}", f" {plain} ", f"{currency} {plain}"]
    if frac == 0:
        forms.append(str(units))
    elif frac % 10 == 0:
        forms.append(f"{units}.{frac // 10}")
    return rng.choice(forms)


def _messy_quantity(rng: StableRandom, q: int) -> str:
    forms = [str(q)] * 6 + [f" {q}", f"{q} pcs", f"{q}x"]
    if q == 1:
        forms.append("")
    return rng.choice(forms)


def _messy_row(rng: StableRandom, rec: dict) -> list[str]:
    return [
        _messy_id(rng, rec["order_id"]),
        _messy_date(rng, rec["date"]),
        _messy_email(rng, rec["email"]),
        _messy_amount(rng, rec["amount_cents"], rec["currency"]),
        rng.choice(CURRENCY_SPELLINGS[rec["currency"]]),
        rng.choice(COUNTRY_SPELLINGS[rec["country"]]),
        _messy_quantity(rng, rec["quantity"]),
    ]


def _broken_row(rng: StableRandom, rec: dict) -> list[str]:
    """A row that breaks exactly one rule, so it must be dropped."""
    row = _messy_row(rng, rec)
    kind = rng.randrange(8)
    if kind == 0:
        row[0] = rng.choice(["", "N/A", "ORD-"])
    elif kind == 1:
        row[1] = rng.choice(["", "unknown", "2023-02-30", "31.04.2023", "13/13/2023"])
    elif kind == 2:
        row[2] = rng.choice(["", "no-email", "ana.ben@", "@example.com", "ana ben@example.com"])
    elif kind == 3:
        row[3] = rng.choice(["", "-12.50", "abc", "12.5.0"])
    elif kind == 4:
        row[4] = rng.choice(["", "JPY", "btc"])
    elif kind == 5:
        row[5] = rng.choice(["", "Atlantis", "XX"])
    elif kind == 6:
        row[6] = rng.choice(["0", "-1", "many", "2.5"])
    else:
        row = row[:4]  # a truncated line
    return row


def generate() -> tuple[str, list[dict]]:
    """(raw CSV text, the expected clean records in output order)."""
    rng = StableRandom(SEED)
    rows: list[list[str]] = []
    expected: list[dict] = []
    next_id = 100_000
    while len(rows) < ROWS:
        r = rng.random()
        next_id += rng.randint(1, 3)
        if r < 0.05 and expected:
            # A re-sent order: the same record again, formatted differently; the first wins.
            rows.append(_messy_row(rng, rng.choice(expected[-200:])))
        elif r < 0.10:
            rows.append(_broken_row(rng, _clean_record(rng, next_id)))
        elif r < 0.11:
            rows.append([])  # a blank line
        else:
            rec = _clean_record(rng, next_id)
            expected.append(rec)
            rows.append(_messy_row(rng, rec))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(rows)
    return buf.getvalue(), expected


if __name__ == "__main__":
    text, expected = generate()
    CSV_PATH.parent.mkdir(exist_ok=True)
    CSV_PATH.write_text(text, encoding="utf-8")
    print(f"{CSV_PATH}: {len(text.encode())} bytes, {ROWS} rows, {len(expected)} valid orders")
