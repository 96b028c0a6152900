"""Where the shipped prompt templates and examples are: inside the installed package (wheel),
or at the top of a source checkout (editable install)."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def asset_dir(name: str) -> Path:
    """`prompts` or `examples`, wherever this installation keeps them."""
    for candidate in (_PKG / name, _PKG.parent.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name}/ directory is missing from this installation of autoexp-mcp")
