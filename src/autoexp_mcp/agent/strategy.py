"""The agent's strategy: which numbers it moves, how far, and how it searches.

Read from a YAML, TOML or JSON file (`--strategy agent_strategy.yaml`), or named
(`--strategy coordinate`, `--strategy random`) with every setting at its default.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import ConfigError
from . import yamlish

SEARCHES = ("coordinate", "random")


class Strategy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    search: Literal["coordinate", "random"] = Field(
        "coordinate", description="coordinate: one value at a time; random: perturb `perturb` values at once"
    )
    seed: int = Field(0, description="the random generator's seed: the same seed makes the same moves")
    step: float = Field(0.25, gt=0, le=10, description="first step, relative: of the bounds' width, else of the value")
    shrink: float = Field(
        0.5, gt=0, lt=1, description="coordinate: a value's step is multiplied by this when both ways fail"
    )
    grow: float = Field(
        2.0, ge=1, le=10, description="coordinate: a value's step is multiplied by this when a move on it is kept"
    )
    min_step: float = Field(0.01, gt=0, description="coordinate: a value whose step falls below this is left alone")
    perturb: int = Field(1, ge=1, le=100, description="random: how many values one move changes")
    explore: float = Field(0.0, ge=0, le=1, description="coordinate: the share of moves that are random perturbations")
    keys: tuple[str, ...] = Field((), description="the values to move (globs over dotted keys); default: every number")
    skip: tuple[str, ...] = Field((), description="values never to move (globs)")
    bounds: dict[str, tuple[float, float]] = Field({}, description="key (glob) -> [low, high], inclusive")

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for key, (lo, hi) in v.items():
            if not lo < hi:
                raise ValueError(f"bounds of {key}: low {lo:g} must be below high {hi:g}")
        return v

    def wants(self, key: str) -> bool:
        if any(fnmatch.fnmatchcase(key, g) for g in self.skip):
            return False
        return not self.keys or any(fnmatch.fnmatchcase(key, g) for g in self.keys)

    def bounds_of(self, key: str) -> tuple[float | None, float | None]:
        for glob, (lo, hi) in self.bounds.items():
            if fnmatch.fnmatchcase(key, glob):
                return lo, hi
        return None, None


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return tomllib.loads(text)
    if suffix == ".json":
        return json.loads(text)
    return yamlish.load(text)


def load_strategy(spec: str | Path | None, *, seed: int | None = None) -> Strategy:
    """The strategy named by `spec` (coordinate, random), read from the file `spec`, or the
    default; `seed` overrides the file's."""
    overrides: dict[str, Any] = {} if seed is None else {"seed": seed}
    if spec is None or str(spec) in SEARCHES:
        return Strategy(**({"search": str(spec)} if spec else {}), **overrides)
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(
            f"--strategy {spec}: no such file, and not a search name; give {' or '.join(SEARCHES)} "
            "or a YAML/TOML/JSON strategy file"
        )
    try:
        data = _parse(path)
    except (ValueError, tomllib.TOMLDecodeError) as e:  # yamlish.YamlError and JSON errors are ValueErrors
        raise ConfigError(f"{path}: cannot be read: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping of settings (search, seed, step, keys, bounds …)")
    try:
        return Strategy(**{**data, **overrides})
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'the file'}: {err['msg']}" for err in e.errors()
        )
        fields = ", ".join(Strategy.model_fields)
        raise ConfigError(f"{path}: {problems} (the settings are: {fields})") from None
