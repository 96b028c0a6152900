"""The pure keep/discard rules: one table row per rule and edge case, then property tests."""

from __future__ import annotations

import functools
import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoexp_mcp.config import Config, MetricConfig, parse_config
from autoexp_mcp.policy import (
    Measurement,
    betainc,
    decide,
    drift,
    explore_due,
    holdout_gate,
    lexicographic_compare,
    lexicographic_key,
    student_t_sf,
    weighted_score,
    welch_t,
)

PROPERTY = settings(max_examples=200, deadline=None)
QUICK_PROPERTY = settings(max_examples=100, deadline=None)


def make_cfg(metrics: list[dict[str, Any]], **policy: Any) -> Config:
    return parse_config(
        {
            "experiment": {"tag": "t", "target": "train.py", "eval": "python eval.py"},
            "metric": metrics,
            "policy": policy,
        }
    )


def one(**values: float) -> Measurement:
    return Measurement.single(values)


def runs(**values: tuple[float, ...]) -> Measurement:
    return Measurement({k: tuple(v) for k, v in values.items()})


def row(name, metrics, policy, cand, inc, expect, *phrases, index=1):
    """One decide() case: `expect` is "<status> <rule>", `phrases` must appear in the reason."""
    status, rule = expect.split()
    return pytest.param(metrics, policy, cand, inc, index, status, rule, phrases, id=name)


NAN, INF = math.nan, math.inf
ACC = {"name": "acc", "direction": "max"}
LOSS = {"name": "loss", "direction": "min"}
LAT = {"name": "lat", "direction": "min"}
TPUT = {"name": "tput", "direction": "max"}
LAT_CAP = {**LAT, "at_most": 200.0}
ACC_FLOOR = {**ACC, "at_least": 0.9}
PS = {"mode": "primary_secondary"}
PA = {"mode": "pareto"}
W = {"mode": "weighted"}
W_ACC = {**ACC, "weight": 0.5}
W_RLAT = {**LAT, "weight": 0.3, "transform": "reciprocal"}
LX = {"mode": "lexicographic"}
ERR = {"name": "err", "direction": "min", "tolerance": 0.01}
SIZE = {"name": "size", "direction": "min"}
C_TIGHT = runs(loss=(0.90, 0.91, 0.89))  # mean 0.90, std 0.01
I_TIGHT = runs(loss=(1.00, 1.01, 0.99))  # mean 1.00, std 0.01
C_NOISY = runs(loss=(0.99, 1.02, 0.96))  # mean 0.99, std 0.03
I_NOISY = runs(loss=(1.00, 1.02, 0.98))  # mean 1.00, std 0.02

SINGLE_ROWS = [
    row("max_higher_is_kept", [ACC], {}, one(acc=0.9), one(acc=0.8), "keep single", "improved", "+0.1"),
    row("min_lower_is_kept", [LOSS], {}, one(loss=0.9), one(loss=1.0), "keep single", "lower is better"),
    row("worse_is_discarded", [ACC], {}, one(acc=0.7), one(acc=0.8), "discard single", "worse"),
    row("exact_tie_discarded_by_default", [ACC], {}, one(acc=0.8), one(acc=0.8), "discard single", "tie"),
    row("exact_tie_kept_with_keep_ties", [ACC], {"keep_ties": True}, one(acc=0.8), one(acc=0.8), "keep single"),
    row(
        "tie_not_kept_when_min_improvement_is_set",
        *([ACC], {"keep_ties": True, "min_improvement": 0.1}, one(acc=0.8), one(acc=0.8)),
        *("discard single", "min_improvement"),
    ),
    row(
        "gain_exactly_min_improvement_is_discarded",
        *([ACC], {"min_improvement": 0.5}, one(acc=1.5), one(acc=1.0), "discard single"),
        "not above min_improvement 0.5",
    ),
    row(
        "gain_above_min_improvement_is_kept",
        [ACC],
        {"min_improvement": 0.5},
        one(acc=1.75),
        one(acc=1.0),
        "keep single",
    ),
    row("nan_candidate_is_invalid", [ACC], {}, one(acc=NAN), one(acc=0.8), "discard invalid", "acc", "nan"),
    row("inf_candidate_is_invalid", [LOSS], {}, one(loss=-INF), one(loss=1.0), "discard invalid", "-inf"),
    row(
        "nan_in_one_repeat_is_invalid",
        *([ACC], {"repeats": 3}, runs(acc=(0.9, NAN, 0.9)), runs(acc=(0.8, 0.8, 0.8))),
        *("discard invalid", "run 2 of 3"),
    ),
    row(
        "missing_metric_is_invalid",
        [ACC, LAT],
        {},
        one(acc=0.9),
        one(acc=0.8, lat=1),
        "discard invalid",
        "lat",
    ),
    row("baseline_is_kept", [ACC], {}, one(acc=0.5), None, "keep baseline", "acc 0.5"),
    row("nan_baseline_is_invalid", [ACC], {}, one(acc=NAN), None, "discard invalid"),
    row(
        "baseline_breaking_a_constraint_is_kept_with_a_note",
        *([ACC, {**LAT, "at_most": 100}], {}, one(acc=0.5, lat=150), None),
        *("keep baseline", "lat 150 violates at_most 100"),
    ),
    row("invalid_incumbent_is_replaced", [ACC], {}, one(acc=0.5), one(acc=NAN), "keep baseline", "replaces"),
]

