"""The search space of quantization hyperparameters, declared as data (``search_space.toml``)."""
from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lcpaq.ir.errors import ConfigError, CorruptFileError

DEFAULT_SPACE = Path(__file__).with_name("search_space.toml")
DIMENSIONS = (
    "calibration", "percentile", "weight_granularity", "act_symmetric", "act_bits", "weight_bits",
    "probes", "bias_correction", "tradeoff_bops",
)
Config = dict[str, Any]


@dataclass(frozen=True)
class SearchSpace:
    """Each dimension's choices, in order. ``percentile`` only matters with percentile calibration."""

    dims: tuple[tuple[str, tuple[Any, ...]], ...]

    def __post_init__(self) -> None:
        names = [name for name, _ in self.dims]
        unknown = set(names) - set(DIMENSIONS)
        if unknown:
            raise ConfigError(f"unknown search dimension(s) {', '.join(sorted(unknown))}; known: {', '.join(DIMENSIONS)}")
        missing = set(DIMENSIONS) - set(names)
        if missing:
            raise ConfigError(f"search space lacks {', '.join(sorted(missing))}")
        for name, choices in self.dims:
            if not choices:
                raise ConfigError(f"search dimension {name!r} has no choices")

    @property
    def choices(self) -> dict[str, tuple[Any, ...]]:
        return dict(self.dims)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_SPACE) -> "SearchSpace":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"search space file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())["dimensions"]
        except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
            raise CorruptFileError(f"search space file {path} is invalid: {exc}") from exc
        return cls(tuple((name, tuple(values)) for name, values in data.items()))

    def narrowed(self, settings: list[str]) -> "SearchSpace":
        """Apply ``NAME=a|b|c`` overrides; each value is read as the dimension's own type."""
        dims = self.choices
        for text in settings:
            name, eq, values = text.partition("=")
            name = name.strip()
            if not eq or name not in dims:
                raise ConfigError(f"bad --space-set {text!r}: write NAME=a|b with NAME one of {', '.join(DIMENSIONS)}")
            dims[name] = tuple(_typed(v.strip(), dims[name]) for v in values.split("|") if v.strip())
        return dataclasses.replace(self, dims=tuple(dims.items()))

    def sample(self, rng: random.Random) -> Config:
        return self._canonical({name: rng.choice(choices) for name, choices in self.dims})

    def suggest(self, trial: Any) -> Config:
        """Draw a configuration through an optuna trial (define-by-run, percentile conditional)."""
        config: Config = {}
        for name, choices in self.dims:
            if name == "percentile" and config.get("calibration") != "percentile":
                continue
            config[name] = trial.suggest_categorical(name, list(choices))
        return self._canonical(config)

    def _canonical(self, config: Config) -> Config:
        if config.get("calibration") != "percentile":
            config["percentile"] = None
        return config

    def size(self) -> int:
        return math.prod(len(choices) for _, choices in self.dims)


def _typed(text: str, like: tuple[Any, ...]) -> Any:
    sample = like[0]
    try:
        if isinstance(sample, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError("expected true or false")
            return text.lower() == "true"
        return type(sample)(text)
    except ValueError as exc:
        raise ConfigError(f"bad search value {text!r}: {exc}") from exc
