"""Measured per-layer latencies of one model on one target, versioned and stored as JSON.

A table holds, for every quantizable layer, seconds per *precision key*: ``"fp32"`` for a
float layer (32/32) and ``"wNaM"`` for N-bit weights with M-bit activations (``"w8a32"`` for a
weight-only embedding). Only widths the target computes at get entries; weights the target
keeps in storage only (``storage_weight_bits``) are unpacked before compute, so
:meth:`LatencyTable.seconds` charges them the entry of the next wider measured weight width
(int8 on x86-host). A whole model's time is predicted as ``fixed_seconds + layer_scale * sum of
its layers' entries``: ``layer_scale`` is how a layer's standalone time carries into the model
(caches warm from the kernel before, fewer page faults: below 1; interference: above 1) and
``fixed_seconds`` the time of everything that is not a quantizable layer. Both are fitted on
whole-model builds (``lcpaq.backends.common.profile.fit_model_time``); neither is clamped,
so ``fixed_seconds`` may be negative when the model runs its layers faster than alone.

File format (``schema``: :data:`SCHEMA_VERSION`)::

    {"schema": 1, "target": "x86-host", "device": "...", "tvm_version": "0.27.0", "date": "...",
     "trials": 0, "model": "resnet-digits", "fixed_seconds": 0.0, "layer_scale": 1.0, "notes": ["..."],
     "layers": {"conv1": {"fp32": 3.1e-05, "w8a8": 1.2e-05}}}
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.fileio import atomic_write_json
from lcpaq.ir.meta import FLOAT_BITS, BitAssignment

SCHEMA_VERSION = 1
_KEY = re.compile(r"^w(\d+)a(\d+)$")


def precision_key(bits: BitAssignment) -> str:
    """``"fp32"`` for 32/32, else ``"w{w}a{a}"``."""
    if bits.w_bits == FLOAT_BITS and bits.a_bits == FLOAT_BITS:
        return "fp32"
    return f"w{bits.w_bits}a{bits.a_bits}"


def parse_key(key: str) -> BitAssignment:
    """Inverse of :func:`precision_key`; ValueError on anything else."""
    if key == "fp32":
        return BitAssignment(FLOAT_BITS, FLOAT_BITS)
    m = _KEY.match(key)
    if not m:
        raise ValueError(f"bad precision key {key!r}: write it as fp32 or wNaM")
    return BitAssignment(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class LatencyTable:
    """Seconds per layer and precision, with where and how they were measured.

    Guarantees (checked on construction): every entry is a finite, positive number of seconds,
    every key parses as a precision, ``fixed_seconds`` is finite and ``layer_scale`` finite and
    positive."""

    target: str
    device: str
    tvm_version: str
    date: str
    trials: int
    model: str
    entries: dict[str, dict[str, float]]
    fixed_seconds: float = 0.0
    layer_scale: float = 1.0
    notes: tuple[str, ...] = ()
    schema: int = field(default=SCHEMA_VERSION)

    def __post_init__(self) -> None:
        if not math.isfinite(self.fixed_seconds):
            raise ValueError(f"fixed_seconds must be finite, got {self.fixed_seconds}")
        if not (math.isfinite(self.layer_scale) and self.layer_scale > 0):
            raise ValueError(f"layer_scale must be finite and > 0, got {self.layer_scale}")
        for layer, row in self.entries.items():
            for key, sec in row.items():
                parse_key(key)
                if not (isinstance(sec, (int, float)) and math.isfinite(sec) and sec > 0):
                    raise ValueError(f"latency of {layer} at {key} must be a positive number of seconds, got {sec!r}")

    def seconds(self, layer: str, bits: BitAssignment) -> float:
        """Seconds of ``layer`` at ``bits`` inside the whole model: its measured entry times
        ``layer_scale``. Storage-only weight widths (narrower than any measured one at the same
        activation width) cost the next wider measured entry. Raises ConfigError if the layer or
        a usable entry is missing."""
        return self.layer_scale * self.measured(layer, bits)

    def measured(self, layer: str, bits: BitAssignment) -> float:
        """The standalone measurement :meth:`seconds` scales (same lookup and errors)."""
        row = self.entries.get(layer)
        if row is None:
            raise ConfigError(f"latency table for {self.model} ({self.target}) has no layer {layer!r}; re-run `lcpaq profile`")
        key = precision_key(bits)
        if key in row:
            return row[key]
        if bits.w_bits != FLOAT_BITS:
            wider = sorted(
                b.w_bits for b in map(parse_key, row) if b.a_bits == bits.a_bits and bits.w_bits < b.w_bits < FLOAT_BITS
            )
            if wider:
                return row[precision_key(BitAssignment(wider[0], bits.a_bits))]
        raise ConfigError(
            f"latency table for {self.model} ({self.target}) has no {key} entry for layer {layer!r} "
            f"(it has {', '.join(sorted(row))})"
        )

    def total(self, assignment: dict[str, BitAssignment]) -> float:
        """The whole model's predicted seconds: ``fixed_seconds`` plus each layer's
        :meth:`seconds` at its assigned precision."""
        return self.fixed_seconds + sum(self.seconds(name, bits) for name, bits in assignment.items())

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "target": self.target, "device": self.device, "tvm_version": self.tvm_version,
            "date": self.date, "trials": self.trials, "model": self.model, "fixed_seconds": self.fixed_seconds,
            "layer_scale": self.layer_scale, "notes": list(self.notes), "layers": self.entries,
        }

    def save(self, path: str | Path) -> None:
        """Write the table as JSON, atomically (the file appears whole or not at all)."""
        atomic_write_json(Path(path), self.to_json())

    @classmethod
    def load(cls, path: str | Path, target: Target | str) -> "LatencyTable":
        """Read a table measured on ``target``. Raises CorruptFileError naming ``path`` if it is
        unreadable, of another schema version, malformed, or measured for another target."""
        path = Path(path)
        name = target if isinstance(target, str) else target.name
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptFileError(f"latency table {path} is unreadable: {type(exc).__name__}: {exc}") from exc
        if not isinstance(data, dict) or data.get("schema") != SCHEMA_VERSION:
            found = data.get("schema") if isinstance(data, dict) else None
            raise CorruptFileError(f"latency table {path} has schema {found!r}, this lcpaq reads schema {SCHEMA_VERSION}; re-run `lcpaq profile`")
        if data.get("target") != name:
            raise CorruptFileError(f"latency table {path} was measured for target {data.get('target')!r}, not {name!r}")
        try:
            return cls(
                target=data["target"], device=str(data["device"]), tvm_version=str(data["tvm_version"]),
                date=str(data["date"]), trials=int(data["trials"]), model=str(data["model"]),
                entries={str(k): {str(p): float(s) for p, s in v.items()} for k, v in data["layers"].items()},
                fixed_seconds=float(data.get("fixed_seconds", 0.0)),
                layer_scale=float(data.get("layer_scale", 1.0)), notes=tuple(str(n) for n in data.get("notes", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptFileError(f"latency table {path} is malformed: {type(exc).__name__}: {exc}") from exc