CONSTRAINT_ROWS = [
    row(
        "value_exactly_at_at_most_satisfies_it",
        *([TPUT, LAT_CAP], {"mode": "threshold"}, one(tput=11, lat=200.0), one(tput=10, lat=100)),
        *("keep threshold", "tput 11 vs incumbent 10"),
    ),
    row(
        "value_exactly_at_at_least_satisfies_it",
        *([LOSS, ACC_FLOOR], {"mode": "constraints"}, one(loss=1, acc=0.9), one(loss=2, acc=0.95)),
        "keep constraints",
    ),
    row(
        "violated_at_most_discards_naming_metric_value_and_bound",
        *([TPUT, LAT_CAP], {"mode": "threshold"}, one(tput=50, lat=201), one(tput=10, lat=100)),
        *("discard constraint", "lat 201 violates at_most 200"),
    ),
    row(
        "every_violation_is_named",
        *([LOSS, ACC_FLOOR, LAT_CAP], {"mode": "constraints"}),
        *(one(loss=0.1, acc=0.5, lat=300), one(loss=1, acc=0.95, lat=100), "discard constraint"),
        *("acc 0.5 violates at_least 0.9", "lat 300 violates at_most 200"),
    ),
    row(
        "constraints_pass_then_the_objective_decides",
        *([LOSS, LAT_CAP], {"mode": "constraints"}, one(loss=1.1, lat=100), one(loss=1.0, lat=100)),
        *("discard constraints", "worse"),
    ),
    row(
        "constraint_checked_in_single_mode_too",
        *([ACC, LAT_CAP], {}, one(acc=0.99, lat=250), one(acc=0.5, lat=100), "discard constraint", "lat 250"),
    ),
    row(
        "constraint_checked_in_pareto_mode_too",
        *([ACC, LAT_CAP], PA, one(acc=0.99, lat=250), one(acc=0.5, lat=300), "discard constraint"),
    ),
    row(
        "explore_never_overrides_a_constraint",
        *([ACC, LAT_CAP], {"explore_every": 1}, one(acc=0.99, lat=250), one(acc=0.5, lat=100)),
        "discard constraint",
    ),
    row(
        "constraint_applies_to_the_mean_of_repeats",
        *([ACC, LAT_CAP], {"repeats": 2}, runs(acc=(0.9, 0.9), lat=(150, 250))),
        *(runs(acc=(0.5, 0.5), lat=(100, 100)), "keep single"),
    ),
]

PS_ROWS = [
    row(
        "secondary_exactly_at_max_regression_is_allowed",
        *([ACC, {**LAT, "max_regression": 1.0}], PS, one(acc=0.9, lat=200), one(acc=0.8, lat=100)),
        *("keep primary_secondary", "worse by 100.0%, within max_regression 1"),
    ),
    row(
        "secondary_beyond_max_regression_is_discarded",
        *([ACC, {**LAT, "max_regression": 1.0}], PS, one(acc=0.9, lat=201), one(acc=0.8, lat=100)),
        *("discard primary_secondary", "lat 100 -> 201 worse by 101.0%, beyond max_regression 1"),
    ),
    row(
        "ten_percent_limit_at_exactly_ten_percent",
        *([ACC, {**LAT, "max_regression": 0.1}], PS, one(acc=0.9, lat=110), one(acc=0.8, lat=100)),
        "keep primary_secondary",
    ),
    row(
        "max_direction_secondary_drop_is_relative",
        *([LOSS, {**ACC, "max_regression": 0.5}], PS, one(loss=0.5, acc=0.4), one(loss=1.0, acc=0.8)),
        *("keep primary_secondary", "worse by 50.0%"),
    ),
    row(
        "primary_not_improved_is_discarded",
        *([ACC, {**LAT, "max_regression": 1.0}], PS, one(acc=0.8, lat=50), one(acc=0.8, lat=100)),
        *("discard primary_secondary", "primary acc", "tie"),
    ),
    row(
        "no_max_regression_means_unlimited",
        *([ACC, LAT], PS, one(acc=0.9, lat=10_000), one(acc=0.8, lat=100)),
        *("keep primary_secondary", "no max_regression"),
    ),
    row(
        "secondary_worse_from_zero_is_beyond_any_relative_limit",
        *([ACC, {**LAT, "max_regression": 10.0}], PS, one(acc=0.9, lat=1), one(acc=0.8, lat=0)),
        *("discard primary_secondary", "beyond"),
    ),
    row(
        "secondary_worse_within_tolerance_passes",
        *(
            [ACC, {**LAT, "max_regression": 0.0, "tolerance": 2.0}],
            PS,
            one(acc=0.9, lat=2),
            one(acc=0.8, lat=0),
        ),
        *("keep primary_secondary", "within tolerance 2"),
    ),
    row(
        "a_constraint_listed_first_is_not_the_primary",
        *([LAT_CAP, ACC], PS, one(lat=150, acc=0.9), one(lat=100, acc=0.8)),
        *("keep primary_secondary", "primary acc"),
    ),
]

