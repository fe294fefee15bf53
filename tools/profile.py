"""``lcpaq profile`` as a function: load, capture and cost a model, then time its layers."""
from __future__ import annotations

import torch.fx as fx

import lcpaq.passes  # noqa: F401  (registers the passes)
from lcpaq.backends.latency_table import LatencyTable
from lcpaq.hw_targets.target import Target, load_target
from lcpaq.ir.capture import capture
from lcpaq.passes.context import PassContext
from lcpaq.passes.pipeline import Pipeline, prepare_phase
from lcpaq.tools.models.zoo import ModelBundle, load_model


def profile(
    model: str | ModelBundle, target: str | Target = "x86-host", trials: int = 0, repeats: int = 10, progress: bool = False,
) -> LatencyTable:
    """A latency table of ``model`` on this host for ``target`` (see :func:`lcpaq.backends.profile.profile_model`).
    The target and the host are checked before the model is loaded."""
    from lcpaq.backends.profile import check_host, profile_model

    tgt = target if isinstance(target, Target) else load_target(target)
    check_host(tgt)
    bundle = model if isinstance(model, ModelBundle) else load_model(model, progress)
    gm = capture(bundle.model, bundle.example_inputs, bundle.name)
    gm = Pipeline(prepare_phase(tgt))(gm, PassContext(tgt, bundle.example_inputs)).graph_module
    table = profile_model(gm, tgt, model_name=bundle.name, trials=trials, repeats=repeats, progress=progress)
    return with_fixed_seconds(table, gm, bundle, tgt, trials)


def with_fixed_seconds(table: LatencyTable, prepared: fx.GraphModule, bundle: ModelBundle, target: Target, trials: int) -> LatencyTable:
    """``table`` with ``fixed_seconds`` measured: the whole model built at uniform W8A8 (the
    same kernels, ``trials``) minus the sum of its layers' w8a8 entries, i.e. the time of
    everything that is not a quantizable layer (quantize, requantize, residual adds, pooling,
    layout), at least 0. ``prepared`` (the costed graph the table was measured on) is left as it
    is. A model the backend cannot build keeps 0.0, with the reason in the notes."""
    import copy
    import dataclasses

    from lcpaq.backends.build import build_model
    from lcpaq.backends.measure import measure_latency
    from lcpaq.ir.errors import LcpaqError
    from lcpaq.ir.meta import BitAssignment
    from lcpaq.passes.pipeline import calibration_phase, uniform_phase

    ctx = PassContext(target, bundle.example_inputs, bundle.calib_batches)
    passes = calibration_phase(target) + uniform_phase(target, 8, 8)
    gm = Pipeline(passes)(copy.deepcopy(prepared), ctx).graph_module
    x = [t[:1] for t in bundle.example_inputs]
    try:
        built = build_model(gm, x, target, trials=trials)
    except LcpaqError as exc:
        return dataclasses.replace(table, notes=(*table.notes, f"fixed_seconds not measured: the W8A8 model does not build ({exc})"))
    whole = measure_latency(built, x, repeats=20).median
    layers = table.total({name: BitAssignment(8, 8) for name in table.entries}) - table.fixed_seconds
    fixed = max(0.0, whole - layers)
    note = (f"fixed_seconds = whole W8A8 build {whole * 1e3:.3f} ms - sum of its layers' w8a8 entries {layers * 1e3:.3f} ms "
            "(quantize, requantize, residual adds, pooling, layout)")
    notes = tuple(n for n in table.notes if not n.startswith("fixed_seconds")) + (note,)
    return dataclasses.replace(table, fixed_seconds=float(f"{fixed:.4g}"), notes=notes)
