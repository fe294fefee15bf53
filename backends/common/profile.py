"""Per-layer latency tables: every quantizable layer of a costed graph timed on the target's
device, at every precision the target computes for it, by the backend's layer timer; then the
time of everything else (``fixed_seconds``) measured on a whole-model build.

Precisions a layer has no kernel for (mixed widths such as ``w8a32``, or a layer the backend
runs only in float) reuse the layer's fp32 time, said in the table's ``notes``; weight widths
the target keeps in storage only get no entry (the table charges them the next wider entry).
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import os
from typing import Any

import torch.fx as fx
import tvm
from tqdm.auto import tqdm

from lcpaq.backends.common.backend import LayerTimer, backend_for
from lcpaq.backends.common.build import build_model
from lcpaq.backends.common.measure import measure_latency
from lcpaq.hw_targets.latency_table import LatencyTable, precision_key
from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError, LcpaqError, PassContractError
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import COST
from lcpaq.passes.context import PassContext
from lcpaq.passes.cost_model import assignment_of
from lcpaq.passes.pipeline import Pipeline, calibration_phase, uniform_phase


def precision_keys(target: Target, kind: str) -> list[str]:
    """The keys a layer of ``kind`` gets: fp32 and every candidate whose weights are computed at
    their own width (storage-only widths are charged the next wider entry by the table)."""
    keys = {precision_key(b) for b in target.candidates(kind) if b.w_bits not in target.storage_weight_bits}
    return ["fp32", *sorted(keys - {"fp32"})]


def profile_model(
    gm: fx.GraphModule, target: Target, model_name: str = "", trials: int = 0, repeats: int = 10, number: int = 5,
    progress: bool = True, seed: int = 0, allow_emulated: bool = False, timer: LayerTimer | None = None,
) -> LatencyTable:
    """Time every quantizable layer of a costed graph (``lcpaq.shape`` and ``lcpaq.cost``
    annotations, from ``prepare_phase``) on the target's device, at batch 1.

    Guarantees: every layer of ``find_layers(gm)`` has an entry for ``fp32`` and for every
    precision the target computes for its kind (:func:`precision_keys`), each a positive number
    of seconds (median of ``repeats`` runs of ``number`` calls); how each was obtained is in the
    table's ``notes``. ``fixed_seconds`` is 0.0 (see :func:`fit_model_time`). Raises
    ConfigError if the target has no backend or its device cannot be reached, or is emulated
    (an emulator's timings predict nothing; ``allow_emulated`` times it anyway, for checking the
    mechanics, and the table says so), PassContractError if the graph is not annotated.
    ``timer``: timings taken elsewhere (a :class:`RecordedTimer`) instead of the device's."""
    backend = backend_for(target)
    backend.check_trials(trials)
    if timer is None:
        backend.check_available(target)
    layers = find_layers(gm)
    missing = [layer.name for layer in layers if not COST.has(layer.node)]
    if missing:
        raise PassContractError(f"profile needs lcpaq.cost on every layer (missing on {', '.join(missing[:3])}); run the prepare phase first")
    if repeats < 1 or number < 1:
        raise ConfigError(f"repeats and number must be >= 1, got {repeats} and {number}")
    timer = timer or backend.layer_timer(target, trials, repeats, number, seed)
    if timer.emulation and not allow_emulated:
        raise ConfigError(
            f"the board of target {target.name!r} is emulated ({timer.emulation}): its timings say nothing about a board's "
            "speed, so lcpaq writes none into a latency table; profile on a real board (--rpc HOST:PORT or --tracker/--key)"
        )
    entries: dict[str, dict[str, float]] = {}
    reused: set[str] = set()
    bar = tqdm(layers, desc="profile", unit="layer", disable=not progress)
    for layer in bar:
        bar.set_postfix_str(layer.name)
        measured = timer.measure(gm, layer)
        row = {}
        for key in precision_keys(target, layer.kind):
            if key not in measured and len(measured) > 1:
                reused.add(key)
            row[key] = float(f"{measured.get(key, measured['fp32']):.4g}")  # 4 digits: timing noise is larger
        entries[layer.name] = row
    emulated = [f"EMULATED ({timer.emulation}): these timings do not predict a real board"] if timer.emulation else []
    notes = [*emulated, *timer.notes(), "fixed_seconds 0.0 and layer_scale 1.0 here; "
             "`lcpaq profile` fits them on whole-model builds"]
    if hasattr(os, "getloadavg"):
        notes.append(f"load average (1 min) when profiling ended: {os.getloadavg()[0]:.2f} on {os.cpu_count()} logical CPUs")
    if reused:
        notes.append(f"no kernel for {', '.join(sorted(reused))}: those entries reuse the layer's fp32 time")
    return LatencyTable(
        target=target.name, device=backend.device_name(target), tvm_version=str(tvm.__version__),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), trials=max(trials, 0),
        model=model_name, entries=entries, fixed_seconds=0.0, notes=tuple(notes),
    )


