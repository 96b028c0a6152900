"""autoexp.toml: the schema accepts the documented minimum and refuses everything else clearly."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp.config import CONFIG_FILE, load_config, parse_config, starter_config
from autoexp_mcp.errors import ConfigError

# The minimum file from the design document, verbatim.
MINIMUM_TOML = """\
[experiment]
tag = "regex-f1"              # experiments live on branch autoexp/<tag>
target = "patterns.yaml"      # the one editable file, relative to the repo root
eval = "python evaluate.py"   # split with shlex, run from the repo root, no shell
timeout = 120                 # seconds per eval run

[[metric]]
name = "f1"
direction = "max"             # "max" or "min"
# pattern = '^f1:\\s*(\\S+)'    # optional; default: a line "<name>: <number>"

[budget]
max_experiments = 100
abort_on_consecutive_crashes = 3
"""


def minimum() -> dict[str, Any]:
    return tomllib.loads(MINIMUM_TOML)


def with_changes(**sections: Any) -> dict[str, Any]:
    """The minimum config with whole sections or single keys replaced (`experiment={"tag": ...}`)."""
    data = minimum()
    for section, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **value}
        else:
            data[section] = value
    return data


def config_error(data: dict[str, Any], source: str = "autoexp.toml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, source)
    return str(info.value)


def test_minimum_file_from_design_parses() -> None:
    cfg = parse_config(minimum())
    assert cfg.experiment.tag == "regex-f1"
    assert cfg.experiment.branch == "autoexp/regex-f1"
    assert cfg.experiment.target == "patterns.yaml"
    assert cfg.experiment.argv == ["python", "evaluate.py"]
    assert cfg.experiment.timeout == 120
    assert [(m.name, m.direction) for m in cfg.metric] == [("f1", "max")]
    assert cfg.objective.name == "f1"
    assert cfg.budget.max_experiments == 100
    assert cfg.budget.abort_on_consecutive_crashes == 3
    assert cfg.policy.mode == "single"


def test_parsed_config_is_frozen() -> None:
    cfg = parse_config(minimum())
    with pytest.raises(ValueError):
        cfg.experiment.tag = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("where", "expected_key"),
    [
        ("top", "bogus"),
        ("experiment", "[experiment].bogus"),
        ("metric", "[[metric]] #1 .bogus"),
        ("budget", "[budget].bogus"),
        ("policy", "[policy].bogus"),
        ("holdout", "[holdout].bogus"),
        ("stage", "[[stage]] #1 .bogus"),
        ("stage_metric", "[[stage]] #1 [[stage.metric]] #1 .bogus"),
        ("stage_budget", "[[stage]] #1 [stage.budget].bogus"),
    ],
)
def test_unknown_key_at_every_level_is_refused_naming_key_and_file(where: str, expected_key: str) -> None:
    data = minimum()
    stage: dict[str, Any] = {"name": "s1", "target": "a.txt", "metric": [{"name": "f1", "direction": "max"}]}
    if where == "top":
        data["bogus"] = 1
    elif where in ("experiment", "budget"):
        data[where]["bogus"] = 1
    elif where == "metric":
        data["metric"][0]["bogus"] = 1
    elif where == "policy":
        data["policy"] = {"mode": "single", "bogus": 1}
    elif where == "holdout":
        data["holdout"] = {"eval": "python holdout.py", "bogus": 1}
    else:
        if where == "stage":
            stage["bogus"] = 1
        elif where == "stage_metric":
            stage["metric"][0]["bogus"] = 1
        else:
            stage["budget"] = {"bogus": 1}
        data["stage"] = [stage]
    msg = config_error(data, "/repo/autoexp.toml")
    assert msg.startswith("/repo/autoexp.toml: ")
    assert f"unknown key {expected_key}: remove it or check its spelling" in msg


def test_missing_required_key_is_named() -> None:
    data = minimum()
    del data["experiment"]["eval"]
    assert "missing key [experiment].eval: add it (split with shlex, run from the repo root, no shell)" in config_error(
        data
    )


def test_no_metric_at_all_is_refused() -> None:
    data = minimum()
    del data["metric"]
    assert "at least one metric is required" in config_error(data)


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        ({"metric": [{"name": "f1", "direction": "up"}]}, ["[[metric]] #1 .direction", '"max"', '"min"']),
        ({"experiment": {"tag": "has space"}}, ["[experiment].tag", "'has space'", "autoexp/<tag>"]),
        ({"experiment": {"tag": "-rf"}}, ["[experiment].tag", "starting with a letter or digit"]),
        ({"experiment": {"tag": "a..b"}}, ["[experiment].tag"]),
        ({"experiment": {"tag": "x.lock"}}, ["[experiment].tag"]),
        ({"experiment": {"tag": ""}}, ["[experiment].tag"]),
        ({"experiment": {"target": "../outside.py"}}, ["[experiment].target", "relative to the repository root"]),
        ({"experiment": {"target": "sub/../../outside.py"}}, ["[experiment].target", "inside it"]),
        ({"experiment": {"target": "/etc/passwd"}}, ["[experiment].target", "'/etc/passwd'"]),
        ({"experiment": {"target": "-flag"}}, ["[experiment].target"]),
        ({"experiment": {"target": ""}}, ["[experiment].target"]),
        ({"experiment": {"timeout": 0}}, ["[experiment].timeout", "greater than 0"]),
        ({"experiment": {"timeout": -5}}, ["[experiment].timeout", "greater than 0"]),
        ({"experiment": {"eval": ""}}, ["[experiment].eval", "the command is empty"]),
        ({"experiment": {"eval": "   "}}, ["[experiment].eval", "the command is empty"]),
        ({"experiment": {"eval": "python 'unclosed"}}, ["[experiment].eval", "cannot split the command"]),
        ({"metric": [{"name": "f1", "direction": "max", "pattern": "f1: \\S+"}]}, ["exactly one capture group", "0"]),
        (
            {"metric": [{"name": "f1", "direction": "max", "pattern": "(f1): (\\S+)"}]},
            ["exactly one capture group", "it has 2"],
        ),
        ({"metric": [{"name": "f1", "direction": "max", "pattern": "(f1"}]}, ["not a valid regular expression"]),
        (
            {"metric": [{"name": "f1", "direction": "max", "pattern": "f1: (\\S+)", "json_key": "f1"}]},
            ["pattern or json_key, not both"],
        ),
        ({"metric": [{"name": "has space", "direction": "max"}]}, ["[[metric]] #1 .name", "no spaces"]),
        ({"metric": [{"name": "f1", "direction": "max", "file": "../out.json"}]}, ["[[metric]] #1 .file"]),
        (
            {"metric": [{"name": "f1", "direction": "max"}, {"name": "f1", "direction": "min"}]},
            ["metric names must be unique", "f1"],
        ),
        ({"budget": {"max_experiments": 0}}, ["[budget].max_experiments"]),
        ({"policy": {"mode": "bestof"}}, ["[policy].mode"]),
        ({"experiment": {"protect": ["../data/*"]}}, ["[experiment].protect", "protect entry"]),
        ({"holdout": {"eval": ""}}, ["[holdout].eval", "the command is empty"]),
    ],
)
def test_bad_value_gives_clear_message(changes: dict[str, Any], fragments: list[str]) -> None:
    msg = config_error(with_changes(**copy.deepcopy(changes)))
    assert msg.startswith("autoexp.toml: ")
    for fragment in fragments:
        assert fragment in msg


@pytest.mark.parametrize(
    ("metrics", "policy", "fragments"),
    [
        ([{"name": "f1", "direction": "max"}], {"mode": "pareto"}, ["'pareto'", "at least two [[metric]]"]),
        ([{"name": "f1", "direction": "max"}], {"mode": "lexicographic"}, ["at least two"]),
        ([{"name": "f1", "direction": "max"}], {"mode": "primary_secondary"}, ["at least two"]),
        (
            [{"name": "f1", "direction": "max", "weight": 1.0}],
            {"mode": "single"},
            ["`weight` is only used with policy.mode = 'weighted'", "'single'"],
        ),
        (
            [{"name": "f1", "direction": "max"}, {"name": "ms", "direction": "min"}],
            {"mode": "weighted"},
            ["non-zero `weight`"],
        ),
        (
            [{"name": "f1", "direction": "max"}, {"name": "ms", "direction": "min"}],
            {"mode": "threshold"},
            ["'threshold'", "`at_least` or `at_most`"],
        ),
        (
            [{"name": "f1", "direction": "max", "at_least": 0.5}],
            {"mode": "constraints"},
            ["one metric without bounds to optimise"],
        ),
        (
            [{"name": "f1", "direction": "max", "transform": "log"}],
            {"mode": "single"},
            ["transform = 'log' but no weight"],
        ),
        (
            [{"name": "f1", "direction": "max", "at_least": float("inf")}],
            {"mode": "single"},
            ["finite"],
        ),
    ],
)
def test_policy_metric_mismatch_is_refused(
    metrics: list[dict[str, Any]], policy: dict[str, Any], fragments: list[str]
) -> None:
    msg = config_error(with_changes(metric=metrics, policy=policy))
    for fragment in fragments:
        assert fragment in msg


def test_stage_mismatch_names_the_stage() -> None:
    data = minimum()
    data["policy"] = {"mode": "pareto"}
    data["metric"] = [{"name": "f1", "direction": "max"}, {"name": "ms", "direction": "min"}]
    data["stage"] = [{"name": "tune", "target": "b.txt", "metric": [{"name": "f1", "direction": "max"}]}]
    msg = config_error(data)
    assert "[[stage]] #1 (tune)" in msg


def test_stage_view_swaps_target_metrics_and_budget() -> None:
    data = minimum()
    data["stage"] = [
        {"name": "a", "target": "a.txt", "metric": [{"name": "acc", "direction": "max"}]},
        {"name": "b", "target": "b.txt", "metric": [{"name": "ms", "direction": "min"}], "budget": {}},
    ]
    cfg = parse_config(data)
    second = cfg.for_stage(1)
    assert second.experiment.target == "b.txt"
    assert [m.name for m in second.metric] == ["ms"]
    assert cfg.stage_name(1) == "b"
    assert parse_config(minimum()).for_stage(0).experiment.target == "patterns.yaml"


def test_several_errors_are_all_reported() -> None:
    msg = config_error(with_changes(experiment={"timeout": 0, "tag": "bad tag"}))
    assert "[experiment].timeout must be greater than 0, got 0" in msg
    assert "[experiment].tag: tag 'bad tag'" in msg


@pytest.mark.parametrize(
    "metrics",
    [
        [("score", "max")],
        [("accuracy", "max"), ("latency_ms", "min")],
    ],
)
@pytest.mark.parametrize(("hours", "cost"), [(None, None), (2.5, 10.0)])
def test_starter_config_round_trips_through_parse_config(
    metrics: list[tuple[str, Any]], hours: float | None, cost: float | None
) -> None:
    text = starter_config(
        tag="run-1",
        target="src/solver.py",
        eval_cmd="python -m bench --quick",
        metrics=metrics,
        max_hours=hours,
        max_cost_usd=cost,
    )
    assert text.startswith("# autoexp.toml")
    cfg = parse_config(tomllib.loads(text))
    assert cfg.experiment.tag == "run-1"
    assert cfg.experiment.target == "src/solver.py"
    assert cfg.experiment.argv == ["python", "-m", "bench", "--quick"]
    assert [(m.name, m.direction) for m in cfg.metric] == metrics
    assert cfg.budget.max_wall_clock_hours == hours
    assert cfg.budget.max_cost_usd == cost
    assert cfg.policy.mode == ("lexicographic" if len(metrics) > 1 else "single")


def test_starter_config_refuses_invalid_input() -> None:
    with pytest.raises(ConfigError, match="the generated config"):
        starter_config(tag="bad tag", target="x.py", eval_cmd="python x.py", metrics=[("s", "max")])


def test_load_config_reads_the_repo_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(MINIMUM_TOML, encoding="utf-8")
    assert load_config(tmp_path).experiment.tag == "regex-f1"


def test_load_config_missing_file_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / CONFIG_FILE) in msg
    assert "autoexp-mcp init --target FILE --eval 'CMD' --metric NAME:max|min" in msg


def test_load_config_invalid_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text("[experiment\ntag = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path / CONFIG_FILE) in str(info.value)
    assert "not valid TOML" in str(info.value)


def test_load_config_non_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_bytes(b'[experiment]\ntag = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path)


def test_load_config_errors_name_the_file_path(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(MINIMUM_TOML + "\n[extra]\nx = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / CONFIG_FILE}: ")
    assert "unknown table [extra]: remove it or check its spelling" in str(info.value)


def test_config_error_has_its_exit_code() -> None:
    assert ConfigError.exit_code == 2


@pytest.mark.parametrize(
    ("metric_extra", "mode", "message"),
    [
        ({"max_regression": 1.0}, "single", "max_regression, which only applies"),
        ({"weight": -1.0}, "weighted", "negative weight"),
        ({"transform": "reciprocal"}, "single", "transform = 'reciprocal' but no weight"),
    ],
)
def test_settings_that_would_have_no_effect_are_refused(metric_extra: dict, mode: str, message: str) -> None:
    data = {
        "experiment": {"tag": "t", "target": "a.txt", "eval": "python e.py"},
        "metric": [{"name": "a", "direction": "max", **metric_extra}, {"name": "b", "direction": "min", "weight": 1.0}]
        if mode == "weighted"
        else [{"name": "a", "direction": "max", **metric_extra}],
        "policy": {"mode": mode},
    }
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


# Each kind of pydantic error, as a user reads it: the key path in TOML, what is wrong, the fix.
TOML_WORDS = [
    (
        {"metric": {"name": "f1", "direction": "max"}},
        "[metric] must be an array of tables — write [[metric]] (double brackets), once per metric",
    ),
    (
        {"experiment": [{"tag": "t", "target": "a", "eval": "e"}]},
        "[[experiment]] must be a single table — write [experiment] (single brackets), once",
    ),
    ({"experiment": "x"}, '[experiment] must be a table (a [experiment] header with its keys below it), got "x"'),
    ({"experiment": {"timeout": "abc"}}, '[experiment].timeout must be a number, got "abc"'),
    ({"experiment": {"tag": 7}}, "[experiment].tag must be a string in quotes, got 7"),
    (
        {"experiment": {"protect": "data/**"}},
        '[experiment].protect must be an array, got "data/**": write protect = ["data/**"]',
    ),
    ({"experiment": {"protect": [1]}}, "[experiment].protect entry #1 must be a string in quotes, got 1"),
    ({"budget": {"max_experiments": 0}}, "[budget].max_experiments must be at least 1, got 0"),
    ({"experiment": {"timeout": 0}}, "[experiment].timeout must be greater than 0, got 0"),
    ({"experiment": {"wait_seconds": 7200}}, "[experiment].wait_seconds must be at most 3600, got 7200"),
    ({"policy": {"alpha": 1}}, "[policy].alpha must be less than 1, got 1"),
    ({"policy": {"repeats": 1.5}}, "[policy].repeats must be a whole number, got 1.5"),
    ({"policy": {"keep_ties": "maybe"}}, '[policy].keep_ties must be true or false, got "maybe"'),
    (
        {"policy": {"significance": "t"}},
        '[policy].significance must be one of "sigma", "welch", got "t"',
    ),
    (
        {"metric": [{"name": "f1", "direction": "max"}, {"name": "f2", "direction": "up"}]},
        '[[metric]] #2 .direction must be one of "max", "min", got "up"',
    ),
    ({"metric": [{"name": "f1"}]}, 'missing key [[metric]] #1 .direction: add it (one of "max", "min")'),
    ({"experiment": None}, "missing table [experiment]: add it with the keys tag, target and eval"),
    (
        {"metrics": [{"name": "f1", "direction": "max"}]},
        "unknown table [[metrics]]: remove it or check its spelling (did you mean [[metric]]?)",
    ),
    ({"budgett": {}}, "unknown table [budgett]: remove it or check its spelling (did you mean [budget]?)"),
    (
        {"experiment": {"timout": 5}},
        "unknown key [experiment].timout: remove it or check its spelling (did you mean timeout?)",
    ),
    (
        {"stage": [{"name": "s", "target": "b.txt", "metric": []}]},
        "[[stage]] #1 needs at least one [[stage.metric]]",
    ),
    (
        {"stage": [{"name": "s", "target": "b.txt", "metric": {"name": "x", "direction": "max"}}]},
        "[[stage]] #1 [stage.metric] must be an array of tables — "
        "write [[stage.metric]] (double brackets), once per metric",
    ),
    (
        {
            "stage": [
                {
                    "name": "s",
                    "target": "b.txt",
                    "metric": [{"name": "x", "direction": "max"}],
                    "budget": {"max_experiments": 0},
                }
            ]
        },
        "[[stage]] #1 [stage.budget].max_experiments must be at least 1, got 0",
    ),
    (
        {"metric": [{"name": "f1", "direction": "max", "pattern": "f1: (\\S+)", "json_key": "f1"}]},
        "[[metric]] #1: metric 'f1': give pattern or json_key, not both",
    ),
    ({"experiment": {"tag": "has space"}}, "[experiment].tag: tag 'has space' must be 1-64 characters"),
]


@pytest.mark.parametrize(
    ("changes", "message"), TOML_WORDS, ids=[m.split(" ")[0] + str(i) for i, (_, m) in enumerate(TOML_WORDS)]
)
def test_config_errors_speak_toml(changes: dict[str, Any], message: str) -> None:
    data = with_changes(**copy.deepcopy(changes))
    data = {k: v for k, v in data.items() if v is not None}
    msg = config_error(data)
    assert msg.startswith(f"autoexp.toml: {message}"), msg
    assert "Input should" not in msg and "valid tuple" not in msg


def test_single_brackets_for_a_metric_name_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE).write_text(MINIMUM_TOML.replace("[[metric]]", "[metric]"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / CONFIG_FILE}: [metric] must be an array of tables — "
        "write [[metric]] (double brackets), once per metric"
    )


def test_the_readme_quotes_these_messages_as_the_code_writes_them() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    flat = " ".join(readme.split())
    quoted = [message for _, message in TOML_WORDS if f"`{message}`" in flat or f"`autoexp.toml: {message}`" in flat]
    assert len(quoted) == 3, quoted