PARETO_ROWS = [
    row(
        "better_on_one_tie_on_other",
        *([ACC, LAT], PA, one(acc=0.9, lat=100), one(acc=0.8, lat=100), "keep pareto", "better on acc"),
    ),
    row(
        "better_on_both",
        *([ACC, LAT], PA, one(acc=0.9, lat=90), one(acc=0.8, lat=100), "keep pareto", "better on acc, lat"),
    ),
    row(
        "tradeoff_is_discarded",
        *([ACC, LAT], PA, one(acc=0.9, lat=101), one(acc=0.8, lat=100), "discard pareto", "worse on lat"),
    ),
    row(
        "dominated_is_discarded",
        *([ACC, LAT], PA, one(acc=0.7, lat=100), one(acc=0.8, lat=100), "discard pareto", "worse on acc"),
    ),
    row(
        "worse_within_tolerance_is_a_tie",
        *([ACC, {**LAT, "tolerance": 2.0}], PA, one(acc=0.9, lat=102), one(acc=0.8, lat=100)),
        *("keep pareto", "lat 102 vs 100 (tie, -2, tolerance 2)"),
    ),
    row(
        "better_within_tolerance_is_not_better",
        *([{**ACC, "tolerance": 0.5}, LAT], PA, one(acc=1.25, lat=100), one(acc=1.0, lat=100)),
        *("discard pareto", "not better on any metric"),
    ),
    row(
        "pareto_exact_tie_is_discarded",
        [ACC, LAT],
        PA,
        one(acc=0.8, lat=100),
        one(acc=0.8, lat=100),
        "discard pareto",
    ),
    row(
        "pareto_exact_tie_kept_with_keep_ties",
        *([ACC, LAT], {**PA, "keep_ties": True}, one(acc=0.8, lat=100), one(acc=0.8, lat=100)),
        *("keep pareto", "exact tie"),
    ),
]

WEIGHTED_ROWS = [
    row(
        "faster_raises_the_score_through_the_reciprocal",
        *([W_ACC, W_RLAT], W, one(acc=0.8, lat=50), one(acc=0.8, lat=100), "keep weighted", "0.5·acc + 0.3·(1/lat)"),
    ),
    row(
        "slower_lowers_the_score",
        *([W_ACC, W_RLAT], W, one(acc=0.8, lat=200), one(acc=0.8, lat=100), "discard weighted", "worse"),
    ),
    row(
        "min_identity_term_counts_negatively",
        *([{**LOSS, "weight": 1.0}], W, one(loss=0.5), one(loss=1.0), "keep weighted", "-1·loss"),
    ),
    row(
        "reciprocal_of_zero_is_a_discard",
        *([W_ACC, W_RLAT], W, one(acc=0.9, lat=0), one(acc=0.8, lat=100)),
        *("discard weighted", "lat = 0 has no reciprocal"),
    ),
    row(
        "log_of_a_negative_value_is_a_discard",
        *([{**ACC, "weight": 1.0, "transform": "log"}], W, one(acc=-1), one(acc=0.5)),
        *("discard weighted", "has no log"),
    ),
    row(
        "zero_weight_metric_takes_no_part",
        *([W_ACC, {**W_RLAT, "weight": 0.0}], W, one(acc=0.9, lat=0), one(acc=0.8, lat=-5), "keep weighted"),
    ),
    row(
        "unscorable_incumbent_is_replaced",
        *([W_ACC, W_RLAT], W, one(acc=0.1, lat=100), one(acc=0.9, lat=0)),
        *("keep weighted", "incumbent cannot be scored"),
    ),
    row(
        "score_tie_is_discarded",
        *([W_ACC, W_RLAT], W, one(acc=0.8, lat=100), one(acc=0.8, lat=100), "discard weighted", "tie"),
    ),
]

