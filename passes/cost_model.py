"""The cost model: what an assignment of precisions costs, from the ``lcpaq.cost`` annotations.

One place for size, BOPs, peak activation memory (and latency, from a measured latency table)
of a layer at a precision and of a whole assignment, for the fp32 and uniform-INT8 references
that relative budgets (``0.3x``, ``0.5int8``) scale, and for the part of the model no choice
changes. The ILP, the Pareto sweep and the reports all price assignments here.

Latency tables are loaded through :func:`load_table`, which keeps each file's parsed table
(keyed by path, modification time and size), so a run reads a table once however many passes
and tools use it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch.fx as fx

from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.hw_targets.target import Target
from lcpaq.ir.layers import QuantLayer, find_layers
from lcpaq.ir.meta import COST, FLOAT_BITS, MODEL_COST, QSPEC, BitAssignment, LayerCost
from lcpaq.passes.budgets import ACT_MEMORY, BOPS, LATENCY, PEAK, SIZE

FP32 = BitAssignment(FLOAT_BITS, FLOAT_BITS)
#: The quantities priced from the ``lcpaq.cost`` annotations alone (latency needs a table).
LAYER_QUANTITIES: tuple[str, ...] = (SIZE, BOPS, ACT_MEMORY)


def layer_quantities(layer: QuantLayer, cost: LayerCost, bits: BitAssignment) -> dict[str, float]:
    """Size (stored weight and bias bytes), BOPs and activation-input bytes of one layer at
    ``bits``; a weightless layer stores nothing."""
    return {
        SIZE: cost.weight_bytes(bits.w_bits) if layer.weight is not None else 0.0,
        BOPS: float(cost.bops(bits.w_bits, bits.a_bits)),
        ACT_MEMORY: cost.act_bytes(bits.a_bits),
    }


def fixed_costs(gm: fx.GraphModule, table: LatencyTable | None = None) -> dict[str, float]:
    """The part of each quantity no assignment changes: the parameters outside quantizable
    layers (kept in fp32) and, with a table, the time of everything that is not a layer."""
    totals = MODEL_COST.get(gm)
    fixed = {SIZE: (totals.params - totals.quantizable_params) * 4.0}
    if table is not None:
        fixed[LATENCY] = table.fixed_seconds
    return fixed


def aggregate(quantity: str, per_layer: list[float], fixed: float = 0.0) -> float:
    """The model's total from its layers' values: the largest for a peak quantity, else the sum
    plus the fixed part."""
    if quantity in PEAK:
        return float(max(per_layer, default=0.0))
    return float(sum(per_layer) + fixed)


def totals(gm: fx.GraphModule, assignment: Mapping[str, BitAssignment], table: LatencyTable | None = None) -> dict[str, float]:
    """Size, BOPs and peak activation memory of the model under ``assignment`` (layer name ->
    bits; a layer left out is float), and its latency when a ``table`` is given."""
    layers = find_layers(gm)
    values = [layer_quantities(layer, COST.get(layer.node), assignment.get(layer.name, FP32)) for layer in layers]
    fixed = fixed_costs(gm, table)
    out = {q: aggregate(q, [v[q] for v in values], fixed.get(q, 0.0)) for q in LAYER_QUANTITIES}
    if table is not None:
        out[LATENCY] = table.total({layer.name: assignment.get(layer.name, FP32) for layer in layers})
    return out


def assignment_of(gm: fx.GraphModule) -> dict[str, BitAssignment]:
    """Each layer's bits from its ``lcpaq.qspec`` (layers without one are float)."""
    return {layer.name: QSPEC.get(layer.node).bits for layer in find_layers(gm) if QSPEC.has(layer.node)}


def int8_bits(layer: QuantLayer) -> BitAssignment:
    """Uniform INT8 for one layer (a weight-only embedding keeps float indices)."""
    return BitAssignment(8, FLOAT_BITS) if layer.kind == "embedding" else BitAssignment(8, 8)


def reference_totals(gm: fx.GraphModule, table: LatencyTable | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Totals of the fp32 model and of uniform INT8 (W8A8), the references of ``0.3x`` and
    ``0.5int8`` budgets; latency ones from ``table`` when given. The fp32 size is the model's
    stored size (``lcpaq.model_cost``)."""
    layers = find_layers(gm)
    fp32 = totals(gm, {layer.name: FP32 for layer in layers}, table)
    fp32[SIZE] = float(MODEL_COST.get(gm).fp32_bytes)
    int8 = totals(gm, {layer.name: int8_bits(layer) for layer in layers}, table)
    return fp32, int8


_TABLES: dict[tuple[str, int, int, str], LatencyTable] = {}


def load_table(path: str | Path | None, target: Target) -> LatencyTable | None:
    """The latency table at ``path`` measured for ``target`` (None without a path), parsed once
    per file version (path, modification time, size); a corrupt or foreign table is a
    CorruptFileError naming the path."""
    if not path:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return LatencyTable.load(path, target)  # reports the unreadable file
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size, target.name)
    if key not in _TABLES:
        if len(_TABLES) >= 16:
            _TABLES.clear()
        _TABLES[key] = LatencyTable.load(path, target)
    return _TABLES[key]
