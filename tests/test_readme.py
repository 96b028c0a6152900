"""The README's config snippets parse, and its first two commands are the quick start."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from autoexp_mcp.config import parse_config

README = Path(__file__).resolve().parent.parent / "README.md"
TEXT = README.read_text(encoding="utf-8")
TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", TEXT, re.DOTALL)
BASE_EXPERIMENT = {"tag": "readme", "target": "t.txt", "eval": "python e.py"}


def test_readme_opens_with_install_and_test_commands() -> None:
    bash = re.findall(r"```bash\n(.*?)```", TEXT, re.DOTALL)
    assert "autoexp-mcp demo" in bash[0] and "pip install ." in bash[0]
    assert "pytest" in bash[1]
    assert TEXT.index(bash[0]) < TEXT.index("## ")


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[f"toml{i}" for i in range(len(TOML_BLOCKS))])
def test_every_config_snippet_is_valid(block: str) -> None:
    data = tomllib.loads(block)
    data.setdefault("experiment", BASE_EXPERIMENT)
    if "metric" not in data and "stage" not in data:
        data["metric"] = [{"name": "score", "direction": "max"}]
    parse_config(data, "README.md")


def test_there_are_snippets_for_every_mode() -> None:
    modes = set(re.findall(r'mode = "(\w+)"', "".join(TOML_BLOCKS)))
    assert {"primary_secondary", "pareto", "weighted", "constraints", "lexicographic"} <= modes