LEX_ROWS = [
    row(
        "first_metric_better_is_kept",
        *([ERR, SIZE], LX, one(err=0.1, size=99), one(err=0.2, size=10), "keep lexicographic"),
    ),
    row(
        "first_metric_worse_is_discarded_whatever_the_second",
        *([ERR, SIZE], LX, one(err=0.3, size=1), one(err=0.2, size=10), "discard lexicographic"),
    ),
    row(
        "tolerance_tie_passes_to_the_next_metric",
        *([ERR, SIZE], LX, one(err=0.205, size=5), one(err=0.2, size=10), "keep lexicographic"),
        *("within tolerance 0.01", "size 5 vs incumbent 10"),
    ),
    row(
        "tolerance_tie_then_worse_is_discarded",
        *([ERR, SIZE], LX, one(err=0.195, size=11), one(err=0.2, size=10), "discard lexicographic", "worse"),
    ),
    row(
        "tie_on_every_metric_is_discarded",
        *([ERR, SIZE], LX, one(err=0.205, size=10), one(err=0.2, size=10)),
        *("discard lexicographic", "tie on every metric"),
    ),
    row(
        "lexicographic_exact_tie_kept_with_keep_ties",
        *([ERR, SIZE], {**LX, "keep_ties": True}, one(err=0.2, size=10), one(err=0.2, size=10)),
        "keep lexicographic",
    ),
    row(
        "tolerance_tie_is_not_kept_by_keep_ties",
        *([ERR, SIZE], {**LX, "keep_ties": True}, one(err=0.205, size=10), one(err=0.2, size=10)),
        "discard lexicographic",
    ),
]

REPEAT_ROWS = [
    row(
        "mean_gain_beyond_the_noise_is_kept",
        *([LOSS], {"repeats": 3}, C_TIGHT, I_TIGHT, "keep single", "0.9±0.01 (n=3)", "1×noise 0.01"),
    ),
    row(
        "mean_gain_within_the_noise_is_discarded",
        *([LOSS], {"repeats": 3}, C_NOISY, I_NOISY, "discard single", "within the noise"),
    ),
    row(
        "zero_noise_sigmas_keeps_any_gain",
        [LOSS],
        {"repeats": 3, "noise_sigmas": 0},
        C_NOISY,
        I_NOISY,
        "keep single",
    ),
    row(
        "equal_means_with_different_noise_is_a_tie",
        *(
            [LOSS],
            {"repeats": 3},
            runs(loss=(1.0, 1.0, 1.0)),
            runs(loss=(0.9, 1.0, 1.1)),
            "discard single",
            "tie",
        ),
    ),
    row(
        "zero_variance_falls_back_to_plain_means",
        *([LOSS], {"repeats": 3}, runs(loss=(0.99, 0.99, 0.99)), runs(loss=(1.0, 1.0, 1.0))),
        *("keep single", "no spread"),
    ),
    row(
        "welch_significant_gain_is_kept",
        *(
            [LOSS],
            {"repeats": 3, "significance": "welch"},
            C_TIGHT,
            I_TIGHT,
            "keep single",
            "Welch",
            "< alpha 0.05",
        ),
    ),
    row(
        "welch_insignificant_gain_is_discarded",
        *(
            [LOSS],
            {"repeats": 3, "significance": "welch"},
            C_NOISY,
            I_NOISY,
            "discard single",
            "not significant",
        ),
    ),
    row(
        "primary_of_primary_secondary_uses_the_noise_gate",
        *([LOSS, {**LAT, "max_regression": 1.0}], {"mode": "primary_secondary", "repeats": 3}),
        *(runs(loss=(0.99, 1.02, 0.96), lat=(1, 1, 1)), runs(loss=(1.00, 1.02, 0.98), lat=(1, 1, 1))),
        *("discard primary_secondary", "within the noise"),
    ),
    row(
        "threshold_objective_uses_the_noise_gate",
        *([LOSS, LAT_CAP], {"mode": "threshold", "repeats": 3}),
        *(runs(loss=(0.90, 0.91, 0.89), lat=(1, 1, 1)), runs(loss=(1.00, 1.01, 0.99), lat=(1, 1, 1))),
        *("keep threshold", "noise"),
    ),
]

EXPLORE_ROWS = [
    row(
        "nth_experiment_worse_is_explored",
        *([ACC], {"explore_every": 5}, one(acc=0.1), one(acc=0.8), "explore explore"),
        "would have discarded it: single: acc 0.1",
        index=5,
    ),
    row(
        "nth_experiment_better_is_explored",
        *([ACC], {"explore_every": 5}, one(acc=0.9), one(acc=0.8), "explore explore", "would have kept it"),
        index=10,
    ),
    row(
        "other_experiments_use_the_rule",
        *([ACC], {"explore_every": 5}, one(acc=0.1), one(acc=0.8), "discard single"),
        index=4,
    ),
    row(
        "explore_never_keeps_nan",
        *([ACC], {"explore_every": 5}, one(acc=NAN), one(acc=0.8), "discard invalid"),
        index=5,
    ),
]

ROWS = SINGLE_ROWS + CONSTRAINT_ROWS + PS_ROWS + PARETO_ROWS + WEIGHTED_ROWS + LEX_ROWS + REPEAT_ROWS + EXPLORE_ROWS


@pytest.mark.parametrize(("metrics", "policy", "cand", "inc", "index", "status", "rule", "phrases"), ROWS)
def test_decide_table(metrics, policy, cand, inc, index, status, rule, phrases):
    d = decide(cand, inc, make_cfg(metrics, **policy), experiment_index=index)
    assert (d.status, d.rule) == (status, rule), d.reason
    assert "\n" not in d.reason
    for p in phrases:
        assert p in d.reason, (p, d.reason)


