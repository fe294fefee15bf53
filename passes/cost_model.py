"""The cost model: what an assignment of precisions costs, from the ``lcpaq.cost`` annotations.

One place for size, BOPs, peak activation memory (and latency, from a measured latency table)
of a layer at a precision and of a whole assignment, for the fp32 and uniform-INT8 references
that relative budgets (``0.3x``, ``0.5int8``) scale, and for the part of the model no choice
changes. The ILP, the Pareto sweep and the reports all price assignments here.

Which precisions a layer is offered at all is decided here too (:func:`offered_bits`): those
its backend executes (the optional ``lcpaq.executable`` annotation), one weight width for the
layers that read one weight tensor, float for a layer the backend runs in no integer form.
:func:`default_act_bits` is the activation width an assignment keeps when nothing asks for
another: the fastest the target runs natively.

Latency tables are loaded through :func:`load_table`, which keeps each file's parsed table
(keyed by path, modification time and size), so a run reads a table once however many passes
and tools use it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch.fx as fx

from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import QuantLayer, find_layers, weight_groups, weight_tensors
from lcpaq.ir.meta import COST, EXECUTABLE, FLOAT_BITS, MODEL_COST, QSPEC, BitAssignment, LayerCost, Sensitivity
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


def layer_sensitivity(cost: LayerCost, sens: Sensitivity, bits: BitAssignment) -> float:
    """The layer's share of the total sensitivity at ``bits``: a weight shared by several
    layers is quantized once, so only the layer that stores it counts its weight term (the
    Hessian trace of a tensor already covers every use of it)."""
    return sens.of(bits) if cost.stores_weight else sens.of(BitAssignment(FLOAT_BITS, bits.a_bits))


def fixed_costs(gm: fx.GraphModule, table: LatencyTable | None = None) -> dict[str, float]:
    """The part of each quantity no assignment changes: the parameters no quantizable layer
    stores (kept in fp32, listed in ``lcpaq.model_cost``) and, with a table, the time of
    everything that is not a layer."""
    fixed = {SIZE: float(MODEL_COST.get(gm).float_bytes)}
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


def offered_bits(
    gm: fx.GraphModule, layers: list[QuantLayer], wanted: Mapping[str, Sequence[BitAssignment]]
) -> tuple[dict[str, list[BitAssignment]], dict[str, str]]:
    """The precisions each layer can be given, of those ``wanted`` for it (layer name ->
    candidates): the ones its ``lcpaq.executable`` annotation lists (all of them where there is
    none), and, for layers that read one weight tensor, only the weight widths all of them
    keep. A layer left with nothing is offered float alone; the second result says why, per
    such layer."""
    offered: dict[str, list[BitAssignment]] = {}
    why: dict[str, str] = {}
    for layer in layers:
        ex = EXECUTABLE.get(layer.node)
        cands = list(wanted[layer.name]) if ex is None else [c for c in wanted[layer.name] if c in ex.bits]
        if not cands:
            asked = ", ".join(str(c) for c in wanted[layer.name])
            why[layer.name] = ex.reason if ex is not None and ex.reason else f"the backend executes none of {asked} for it"
            cands = [FP32]
        offered[layer.name] = cands
    tensors = weight_tensors(gm, layers)
    for group in weight_groups(gm, layers):
        common = set.intersection(*({c.w_bits for c in offered[n]} for n in group))
        floats = [n for n in group if n in why]
        for name in group:
            kept = [c for c in offered[name] if c.w_bits in common]
            if not kept:
                kept = [FP32]
                why[name] = (
                    f"it shares weight {tensors[name]} with {', '.join(floats)}, which runs only in float" if floats
                    else f"the layers reading weight {tensors[name]} ({', '.join(group)}) have no weight width in common"
                )
            offered[name] = kept
    return offered, {layer.name: why[layer.name] for layer in layers if layer.name in why}


def default_act_bits(target: Target, layers: list[QuantLayer] | None = None, table: LatencyTable | None = None) -> int:
    """The activation width an assignment keeps when no budget or option asks for another: the
    fastest one the target runs natively. With a latency ``table``, the width at which the
    model is fastest (each layer at its fastest measured weight width with that activation
    width); otherwise, and on ties, 8 bits where the target offers it (the uniform-INT8
    reference's width: target files say which widths exist, not how fast each runs), else the
    narrowest the target offers."""
    acts = target.act_bits
    if not acts:
        raise ConfigError(f"target {target.name!r} offers no activation width")
    base = 8 if 8 in acts else min(acts)
    if table is None or not layers:
        return base
    seconds = dict.fromkeys(acts, 0.0)
    for layer in layers:
        if layer.kind == "embedding":  # a weight-only lookup: no activation width to choose
            continue
        best = {}
        for a in acts:
            times = [t for c in target.candidates(layer.kind) if c.a_bits == a and (t := _seconds(table, layer.name, c)) is not None]
            if times:
                best[a] = min(times)
        if best:  # a layer measured at no width (run in float whatever is chosen) does not compare
            seconds = {a: total + best[a] for a, total in seconds.items() if a in best}
    return min(seconds, key=lambda a: (seconds[a], a != base, a)) if seconds else base


def _seconds(table: LatencyTable, layer: str, bits: BitAssignment) -> float | None:
    try:
        return table.seconds(layer, bits)
    except ConfigError:
        return None


def reference_totals(gm: fx.GraphModule, table: LatencyTable | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Totals of the fp32 model and of uniform INT8 (W8A8, each layer the backend cannot run
    at it in float, as ``uniform`` builds it), the references of ``0.3x`` and ``0.5int8``
    budgets; latency ones from ``table`` when given. The fp32 size is the model's stored size
    (``lcpaq.model_cost``)."""
    layers = find_layers(gm)
    fp32 = totals(gm, {layer.name: FP32 for layer in layers}, table)
    fp32[SIZE] = float(MODEL_COST.get(gm).fp32_bytes)
    offered, _ = offered_bits(gm, layers, {layer.name: [int8_bits(layer)] for layer in layers})
    int8 = totals(gm, {name: bits[0] for name, bits in offered.items()}, table)
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
