"""Budget accounting: each cap alone and together, costs, and the one-line summary."""

from __future__ import annotations

from typing import Any

import pytest

from autoexp_mcp.budget import Usage, check, cost_of, summary_line
from autoexp_mcp.config import BudgetConfig

HOUR_S = 3600.0


def usage(**kw: Any) -> Usage:
    fields: dict[str, Any] = {
        "experiments": 0,
        "consecutive_crashes": 0,
        "cost_usd": 0.0,
        "tokens_used": 0,
        "elapsed_s": 0.0,
    }
    fields.update(kw)
    return Usage(**fields)


def budget(**kw: Any) -> BudgetConfig:
    """A budget with no cap at all unless given (the crash cap defaults to 3 in the schema)."""
    return BudgetConfig(**{"abort_on_consecutive_crashes": None, **kw})


NO_CAP = budget()

# (cap, usage just under it, usage at it, fragment of the reason)
CAPS = [
    (
        {"max_experiments": 10},
        {"experiments": 9},
        {"experiments": 10},
        "max_experiments reached (10 of 10)",
    ),
    (
        {"max_wall_clock_hours": 2.0},
        {"elapsed_s": 2 * HOUR_S - 1},
        {"elapsed_s": 2 * HOUR_S},
        "max_wall_clock_hours reached (2.00 h of 2.0 h)",
    ),
    (
        {"max_cost_usd": 5.0},
        {"cost_usd": 4.99},
        {"cost_usd": 5.0},
        "max_cost_usd reached ($5.00 of $5.00)",
    ),
    (
        {"abort_on_consecutive_crashes": 3},
        {"consecutive_crashes": 2},
        {"consecutive_crashes": 3},
        "3 crashes in a row (abort_on_consecutive_crashes = 3)",
    ),
]
CAP_IDS = ["experiments", "hours", "cost", "crashes"]


@pytest.mark.parametrize(("cap", "under", "at", "reason"), CAPS, ids=CAP_IDS)
def test_each_cap_stops_exactly_when_reached(
    cap: dict[str, Any], under: dict[str, Any], at: dict[str, Any], reason: str
) -> None:
    b = budget(**cap)
    below = check(usage(**under), b)
    assert not below.stop
    assert below.reason == "within budget"
    reached = check(usage(**at), b)
    assert reached.stop
    assert reached.reason == reason


@pytest.mark.parametrize(("cap", "under", "at", "reason"), CAPS, ids=CAP_IDS)
def test_exceeding_a_cap_also_stops(
    cap: dict[str, Any], under: dict[str, Any], at: dict[str, Any], reason: str
) -> None:
    over = {k: v * 2 for k, v in at.items()}
    assert check(usage(**over), budget(**cap)).stop


@pytest.mark.parametrize(("cap", "under", "at", "reason"), CAPS, ids=CAP_IDS)
def test_other_caps_do_not_react_to_a_counter(
    cap: dict[str, Any], under: dict[str, Any], at: dict[str, Any], reason: str
) -> None:
    # Every cap but this one, far from reached, while this counter is at its own cap's value.
    others = {k: v for c, *_ in CAPS for k, v in c.items() if c is not cap}
    assert not check(usage(**at), budget(**others)).stop


def test_all_caps_reached_together_are_all_reported() -> None:
    b = budget(max_experiments=10, max_wall_clock_hours=1.0, max_cost_usd=2.0, abort_on_consecutive_crashes=3)
    view = check(usage(experiments=10, elapsed_s=HOUR_S, cost_usd=2.0, consecutive_crashes=3), b)
    assert view.stop
    assert view.reason.split("; ") == [
        "max_experiments reached (10 of 10)",
        "max_wall_clock_hours reached (1.00 h of 1.0 h)",
        "max_cost_usd reached ($2.00 of $2.00)",
        "3 crashes in a row (abort_on_consecutive_crashes = 3)",
    ]


@pytest.mark.parametrize(
    ("counters", "stops"),
    [
        ({}, False),
        ({"experiments": 10}, True),
        ({"elapsed_s": HOUR_S}, True),
        ({"cost_usd": 2.0}, True),
        ({"consecutive_crashes": 3}, True),
        ({"experiments": 9, "elapsed_s": HOUR_S - 1, "cost_usd": 1.99, "consecutive_crashes": 2}, False),
    ],
)
def test_any_one_cap_of_several_stops(counters: dict[str, Any], stops: bool) -> None:
    b = budget(max_experiments=10, max_wall_clock_hours=1.0, max_cost_usd=2.0, abort_on_consecutive_crashes=3)
    assert check(usage(**counters), b).stop is stops


def test_view_reports_what_is_left() -> None:
    b = budget(max_experiments=10, max_wall_clock_hours=2.0, max_cost_usd=5.0, abort_on_consecutive_crashes=3)
    view = check(usage(experiments=4, elapsed_s=HOUR_S / 2, cost_usd=1.25, consecutive_crashes=1), b)
    assert view.experiments_used == 4
    assert view.experiments_left == 6
    assert view.hours_used == 0.5
    assert view.hours_left == 1.5
    assert view.cost_usd == 1.25
    assert view.cost_left_usd == 3.75
    assert view.consecutive_crashes == 1
    assert not view.stop


def test_left_never_goes_negative() -> None:
    b = budget(max_experiments=3, max_wall_clock_hours=1.0, max_cost_usd=1.0)
    view = check(usage(experiments=7, elapsed_s=5 * HOUR_S, cost_usd=9.0), b)
    assert (view.experiments_left, view.hours_left, view.cost_left_usd) == (0, 0.0, 0.0)


def test_no_cap_never_stops_and_reports_nothing_left() -> None:
    view = check(usage(experiments=10**6, elapsed_s=10**6, cost_usd=10**6, consecutive_crashes=99), NO_CAP)
    assert not view.stop
    assert (view.experiments_left, view.hours_left, view.cost_left_usd) == (None, None, None)


def test_schema_default_aborts_after_three_crashes() -> None:
    assert check(usage(consecutive_crashes=3), BudgetConfig()).stop


# --- cost_of --------------------------------------------------------------------------------


def test_cost_of_uses_the_agents_own_figure() -> None:
    b = budget(usd_per_million_tokens=10.0)
    assert cost_of(1_000_000, 0.42, b) == 0.42
    assert cost_of(0, 0.0, b) == 0.0


def test_cost_of_prices_tokens_without_a_figure() -> None:
    assert cost_of(250_000, None, budget(usd_per_million_tokens=8.0)) == pytest.approx(2.0)
    assert cost_of(250_000, None, budget()) == 0.0  # no price configured: tokens are free


def test_cost_of_never_negative() -> None:
    b = budget(usd_per_million_tokens=8.0)
    assert cost_of(0, -3.0, b) == 0.0
    assert cost_of(-1000, None, b) == 0.0


# --- summary_line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "line"),
    [
        ({}, "no cap (until interrupted)"),
        ({"max_experiments": 100}, "100 experiments"),
        ({"max_wall_clock_hours": 1.5}, "1.5 hours"),
        ({"max_wall_clock_hours": 8.0}, "8 hours"),
        ({"max_cost_usd": 20}, "$20.00"),
        ({"abort_on_consecutive_crashes": 3}, "stop after 3 crashes in a row"),
        (
            {"max_experiments": 50, "max_wall_clock_hours": 2, "max_cost_usd": 7.5, "abort_on_consecutive_crashes": 5},
            "50 experiments, 2 hours, $7.50, stop after 5 crashes in a row",
        ),
    ],
)
def test_summary_line(caps: dict[str, Any], line: str) -> None:
    assert summary_line(budget(**caps)) == line