def test_margin_is_the_signed_gain_in_the_metric_direction():
    cfg = make_cfg([LOSS])
    assert decide(one(loss=0.75), one(loss=1.0), cfg, experiment_index=1).margin == 0.25
    assert decide(one(loss=1.25), one(loss=1.0), cfg, experiment_index=1).margin == -0.25


def test_constraint_margin_is_the_negative_slack_and_details_carry_value_and_bound():
    d = decide(one(acc=1, lat=250), one(acc=0, lat=1), make_cfg([ACC, LAT_CAP]), experiment_index=1)
    assert d.margin == -50
    assert d.details == {"value": 250, "bound": 200}


def test_a_relative_change_from_zero_leaves_no_infinite_number_for_the_ledger():
    cfg = make_cfg([ACC, {**LAT, "max_regression": 1.0}], mode="primary_secondary")
    d = decide(one(acc=0.9, lat=1), one(acc=0.8, lat=0), cfg, experiment_index=1)
    assert d.status == "discard" and d.margin is None
    assert all(math.isfinite(v) for v in d.details.values())


def test_explore_keeps_the_normal_margin_and_records_what_it_would_have_done():
    d = decide(one(acc=0.5), one(acc=0.75), make_cfg([ACC], explore_every=2), experiment_index=2)
    assert d.kept and d.margin == -0.25 and d.details["would_keep"] == 0.0


@pytest.mark.parametrize(
    ("every", "index", "due"), [(0, 5, False), (5, 0, False), (5, 5, True), (5, 6, False), (1, 1, True)]
)
def test_explore_due_counts_experiments_after_the_baseline(every, index, due):
    assert explore_due(index, make_cfg([ACC], explore_every=every).policy) is due


def test_welch_decision_details_carry_t_df_and_p():
    d = decide(C_TIGHT, I_TIGHT, make_cfg([LOSS], repeats=3, significance="welch"), experiment_index=1)
    assert d.details["df"] == pytest.approx(4.0)
    assert d.details["t"] == pytest.approx(0.1 / math.sqrt(2 * 0.01**2 / 3))
    assert d.details["p_value"] < 0.001


# --- Student's t ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [
        (2.015, 5, 0.05),
        (1.812, 10, 0.05),
        (3.365, 5, 0.01),
        (2.228, 10, 0.025),
        (2.086, 20, 0.025),
        (1.697, 30, 0.05),
        (6.314, 1, 0.05),
        (2.920, 2, 0.05),
    ],
)
def test_student_t_tail_matches_table_values(t, df, p):
    assert student_t_sf(t, df) == pytest.approx(p, abs=5e-4)


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0, 3.0, 30.0, 1e6])
def test_student_t_tail_matches_closed_forms_for_one_and_two_df(t):
    assert student_t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-10)
    assert student_t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), rel=1e-10)


@pytest.mark.parametrize("t", [-3.0, -0.4, 0.0, 0.4, 1.96, 3.0])
def test_student_t_tail_is_symmetric_and_tends_to_the_normal(t):
    assert student_t_sf(-t, 7.5) == pytest.approx(1 - student_t_sf(t, 7.5), abs=1e-12)
    assert student_t_sf(t, 1e7) == pytest.approx(0.5 * math.erfc(t / math.sqrt(2)), abs=1e-6)


def test_student_t_tail_limits():
    assert student_t_sf(0.0, 3) == 0.5
    assert student_t_sf(1e200, 3) == 0.0
    assert student_t_sf(-1e200, 3) == 1.0


