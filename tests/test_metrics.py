"""Metric extraction: the server reads every figure from the eval output itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoexp_mcp.config import MetricConfig
from autoexp_mcp.metrics import MAX_METRIC_FILE_BYTES, describe, extract
from autoexp_mcp.runner import METRIC_WINDOW, CappedLog


def metric(name: str = "score", **kw: Any) -> MetricConfig:
    return MetricConfig(name=name, direction=kw.pop("direction", "max"), **kw)


def one(m: MetricConfig, output: str, cwd: Path | None = None) -> float:
    ex = extract([m], output, cwd)
    assert ex.ok, ex.summary()
    return ex.values[m.name]


def error_of(m: MetricConfig, output: str, cwd: Path | None = None) -> str:
    ex = extract([m], output, cwd)
    assert not ex.ok
    assert m.name not in ex.values
    return ex.errors[m.name]


# --- the default `<name>: <number>` line --------------------------------------------------


def test_default_line_is_read() -> None:
    assert one(metric(), "loading\nscore: 0.75\n") == 0.75


def test_default_line_last_match_wins() -> None:
    out = "score: 0.1\nstep 2\nscore: 0.2\nscore: 0.3\ndone\n"
    assert one(metric(), out) == 0.3


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("score=0.5", 0.5),
        ("score = 0.5", 0.5),
        ("  score:\t-3  ", -3.0),
        ("SCORE: 12", 12.0),
        ("Score: 1e-3", 0.001),
        ("score: +.5", 0.5),
        ("score: 7.", 7.0),
    ],
)
def test_default_line_accepts_equals_case_and_number_forms(line: str, value: float) -> None:
    assert one(metric(), f"header\n{line}\n") == pytest.approx(value)


@pytest.mark.parametrize(
    "output",
    [
        "final score: 0.5\n",  # the name must start the line
        "scores: 0.5\n",
        "",
    ],
)
def test_default_line_needs_the_whole_line(output: str) -> None:
    assert error_of(metric(), output) == "no line 'score: <number>' in the output"


def test_a_metric_line_with_text_after_the_number_is_not_a_number() -> None:
    assert error_of(metric(), "score: 0.5 points\n") == "matched '0.5 points', which is not a number"


def test_metric_name_with_regex_characters_is_matched_literally() -> None:
    m = metric("acc@1")
    assert one(m, "accX1: 5\nacc@1: 0.9\n") == 0.9
    m = metric("f1.macro")
    assert error_of(m, "f1Xmacro: 0.4\n") == "no line 'f1.macro: <number>' in the output"


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_non_finite_value_is_an_error(bad: str) -> None:
    err = error_of(metric(), f"score: {bad}\n")
    assert "not a finite number" in err
    assert bad in err


def test_several_metrics_are_read_independently() -> None:
    ex = extract([metric("acc"), metric("ms", direction="min"), metric("gone")], "acc: 0.9\nms: 12.5\n")
    assert ex.values == {"acc": 0.9, "ms": 12.5}
    assert ex.errors == {"gone": "no line 'gone: <number>' in the output"}
    assert ex.summary() == "gone: no line 'gone: <number>' in the output"


# --- custom pattern -----------------------------------------------------------------------


def test_custom_pattern_last_match_wins() -> None:
    m = metric(pattern=r"^val_bpb:\s*(\S+)")
    assert one(m, "val_bpb: 1.5\nval_bpb: 1.25\nother\n") == 1.25


def test_custom_pattern_is_multiline() -> None:
    m = metric(pattern=r"^F1 (\d+\.\d+)$")
    assert one(m, "x F1 9.9\nF1 0.81\ntrailer\n") == 0.81


def test_custom_pattern_no_match_is_an_error() -> None:
    m = metric(pattern=r"^f1:\s*(\S+)")
    assert error_of(m, "accuracy: 3\n") == "no line matched the pattern '^f1:\\\\s*(\\\\S+)'"


def test_custom_pattern_matching_a_word_is_not_a_number() -> None:
    m = metric(pattern=r"^f1:\s*(\S+)")
    err = error_of(m, "f1: high\n")
    assert err == "matched 'high', which is not a number"


def test_not_a_number_message_is_bounded() -> None:
    m = metric(pattern=r"^f1:\s*(\S+)")
    err = error_of(m, "f1: " + "x" * 5000 + "\n")
    assert len(err) < 120


# --- json_key -----------------------------------------------------------------------------


def test_json_key_reads_the_last_json_object_line() -> None:
    m = metric(json_key="score")
    out = '{"score": 1}\nprogress\n{"score": 2, "other": "x"}\nnot json {\n'
    assert one(m, out) == 2.0


def test_json_key_dotted_reaches_nested_values() -> None:
    m = metric(json_key="eval.metrics.f1")
    assert one(m, '{"eval": {"metrics": {"f1": 0.66}}}\n') == 0.66


def test_json_key_accepts_a_numeric_string() -> None:
    assert one(metric(json_key="score"), '{"score": "0.5"}\n') == 0.5


def test_json_key_skips_broken_json_lines() -> None:
    m = metric(json_key="score")
    assert one(m, '{"score": 3}\n{"score": 4,,}\n') == 3.0


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"score": "fast"}', "matched 'fast', which is not a number"),
        ('{"score": true}', "holds bool, not a number"),
        ('{"score": null}', "holds NoneType, not a number"),
        ('{"score": [1, 2]}', "holds list, not a number"),
        ('{"score": {"a": 1}}', "holds dict, not a number"),
        ('{"score": "NaN"}', "not a finite number"),
        ('{"other": 1}', "the last JSON object line has no key 'score'"),
    ],
)
def test_json_key_non_numeric_or_missing_is_an_error(line: str, fragment: str) -> None:
    assert fragment in error_of(metric(json_key="score"), line + "\n")


def test_json_key_missing_nested_part_is_an_error() -> None:
    err = error_of(metric(json_key="eval.f1"), '{"eval": 3}\n')
    assert err == "the last JSON object line has no key 'eval.f1'"


def test_json_key_without_any_json_line_is_an_error() -> None:
    assert error_of(metric(json_key="score"), "score: 1\n") == "no line of the output is a JSON object"


def test_json_key_uses_only_the_last_json_line_even_if_it_lacks_the_key() -> None:
    # An earlier object with the key does not count: the final summary line is authoritative.
    err = error_of(metric(json_key="score"), '{"score": 1}\n{"loss": 2}\n')
    assert "no key 'score'" in err


# --- metric read from a file the eval writes ----------------------------------------------


def test_file_source_is_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "result.txt").write_text("score: 0.25\n")
    m = metric(file="out/result.txt")
    assert one(m, "score: 99\n", cwd=tmp_path) == 0.25


def test_file_source_with_json_key(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"val": {"loss": 0.125}}')
    assert one(metric(json_key="val.loss", file="metrics.json"), "", cwd=tmp_path) == 0.125


def test_file_source_default_cwd_is_process_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "r.txt").write_text("score: 4\n")
    monkeypatch.chdir(tmp_path)
    assert one(metric(file="r.txt"), "") == 4.0


def test_file_source_missing_file_is_an_error(tmp_path: Path) -> None:
    error = error_of(metric(file="result.txt"), "score: 1\n", cwd=tmp_path)
    assert error.startswith("the eval did not write result.txt")


def test_file_source_too_large_is_an_error(tmp_path: Path) -> None:
    with (tmp_path / "big.txt").open("wb") as f:
        f.truncate(MAX_METRIC_FILE_BYTES + 1)
    assert "is larger than" in error_of(metric(file="big.txt"), "", cwd=tmp_path)


def test_describe_says_where_each_metric_comes_from() -> None:
    assert describe(metric()) == "score: the last line 'score: <number>' in the eval output"
    assert "regex" in describe(metric(pattern=r"s=(\d+)"))
    assert describe(metric(json_key="a.b", file="m.json")) == (
        "score: key 'a.b' of the last JSON object line in the file m.json"
    )


# --- what the server received -------------------------------------------------------------


def received(chunks: list[bytes], tmp_path: Path) -> str:
    log = CappedLog(tmp_path / "run.log", 64 * 1024 * 1024)
    for chunk in chunks:
        log.write(chunk)
    log.close()
    return log.received().decode("utf-8", errors="replace")


def test_small_output_is_received_whole(tmp_path: Path) -> None:
    assert received([b"a\n", b"score: 1\n"], tmp_path) == "a\nscore: 1\n"


def test_large_output_keeps_the_head_and_tail_windows(tmp_path: Path) -> None:
    middle = b"MIDDLE-MARKER\n" + b"x" * (3 * METRIC_WINDOW) + b"\n"
    chunks = [b"start: 1\n", b"." * METRIC_WINDOW + b"\n", middle, b"." * METRIC_WINDOW, b"\nscore: 0.5\n"]
    text = received(chunks, tmp_path)
    assert len(text.encode()) <= 2 * METRIC_WINDOW + 1
    assert text.startswith("start: 1\n")
    assert text.endswith("score: 0.5\n")
    assert "MIDDLE-MARKER" not in text
    assert one(metric(), text) == 0.5
    assert one(metric("start"), text) == 1.0


def test_output_just_over_one_window_is_received_whole(tmp_path: Path) -> None:
    data = b"score: 3\n" + b"y" * METRIC_WINDOW + b"\nend: 4\n"
    text = received([data[i : i + 1000] for i in range(0, len(data), 1000)], tmp_path)
    assert text.encode() == data


def test_invalid_utf8_in_the_output_is_replaced(tmp_path: Path) -> None:
    assert one(metric(), received([b"\xff\xfe garbage\nscore: 2\n"], tmp_path)) == 2.0


def test_the_received_output_ignores_a_log_file_rewritten_behind_the_server(tmp_path: Path) -> None:
    log = CappedLog(tmp_path / "run.log", 64 * 1024 * 1024)
    log.write(b"score: 2\n")
    (tmp_path / "run.log").write_bytes(b"score: 1000\n")
    log.close()
    assert one(metric(), log.received().decode()) == 2.0
