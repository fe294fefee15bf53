"""Budget specs: ``size=0.3x`` (of fp32), ``bops=0.5int8`` (of uniform INT8), ``size=2MB``,
``latency=2.5ms``, ``act_memory=64KiB``. Parsed once, here: :func:`parse_budget` checks the
syntax and units; the parsed spec resolves to a limit in the quantity's natural unit (bytes,
bit operations, seconds) once the model's fp32 and INT8 reference totals are known.

The quantity names are defined once, in :mod:`lcpaq.ir.meta` (``Budget`` validates them), and
re-exported here with what else is known about each quantity."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import ACT_MEMORY, BOPS, LATENCY, QUANTITIES, SIZE, Budget

__all__ = [
    "ACT_MEMORY", "BOPS", "LATENCY", "PEAK", "QUANTITIES", "SIZE", "BudgetSpec", "budget_options", "format_quantity",
    "parse_budget",
]

#: Quantities that are the largest layer's value (peak activation memory), not a sum over layers.
PEAK: frozenset[str] = frozenset({ACT_MEMORY})

_BYTES = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_UNITS = {
    SIZE: _BYTES,
    ACT_MEMORY: _BYTES,
    BOPS: {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12},
    LATENCY: {"s": 1, "ms": 1e-3, "us": 1e-6},
}
_REFERENCES = {"x": "fp32", "int8": "INT8"}


@dataclass(frozen=True)
class BudgetSpec:
    """A parsed budget: ``number`` times ``factor`` (an absolute unit), or times the fp32
    (``reference="x"``) or uniform-INT8 (``reference="int8"``) total of the quantity."""

    quantity: str
    number: float
    factor: float
    reference: Literal["", "x", "int8"]
    text: str

    def resolve(self, fp32: dict[str, float], int8: dict[str, float]) -> Budget:
        """The budget with its limit in the quantity's unit, given the reference totals."""
        if not self.reference:
            return Budget(self.quantity, self.number * self.factor, self.text)
        refs = fp32 if self.reference == "x" else int8
        if self.quantity not in refs:
            raise ConfigError(f"bad budget {self.text!r}: no {_REFERENCES[self.reference]} reference for {self.quantity}")
        return Budget(self.quantity, self.number * refs[self.quantity], self.text)


def parse_budget(text: str) -> BudgetSpec:
    """Parse ``key=value``; a malformed budget is one ConfigError line."""
    key, eq, value = text.partition("=")
    key, value = key.strip().replace("-", "_"), value.strip().lower()
    if not eq or key not in QUANTITIES:
        raise ConfigError(f"bad budget {text!r}: write KEY=VALUE with KEY one of {', '.join(QUANTITIES)}")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z0-9]*)", value)
    if not match:
        raise ConfigError(f"bad budget {text!r}: the value must be a number with an optional unit")
    number, unit = float(match[1]), match[2]
    if unit in _REFERENCES:
        return BudgetSpec(key, number, 1.0, unit, text)  # type: ignore[arg-type]
    units = _UNITS[key]
    if unit not in units:
        raise ConfigError(f"bad budget {text!r}: unit {unit!r} unknown for {key}; use {', '.join(u or 'none' for u in units)}, x or int8")
    return BudgetSpec(key, number, float(units[unit]), "", text)


def budget_options(texts: Sequence[str]) -> dict[str, str]:
    """``["size=0.3x", "bops=1G"]`` -> ``{"size": "0.3x", "bops": "1G"}``, the ilp pass's options;
    each budget is parsed, and a quantity given twice is refused."""
    options: dict[str, str] = {}
    for text in texts:
        spec = parse_budget(text)
        if spec.quantity in options:
            raise ConfigError(f"budget {spec.quantity} is given twice")
        options[spec.quantity] = text.partition("=")[2].strip()
    return options


#: Significant digits a quantity in a scaled unit (KiB, GBOPs, ms) is printed with, at least.
SIGNIFICANT_DIGITS = 4


def format_quantity(quantity: str, value: float, versus: float | None = None) -> str:
    """A quantity in readable units: GiB/MiB/KiB/B for bytes, T/G/M/k BOPs, ms for latency, with
    at least :data:`SIGNIFICANT_DIGITS` significant digits in a scaled unit (whole bytes and BOPs
    below 1 KiB and 1 kBOPs). With ``versus``, a value this one is printed beside (a budget and
    the smallest achievable), digits are added until two values that differ read differently."""
    if versus is None or versus == value:
        return _format(quantity, value, 0)
    for extra in range(16):
        text = _format(quantity, value, extra)
        if text != _format(quantity, versus, extra):
            return text
    return text


def _format(quantity: str, value: float, extra: int) -> str:
    unit, scale, decimals = _unit(quantity, value)
    x = value / scale
    digits = decimals + extra
    if scale != 1 or quantity == LATENCY:
        magnitude = math.floor(math.log10(abs(x))) if x else 0
        digits = max(digits, SIGNIFICANT_DIGITS - 1 - magnitude + extra)
    text = f"{x:.{digits}f}"
    if digits > decimals:  # digits beyond the unit's usual ones only where they carry something
        text = text.rstrip("0") if "." in text else text
        whole, _, frac = text.partition(".")
        frac = frac.ljust(decimals, "0")
        text = f"{whole}.{frac}" if frac else whole
    return f"{text} {unit}"


def _unit(quantity: str, value: float) -> tuple[str, float, int]:
    """(unit, its size in the quantity's natural unit, the decimals it is usually printed with)."""
    if quantity in (SIZE, ACT_MEMORY):
        for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= factor:
                return unit, factor, 2
        return "B", 1, 0
    if quantity == LATENCY:
        return "ms", 1e-3, 3
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{prefix}BOPs", factor, 2
    return "BOPs", 1, 0
