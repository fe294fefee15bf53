"""Budget specs: ``size=0.3x`` (of fp32), ``bops=0.5int8`` (of uniform INT8), ``size=2MB``,
``latency=2.5ms``, ``act_memory=64KiB``. Limits resolve to the quantity's natural unit:
bytes, bit operations, seconds."""
from __future__ import annotations

import re

from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import Budget

QUANTITIES = ("size", "bops", "latency", "act_memory")
_UNITS = {
    "size": {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30},
    "act_memory": {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30},
    "bops": {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12},
    "latency": {"s": 1, "ms": 1e-3, "us": 1e-6},
}


def parse_budget(text: str, fp32: dict[str, float], int8: dict[str, float]) -> Budget:
    """Parse ``key=value`` against the fp32 and uniform-INT8 reference totals."""
    key, eq, value = text.partition("=")
    key, value = key.strip().replace("-", "_"), value.strip().lower()
    if not eq or key not in QUANTITIES:
        raise ConfigError(f"bad budget {text!r}: write KEY=VALUE with KEY one of {', '.join(QUANTITIES)}")
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*([a-z0-9]*)", value)
    if not match:
        raise ConfigError(f"bad budget {text!r}: the value must be a number with an optional unit")
    number, unit = float(match[1]), match[2]
    if unit in ("x", "int8"):
        refs = fp32 if unit == "x" else int8
        if key not in refs:
            raise ConfigError(f"bad budget {text!r}: no {'fp32' if unit == 'x' else 'INT8'} reference for {key}")
        return Budget(key, number * refs[key], text)
    units = _UNITS[key]
    if unit not in units:
        raise ConfigError(f"bad budget {text!r}: unit {unit!r} unknown for {key}; use {', '.join(u or 'none' for u in units)}, x or int8")
    return Budget(key, number * units[unit], text)


def format_quantity(quantity: str, value: float) -> str:
    """A quantity in readable units: MiB/KiB for bytes, G/M for BOPs, ms for latency."""
    if quantity in ("size", "act_memory"):
        for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if value >= factor:
                return f"{value / factor:.2f} {unit}"
        return f"{value:.0f} B"
    if quantity == "latency":
        return f"{value * 1e3:.3f} ms"
    for factor, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {unit}BOPs"
    return f"{value:.0f} BOPs"