@pytest.mark.parametrize("x", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_betainc_matches_closed_forms(x):
    assert betainc(1, 1, x) == pytest.approx(x, abs=1e-14)
    assert betainc(3, 1, x) == pytest.approx(x**3, abs=1e-14)
    assert betainc(1, 4, x) == pytest.approx(1 - (1 - x) ** 4, abs=1e-14)


def test_welch_df_is_pooled_df_for_equal_variances_and_drops_a_single_run_side():
    assert welch_t(1.0, 2.0, 5, 2.0, 5)[1] == pytest.approx(8.0)
    t, df = welch_t(1.0, 2.0, 5, 0.0, 1)
    assert df == pytest.approx(4.0) and t == pytest.approx(1.0 / (2.0 / math.sqrt(5)))


# --- hold-out gate and drift ---------------------------------------------------------------------

LOSS_M = MetricConfig(name="loss", direction="min", tolerance=0.01)
ACC_M = MetricConfig(name="acc", direction="max")


@pytest.mark.parametrize(
    ("cand", "inc", "metric", "tol", "passes"),
    [
        (0.9, 1.0, LOSS_M, 0.0, True),
        (1.0, 1.0, LOSS_M, 0.0, True),
        (1.25, 1.0, LOSS_M, 0.25, True),
        (1.5, 1.0, LOSS_M, 0.25, False),
        (0.7, 0.8, ACC_M, 0.0, False),
        (0.79, 0.8, ACC_M, 0.02, True),
        (NAN, 0.8, ACC_M, 0.0, False),
        (0.5, NAN, ACC_M, 0.0, True),
    ],
)
def test_holdout_gate(cand, inc, metric, tol, passes):
    d = holdout_gate(cand, inc, metric, tol)
    if passes:
        assert d is None
        return
    assert d is not None and (d.status, d.rule) == ("discard", "holdout")
    assert not any(ch.isdigit() for ch in d.reason), "the hold-out numbers must never reach the agent"
    assert d.margin is None and d.details == {}


@pytest.mark.parametrize(
    ("old", "new", "sigmas", "moved", "phrase"),
    [
        (one(loss=1.0), one(loss=1.0), 1.0, False, "unchanged"),
        (one(loss=1.0), one(loss=1.005), 1.0, False, "within tolerance"),
        (one(loss=1.0), one(loss=1.25), 1.0, True, "worse"),
        (one(loss=1.0), one(loss=0.75), 1.0, True, "better"),
        (I_NOISY, runs(loss=(1.01, 1.03, 0.99)), 1.0, False, "within 1×noise"),
        (I_TIGHT, runs(loss=(1.10, 1.11, 1.09)), 1.0, True, "moved beyond 1×noise"),
        (I_TIGHT, runs(loss=(1.0, NAN, 1.0)), 1.0, True, "no valid value"),
    ],
)
def test_drift(old, new, sigmas, moved, phrase):
    got, reason = drift(old, new, LOSS_M, sigmas)
    assert got is moved
    assert phrase in reason and "\n" not in reason


def test_drift_exactly_at_tolerance_is_stable():
    assert (
        drift(one(loss=1.0), one(loss=1.5), MetricConfig(name="loss", direction="min", tolerance=0.5), 1.0)[0] is False
    )


# --- property tests ------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
moderate = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=False)
# Few distinct values so ties and dominance come up often.
tie_prone = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 3.0]), moderate)
tolerance = st.one_of(st.just(0.0), st.sampled_from([0.5, 1.0]), st.floats(min_value=0, max_value=10))
direction = st.sampled_from(["max", "min"])


@st.composite
def pareto_case(draw):
    n = draw(st.integers(2, 3))
    metrics = [{"name": f"m{j}", "direction": draw(direction), "tolerance": draw(tolerance)} for j in range(n)]
    inc = {f"m{j}": draw(tie_prone) for j in range(n)}
    if draw(st.booleans()):  # build a dominated candidate: each metric equal or worse
        cand = {}
        for m in metrics:
            step = draw(st.sampled_from([0.0, 0.0, 1.0, 1e-9, 100.0]))
            sign = -1 if m["direction"] == "max" else 1
            cand[m["name"]] = inc[m["name"]] + sign * step
    else:
        cand = {f"m{j}": draw(tie_prone) for j in range(n)}
    return metrics, cand, inc, draw(st.booleans())


def _oriented(m: dict[str, Any], x: float) -> float:
    return x if m["direction"] == "max" else -x


@PROPERTY
@given(pareto_case())
def test_pareto_never_keeps_a_dominated_candidate(case):
    metrics, cand, inc, keep_ties = case
    d = decide(one(**cand), one(**inc), make_cfg(metrics, mode="pareto", keep_ties=keep_ties), experiment_index=1)
    o_c = [_oriented(m, cand[m["name"]]) for m in metrics]
    o_i = [_oriented(m, inc[m["name"]]) for m in metrics]
    dominated = all(c <= i for c, i in zip(o_c, o_i, strict=True)) and any(c < i for c, i in zip(o_c, o_i, strict=True))
    if dominated:
        assert d.status == "discard", d.reason


def _reference_compare(metrics: list[dict[str, Any]], a: dict[str, float], b: dict[str, float]) -> int:
    for m in metrics:
        diff = _oriented(m, a[m["name"]]) - _oriented(m, b[m["name"]])
        if abs(diff) > m.get("tolerance", 0.0):
            return -1 if diff > 0 else 1
    return 0


@PROPERTY
@given(
    metrics=st.lists(st.tuples(direction, tolerance), min_size=2, max_size=3).map(
        lambda ms: [{"name": f"m{j}", "direction": d, "tolerance": t} for j, (d, t) in enumerate(ms)]
    ),
    data=st.data(),
)
def test_lexicographic_keep_agrees_with_sorting(metrics, data):
    cand = {m["name"]: data.draw(tie_prone) for m in metrics}
    inc = {m["name"]: data.draw(tie_prone) for m in metrics}
    cfg = make_cfg(metrics, mode="lexicographic")
    kept = decide(one(**cand), one(**inc), cfg, experiment_index=1).status == "keep"
    # Best first; stable, so a tie leaves the incumbent first: kept iff c sorts strictly before i.
    ranked = sorted([inc, cand], key=functools.cmp_to_key(functools.partial(_reference_compare, metrics)))
    assert kept == (ranked[0] is cand and _reference_compare(metrics, cand, inc) != 0)
    assert kept == (lexicographic_compare(one(**cand), one(**inc), cfg.metric) < 0)
    if all(m["tolerance"] == 0 for m in metrics):
        by_key = sorted([one(**inc), one(**cand)], key=lambda x: lexicographic_key(x, cfg.metric), reverse=True)
        strictly_first = lexicographic_key(by_key[0], cfg.metric) != lexicographic_key(by_key[1], cfg.metric)
        assert kept == (by_key[0].values == one(**cand).values and strictly_first)


