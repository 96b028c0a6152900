"""Clean the raw order export (data/orders.csv) into order records.

`transform(text)` gets the whole CSV file as one string and returns a list of dicts, one per
valid order, in input order, each with exactly these keys:

    order_id      int         "100123", " 100123", "ORD-100123", "#100123" -> 100123
    date          str         ISO "YYYY-MM-DD"; the input uses YYYY-MM-DD, YYYY/MM/DD,
                              DD.MM.YYYY, MM/DD/YYYY (slashes are US order) and "Mon D, YYYY"
    email         str         stripped, lower case, without a "mailto:" prefix
    amount_cents  int         "1234.5", "1,234.50", "$1,234.50", "USD 1234.50" -> 123450
    currency      str         "USD", "EUR" or "GBP" (input: usd, US$, $, eur, €, gbp, £ ...)
    country       str         ISO code US, DE, GB, FR or NL (input: codes, names, "UK", "U.S." ...)
    quantity      int         >= 1; "3", "3 pcs", "3x"; empty means 1

A row is dropped when any field cannot be parsed or breaks a rule: no order id, an invalid
date, an email that is not `local@domain.tld` (no spaces), a negative or malformed amount,
an unknown currency or country, a quantity that is not a positive integer, or missing
columns. Blank lines are skipped. An order id seen before is a re-sent order: the first
valid row wins.

The harness (evaluate.py) compares the records with the expected ones (error_rate) and
times this function (rows_per_sec).
"""

import csv
import io
import re
from datetime import datetime

DATE_FORMATS = ["%Y-%m-%d", "%Y/%m/%d", "%d.%m.%Y", "%m/%d/%Y", "%b %d, %Y"]
CURRENCIES = {"usd": "USD", "us$": "USD", "$": "USD", "eur": "EUR", "€": "EUR", "gbp": "GBP", "£": "GBP"}
COUNTRIES = {
    "us": "US",
    "usa": "US",
    "united states": "US",
    "u.s.": "US",
    "de": "DE",
    "germany": "DE",
    "deutschland": "DE",
    "gb": "GB",
    "uk": "GB",
    "united kingdom": "GB",
    "fr": "FR",
    "france": "FR",
    "nl": "NL",
    "netherlands": "NL",
    "holland": "NL",
}


def parse_id(s):
    m = re.compile(r"^(?:ORD-|#)?(\d+)$").match(s.strip())
    return int(m.group(1)) if m else None


def parse_date(s):
    s = s.strip()
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(s, fmt).date().isoformat()
        except ValueError:
            continue
    return None


def parse_email(s):
    s = s.strip().lower().removeprefix("mailto:")
    return s if re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$").match(s) else None


def parse_amount(s):
    s = s.strip()
    for prefix in ("USD", "EUR", "GBP", "$", "€", "£"):
        if s.startswith(prefix):
            s = s[len(prefix) :].strip()
    s = s.replace(",", "")
    m = re.compile(r"^(\d+)(?:\.(\d{1,2}))?$").match(s)
    if not m:
        return None
    return int(m.group(1)) * 100 + int((m.group(2) or "0").ljust(2, "0"))


def parse_quantity(s):
    s = s.strip()
    if s == "":
        return 1
    m = re.compile(r"^(\d+)\s*(?:pcs|x)?$").match(s)
    if not m or int(m.group(1)) < 1:
        return None
    return int(m.group(1))


def transform(text):
    rows = list(csv.reader(io.StringIO(text)))
    out = []
    for row in rows[1:]:
        if not row:
            continue
        if len(row) != 7:
            continue
        rec = {
            "order_id": parse_id(row[0]),
            "date": parse_date(row[1]),
            "email": parse_email(row[2]),
            "amount_cents": parse_amount(row[3]),
            "currency": CURRENCIES.get(row[4].strip().lower()),
            "country": COUNTRIES.get(row[5].strip().lower()),
            "quantity": parse_quantity(row[6]),
        }
        if any(v is None for v in rec.values()):
            continue
        # A re-sent order: keep the first one.
        if any(r["order_id"] == rec["order_id"] for r in out):
            continue
        out.append(rec)
    return out
