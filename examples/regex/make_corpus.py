"""Regenerate corpus.txt (deterministic). Not part of the eval: the committed corpus is the data.

Each line is one short text; every calendar date in it (day, month and year) is marked as
[[...]]. Lines mix dates in many formats with look-alikes that are not dates (phone numbers,
versions, IP addresses, fractions, SKUs, impossible dates, month names without a day).
"""

from __future__ import annotations

import random
from pathlib import Path

SEED = 20240315
N_LINES = 320

MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
ABBR = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _ymd(r: random.Random) -> tuple[int, int, int]:
    return r.randint(1995, 2029), r.randint(1, 12), r.randint(1, 28)


def _ordinal(d: int) -> str:
    if d in (11, 12, 13):
        return f"{d}th"
    return f"{d}" + {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")


# Date formats and their relative frequency. The baseline rules catch the first two.
def iso(r: random.Random) -> str:
    y, m, d = _ymd(r)
    return f"{y}-{m:02d}-{d:02d}"


def slash2(r: random.Random) -> str:
    y, m, d = _ymd(r)
    return f"{m:02d}/{d:02d}/{y}"


def slash1(r: random.Random) -> str:
    y, m, d = _ymd(r)
    m, d = r.choice([(m, d % 9 + 1), (m % 9 + 1, d), (m % 9 + 1, d % 9 + 1)])
    return f"{m}/{d}/{y}"


def long_us(r: random.Random) -> str:
    y, m, d = _ymd(r)
    return f"{MONTHS[m - 1]} {d}, {y}"


def abbr_us(r: random.Random) -> str:
    y, m, d = _ymd(r)
    dot = r.choice(["", ".", ""])
    name = "Sept" if m == 9 and r.random() < 0.5 else ABBR[m - 1]
    if name == "May":
        dot = ""
    return f"{name}{dot} {d}, {y}"


def day_first(r: random.Random) -> str:
    y, m, d = _ymd(r)
    name = r.choice([MONTHS[m - 1], ABBR[m - 1]])
    return f"{d} {name} {y}"


def dotted(r: random.Random) -> str:
    y, m, d = _ymd(r)
    return f"{d:02d}.{m:02d}.{y}"


def ordinal(r: random.Random) -> str:
    y, m, d = _ymd(r)
    return f"{MONTHS[m - 1]} {_ordinal(d)}, {y}"


def iso_slash(r: random.Random) -> str:  # rare; left for the agent to find
    y, m, d = _ymd(r)
    return f"{y}/{m:02d}/{d:02d}"


def dash_abbr(r: random.Random) -> str:  # rare; left for the agent to find
    y, m, d = _ymd(r)
    return f"{d:02d}-{ABBR[m - 1]}-{y}"


FORMATS = [
    (iso, 26), (slash2, 14), (slash1, 10), (long_us, 15), (abbr_us, 10),
    (day_first, 9), (dotted, 7), (ordinal, 6), (iso_slash, 2), (dash_abbr, 2),
]  # fmt: skip


def date(r: random.Random) -> str:
    fmt = r.choices([f for f, _ in FORMATS], weights=[w for _, w in FORMATS])[0]
    return f"[[{fmt(r)}]]"


# Look-alikes (never marked).
def phone(r: random.Random) -> str:
    a, b, c = r.randint(200, 989), r.randint(200, 999), r.randint(1000, 9999)
    return r.choice([f"{a}-{b}-{c}", f"({a}) {b}-{c}", f"+1 {a} {b} {c}"])


def version(r: random.Random) -> str:
    return f"{r.randint(1, 4)}.{r.randint(0, 19)}.{r.randint(0, 12)}"


def ip(r: random.Random) -> str:
    return f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def sku(r: random.Random) -> str:  # contains an ISO-looking run of digits
    y, m, d = _ymd(r)
    return f"{y}-{m:02d}-{d:02d}{r.randint(10, 99)}"


def bad_iso(r: random.Random) -> str:  # impossible month or day
    y = r.randint(1995, 2029)
    return r.choice([f"{y}-{r.randint(13, 19)}-{r.randint(10, 28)}", f"{y}-{r.randint(1, 12):02d}-{r.randint(40, 99)}"])


def ref_slash(r: random.Random) -> str:  # slash date glued to more digits
    return f"{r.randint(10, 12)}/{r.randint(10, 28)}/{r.randint(1995, 2029)}{r.randint(0, 9)}{r.randint(0, 9)}"


def month_year(r: random.Random) -> str:
    return f"{r.choice(MONTHS)} {r.randint(1995, 2029)}"


def fraction(r: random.Random) -> str:
    return f"{r.randint(1, 3)}/{r.randint(4, 8)}"


def time_(r: random.Random) -> str:
    return f"{r.randint(7, 18)}:{r.choice(['00', '15', '30', '45'])}"


def money(r: random.Random) -> str:
    return f"${r.randint(5, 2999)}.{r.randint(0, 99):02d}"


def season(r: random.Random) -> str:
    y = r.randint(1995, 2028)
    return f"{y}/{(y + 1) % 100:02d}"


def n(r: random.Random) -> str:
    return str(r.randint(2, 950))


# Sentence frames: {D} is a date, anything else a look-alike or a filler.
FRAMES = [
    "Invoice {n} is due on {D}.",
    "The meeting was moved from {D} to {D}.",
    "Please call {phone} before {time} tomorrow.",
    "Release {version} shipped on {D}.",
    "Our office at 10 Main St closes on {D} for the holidays.",
    "Server {ip} rebooted at {time} without errors.",
    "Order {sku} was dispatched; tracking updates daily.",
    "Mix {fraction} cup of sugar with {n} g of flour.",
    "The lease runs from {D} until {D}.",
    "Upgrade to {version} before {D} to keep support.",
    "Born {D} in a small town near the coast.",
    "Payment of {money} received on {D}, thank you.",
    "Budget review planned for {month_year}, date to be confirmed.",
    "Ticket {n}: customer reports crash since {D}.",
    "Backup job finished at {time}, {n} files copied.",
    "The {season} season starts next week.",
    "Record {bad_iso} failed validation (impossible date).",
    "Reference {ref_slash} is not a date but a file number.",
    "Delivery expected {D}; contact {phone} with questions.",
    "Warranty expires {D}.",
    "Flight {n} departs at {time} on {D}.",
    "Shares rose {n} points to {money} in {month_year}.",
    "Patch notes for {version}: fixed login timeout.",
    "Visited the museum on {D} and again on {D}.",
    "Score was {fraction} at half time.",
    "Our fiscal year closes {D}.",
    "Subnet {ip} assigned to the lab team.",
    "Lot {sku} recalled by the manufacturer.",
    "Deadline: {D}",
    "Signed and dated {D}.",
    "Version {version} was tagged on {D}.",
    "Call {phone} to confirm the booking.",
    "Conference dates: {D} through {D}.",
    "Maintenance window {time} to {time} this Sunday.",
    "May I ask whether the report is ready?",
    "We march on, whatever happens in {month_year}.",
    "The contract, dated {D}, was renewed.",
    "Entry {bad_iso} rejected by the parser.",
    "{D}: first snow of the season.",
    "Temperature readings logged every {n} minutes.",
]


def fill(frame: str, r: random.Random) -> str:
    gens = {
        "phone": phone, "version": version, "ip": ip, "sku": sku, "bad_iso": bad_iso,
        "ref_slash": ref_slash, "month_year": month_year, "fraction": fraction, "time": time_,
        "money": money, "season": season, "n": n,
    }  # fmt: skip
    out = frame
    while "{D}" in out:
        out = out.replace("{D}", date(r), 1)
    for key, gen in gens.items():
        while "{" + key + "}" in out:
            out = out.replace("{" + key + "}", gen(r), 1)
    return out


def timestamps(r: random.Random) -> str:
    y, m, d = _ymd(r)
    return f"[[{y}-{m:02d}-{d:02d}]]T{time_(r)}:00Z ERROR worker {n(r)} lost heartbeat"


def main() -> None:
    r = random.Random(SEED)
    lines = ["# Date extraction corpus: every calendar date (day, month and year) is marked [[like this]]."]
    for i in range(N_LINES):
        if i % 40 == 39:
            lines.append(timestamps(r))
        else:
            lines.append(fill(r.choice(FRAMES), r))
    Path(__file__).with_name("corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