@PROPERTY
@given(
    k=st.integers(2, 5),
    d=direction,
    sig=st.sampled_from(["sigma", "welch"]),
    sigmas=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    keep_ties=st.booleans(),
    mode=st.sampled_from(["single", "threshold"]),
    data=st.data(),
)
def test_repeats_never_keep_a_worse_mean(k, d, sig, sigmas, keep_ties, mode, data):
    metrics: list[dict[str, Any]] = [{"name": "obj", "direction": d}]
    if mode == "threshold":
        metrics.append({"name": "cap", "direction": "min", "at_most": 1e9})
    policy = {"mode": mode, "repeats": k, "significance": sig, "noise_sigmas": sigmas, "keep_ties": keep_ties}
    cfg = make_cfg(metrics, **policy)
    vals = st.lists(tie_prone, min_size=k, max_size=k)
    cand = Measurement({"obj": tuple(data.draw(vals)), "cap": (0.0,) * k})
    inc = Measurement({"obj": tuple(data.draw(vals)), "cap": (0.0,) * k})
    dec = decide(cand, inc, cfg, experiment_index=1)
    gain = _oriented(metrics[0], cand.mean("obj")) - _oriented(metrics[0], inc.mean("obj"))
    if gain < 0 or (gain == 0 and not keep_ties):
        assert dec.status == "discard", dec.reason


@PROPERTY
@given(
    d=direction,
    w=st.sampled_from([1.0, 2.0, 4.0]),
    other_transform=st.sampled_from(["identity", "reciprocal"]),
    need=st.sampled_from([0.0, 0.5]),
    keep_ties=st.booleans(),
    a=st.tuples(tie_prone, tie_prone),
    b=st.tuples(finite, finite),
)
def test_weighted_with_a_zero_weight_agrees_with_single(d, w, other_transform, need, keep_ties, a, b):
    if need:
        w = 1.0  # min_improvement applies to the score, so only an unscaled score compares alike
    weighted = make_cfg(
        [
            {"name": "a", "direction": d, "weight": w},
            {"name": "b", "direction": "min", "weight": 0.0, "transform": other_transform},
        ],
        mode="weighted",
        min_improvement=need,
        keep_ties=keep_ties,
    )
    single = make_cfg(
        [{"name": "a", "direction": d}, {"name": "b", "direction": "min"}],
        min_improvement=need,
        keep_ties=keep_ties,
    )
    cand, inc = one(a=a[0], b=b[0]), one(a=a[1], b=b[1])
    w_dec = decide(cand, inc, weighted, experiment_index=1)
    s_dec = decide(cand, inc, single, experiment_index=1)
    assert w_dec.status == s_dec.status, (w_dec.reason, s_dec.reason)


ALL_MODES = ["single", "primary_secondary", "pareto", "weighted", "threshold", "lexicographic", "constraints"]


@st.composite
def any_config(draw):
    mode = draw(st.sampled_from(ALL_MODES))
    n = draw(st.integers(2, 3))
    metrics = []
    for j in range(n):
        m: dict[str, Any] = {"name": f"m{j}", "direction": draw(direction), "tolerance": draw(tolerance)}
        if mode == "primary_secondary" and draw(st.booleans()):
            m["max_regression"] = draw(st.sampled_from([0.0, 0.1, 1.0]))
        if mode == "weighted":
            m["weight"] = draw(st.sampled_from([0.0, 1.0, 0.5, 0.3]))
            m["transform"] = draw(st.sampled_from(["identity", "reciprocal", "log"]))
        if j > 0 and ((mode in ("threshold", "constraints") and j == n - 1) or draw(st.booleans())):
            m[draw(st.sampled_from(["at_least", "at_most"]))] = draw(moderate)
        metrics.append(m)
    if mode == "weighted" and not any(m["weight"] for m in metrics):
        metrics[0]["weight"] = 1.0
    policy = {
        "mode": mode,
        "keep_ties": draw(st.booleans()),
        "min_improvement": draw(st.sampled_from([0.0, 0.1])),
        "repeats": draw(st.integers(1, 3)),
        "noise_sigmas": draw(st.sampled_from([0.0, 1.0, 2.0])),
        "significance": draw(st.sampled_from(["sigma", "welch"])),
        "explore_every": draw(st.integers(0, 3)),
    }
    return make_cfg(metrics, **policy)


