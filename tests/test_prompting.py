"""The agent instructions: templates per domain, the user's own template, the warm start."""

from __future__ import annotations

import pytest

from autoexp_mcp import prompting
from autoexp_mcp.errors import ConfigError
from autoexp_mcp.loop import Experiment
from conftest import MakeRepo, baseline, harness_config, play


def test_every_domain_renders_without_placeholders_left(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo())
    try:
        domains = prompting.domains()
        assert {"prompt", "sql", "docker", "regex", "cache", "features", "nginx", "game_ai", "ml_training"} <= set(
            domains
        )
        for domain in domains:
            text = exp.render_prompt(domain)
            assert "${" not in text and "Typical agent moves" in text, domain
            assert "value.txt" in text and "NEVER STOP" in text
    finally:
        exp.close()


def test_an_unknown_domain_names_the_choices(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo())
    try:
        with pytest.raises(ConfigError, match="choose one of: .*regex"):
            exp.render_prompt("astrology")
        with pytest.raises(ConfigError, match="not a valid name"):
            exp.render_prompt("../generic")
    finally:
        exp.close()


def test_a_user_template_replaces_the_generic_one(make_repo: MakeRepo) -> None:
    template = "Improve ${target} for ${metrics}; budget: ${budget}.\n${warm_start}\nCost: $$0.\n"
    config = harness_config().replace('tag = "t"', 'tag = "t"\nprompt_template = "my_prompt.md"')
    exp = Experiment(make_repo(config=config, files={"my_prompt.md": template}))
    try:
        baseline(exp)
        play(exp, "crash")
        text = exp.render_prompt()
        assert text.startswith("Improve value.txt for score (higher is better); budget: 50 experiments")
        assert "#2 crash" in text and "Cost: $0." in text and "autonomous experimentation agent" not in text
    finally:
        exp.close()


def test_warm_start_lists_the_best_and_what_was_reverted(make_repo: MakeRepo) -> None:
    exp = Experiment(make_repo())
    try:
        assert "No experiments yet." in exp.render_prompt()
        baseline(exp)
        play(exp, "4", "raise to four")
        play(exp, "2", "drop to two")
        text = exp.render_prompt()
        assert "3 experiments so far." in text and "Best kept: commit" in text and "score 4" in text
        kept, reverted = text.index("Kept recently"), text.index("Tried and reverted")
        assert kept < text.index("raise to four") < reverted < text.index("drop to two")
    finally:
        exp.close()


def test_weighted_policy_sentence_gives_the_agent_the_score_formula() -> None:
    from autoexp_mcp.config import parse_config

    cfg = parse_config(
        {
            "experiment": {"tag": "t", "target": "t.txt", "eval": "python e.py"},
            "policy": {"mode": "weighted"},
            "metric": [
                {"name": "accuracy", "direction": "max", "weight": 0.5},
                {"name": "latency_ms", "direction": "min", "weight": 0.3, "transform": "reciprocal"},
            ],
        }
    )
    assert prompting.policy_sentence(cfg) == (
        "keep when the weighted score 0.5·accuracy + 0.3·(1/latency_ms) improves (higher is better)."
    )