class RecordedTimer(LayerTimer):
    """Layer timings measured elsewhere (a GPU machine without TVM: ``tools/gpu_bench.py``),
    ``{layer: {precision key: seconds}}``, with how they were measured."""

    def __init__(self, seconds: dict[str, dict[str, float]], notes: list[str], source: str) -> None:
        self.seconds, self._notes, self.source = seconds, notes, source

    def measure(self, gm: fx.GraphModule, layer: Any) -> dict[str, float]:
        if layer.name not in self.seconds or "fp32" not in self.seconds[layer.name]:
            raise ConfigError(f"{self.source} has no fp32 timing of layer {layer.name!r}: it was measured on another model")
        return self.seconds[layer.name]

    def notes(self) -> list[str]:
        return self._notes


def _uniform(prepared: fx.GraphModule, ctx: PassContext, bits: int) -> fx.GraphModule:
    """A copy of ``prepared`` calibrated and at uniform ``bits`` (32: float)."""
    return Pipeline(calibration_phase(ctx.target) + uniform_phase(ctx.target, bits, bits))(copy.deepcopy(prepared), ctx).graph_module


def _whole_seconds(gm: fx.GraphModule, ctx: PassContext, trials: int) -> float | str:
    """The median seconds of ``gm`` built whole at batch 1, or why it did not build."""
    x = [t[:1] for t in ctx.example_inputs]
    try:
        built = build_model(gm, x, ctx.target, trials=trials)
    except LcpaqError as exc:
        return str(exc)
    return measure_latency(built, x, repeats=20).median


def fit_model_time(table: LatencyTable, prepared: fx.GraphModule, ctx: PassContext, trials: int,
                   whole: float | None = None) -> LatencyTable:
    """``table`` with ``fixed_seconds`` and ``layer_scale`` fitted so that ``table.total``
    reproduces two whole-model builds (batch 1, the same kernels, ``trials``): uniform W8A8 and
    uniform fp32. Two points fit the two unknowns exactly, so both are calibration points; a
    mixed configuration is a prediction. Nothing is clamped: a model that runs its layers faster
    than alone gets ``layer_scale`` < 1 (and ``fixed_seconds`` may come out negative).

    ``whole``: the W8A8 model's seconds measured elsewhere (nothing is built here then): one
    point, so ``layer_scale`` stays 1 and ``fixed_seconds`` is the difference. A model the
    backend cannot build keeps the table's values, with the reason in the notes. ``prepared``
    (the costed graph the table was measured on) is left as it is."""
    raw = dataclasses.replace(table, fixed_seconds=0.0, layer_scale=1.0)
    gm8 = _uniform(prepared, ctx, 8)
    w8 = _whole_seconds(gm8, ctx, trials) if whole is None else whole
    kept = tuple(n for n in table.notes if not n.startswith(("fixed_seconds", "layer_scale", "whole model")))
    if isinstance(w8, str):
        return dataclasses.replace(table, notes=(*kept, f"fixed_seconds not measured: the W8A8 model does not build ({w8})"))
    l8 = raw.total(assignment_of(gm8))
    fixed, scale = w8 - l8, 1.0
    note = f"whole model: W8A8 build {w8 * 1e3:.3f} ms against its layers' sum {l8 * 1e3:.3f} ms"
    if whole is None:
        gm32 = _uniform(prepared, ctx, 32)
        w32 = _whole_seconds(gm32, ctx, trials)
        l32 = raw.total(assignment_of(gm32))
        if isinstance(w32, str) or abs(l32 - l8) < 1e-3 * l32:
            note += "; layer_scale 1: no fp32 point to fit it on"
        else:
            scale = (w32 - w8) / (l32 - l8)
            if scale <= 0:  # the fp32 build ran no slower than the int8 one: the layers' ratio says nothing
                fixed, scale = w8 - l8, 1.0
                note += f"; fp32 build {w32 * 1e3:.3f} ms not slower, layer_scale 1"
            else:
                fixed = w8 - scale * l8
                note += f"; fp32 build {w32 * 1e3:.3f} ms against {l32 * 1e3:.3f} ms"
    note += f" -> fixed_seconds {fixed * 1e3:.3f} ms, layer_scale {scale:.3f} (both configurations reproduced by construction)"
    return dataclasses.replace(table, fixed_seconds=float(f"{fixed:.4g}"), layer_scale=float(f"{scale:.4g}"), notes=(*kept, note))