@PROPERTY
@given(cfg=any_config(), index=st.integers(0, 10), baseline=st.booleans(), data=st.data())
def test_decide_never_raises_on_finite_inputs(cfg, index, baseline, data):
    k = cfg.policy.repeats

    def measurement() -> Measurement:
        return Measurement({m.name: tuple(data.draw(st.lists(finite, min_size=1, max_size=k))) for m in cfg.metric})

    cand = measurement()
    inc = None if baseline else measurement()
    d = decide(cand, inc, cfg, experiment_index=index)
    assert d.status in ("keep", "discard", "explore")
    assert d.rule != "invalid"
    assert d.reason and "\n" not in d.reason
    assert d.margin is None or math.isfinite(d.margin)
    assert all(math.isfinite(v) for v in d.details.values())


@QUICK_PROPERTY
@given(values=st.lists(finite, min_size=1, max_size=5))
def test_measurement_mean_and_std_are_total_on_finite_values(values):
    m = Measurement({"x": tuple(values)})
    assert min(values) <= m.mean("x") <= max(values)
    assert m.std("x") >= 0


@QUICK_PROPERTY
@given(cfg=any_config(), data=st.data())
def test_weighted_score_never_raises(cfg, data):
    meas = Measurement({m.name: (data.draw(finite),) for m in cfg.metric})
    score, why = weighted_score(meas, cfg)
    assert (score is None) == bool(why)


# --- the README's weighted example, parsed from README.md so the two cannot drift ---------------

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_weighted_example() -> tuple[str, Config]:
    """The README's weighted snippet (its text and the config it makes)."""
    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    (block,) = [b for b in blocks if 'mode = "weighted"' in b]
    data = tomllib.loads(block)
    data["experiment"] = {"tag": "readme", "target": "t.txt", "eval": "python e.py"}
    return block, parse_config(data, "README.md")


README_BASE = {"accuracy": 0.8, "latency_ms": 100.0, "memory_mb": 100.0}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"latency_ms": 50.0}, "keep"),
        ({"latency_ms": 200.0}, "discard"),
        ({"memory_mb": 50.0}, "keep"),
        ({"memory_mb": 200.0}, "discard"),
        ({"accuracy": 0.9}, "keep"),
        ({"accuracy": 0.7}, "discard"),
    ],
    ids=[
        "lower-latency-kept",
        "higher-latency-discarded",
        "less-memory-kept",
        "more-memory-discarded",
        "higher-accuracy-kept",
        "lower-accuracy-discarded",
    ],
)
def test_readme_weighted_example_scores_what_its_comment_says(change: dict[str, float], expected: str) -> None:
    block, cfg = readme_weighted_example()
    cand = one(**{**README_BASE, **change})
    d = decide(cand, one(**README_BASE), cfg, experiment_index=1)
    assert d.status == expected, d.reason
    # The score is the formula in the README's comment, and the reason quotes that formula.
    formula = re.search(r"score = (.*?), written as data", block)
    assert formula is not None and formula[1] == "0.5·accuracy + 0.3·(1/latency_ms) + 0.2·(1/memory_mb)"
    assert f"(score = {formula[1]}, higher is better)" in d.reason
    acc, lat, mem = (cand.mean(n) for n in ("accuracy", "latency_ms", "memory_mb"))
    assert weighted_score(cand, cfg)[0] == pytest.approx(0.5 * acc + 0.3 / lat + 0.2 / mem)


@pytest.mark.parametrize(
    ("metrics", "policy", "cand", "inc", "margin"),
    [
        ([ACC], {}, one(acc=0.9879), one(acc=0.9), "0.0879"),
        ([ACC], {"explore_every": 1}, one(acc=0.9), one(acc=0.9879), "-0.0879"),
        ([ACC, LAT], PA, one(acc=0.9879, lat=1), one(acc=0.9, lat=1), "0.0879"),
        ([ACC, LAT], LX, one(acc=0.9879, lat=1), one(acc=0.9, lat=1), "0.0879"),
        ([ACC, {**LAT, "max_regression": 1.0}], PS, one(acc=0.9879, lat=1), one(acc=0.9, lat=1), "0.0879"),
        ([{**ACC, "weight": 0.3}], W, one(acc=0.9879), one(acc=0.9), "0.02637"),
        ([ACC, LAT_CAP], {}, one(acc=0.9, lat=200.3), one(acc=0.9, lat=1), "-0.3"),
    ],
    ids=["single", "explore", "pareto", "lexicographic", "primary_secondary", "weighted", "constraint"],
)
def test_margins_are_rounded_to_six_significant_digits(metrics, policy, cand, inc, margin) -> None:
    d = decide(cand, inc, make_cfg(metrics, **policy), experiment_index=1)
    assert repr(d.margin) == margin, d.reason
    assert "9999" not in d.reason and "0000" not in d.reason
