"""``lcpaq profile`` as a function: load, capture and cost a model, then time its layers on the
target's device (:mod:`lcpaq.backends.common.profile`)."""
from __future__ import annotations

import torch.fx as fx

import lcpaq.passes  # noqa: F401  (registers the passes)
from lcpaq.backends.common.backend import backend_for
from lcpaq.backends.common.profile import fit_model_time, profile_model
from lcpaq.hw_targets.host import default_target_name
from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.hw_targets.target import Target, load_target
from lcpaq.ir.capture import capture
from lcpaq.passes.context import PassContext
from lcpaq.passes.pipeline import Pipeline, prepare_phase
from lcpaq.tools.models.zoo import ModelBundle, load_model


def profile(
    model: str | ModelBundle, target: str | Target | None = None, trials: int = 0, repeats: int = 10, progress: bool = False,
) -> LatencyTable:
    """A latency table of ``model`` for ``target`` (default: this host's), ``fixed_seconds``
    and ``layer_scale`` fitted. The target and its device are checked before the model is loaded."""
    tgt = target if isinstance(target, Target) else load_target(target or default_target_name())
    backend_for(tgt).check_available(tgt)
    bundle = model if isinstance(model, ModelBundle) else load_model(model, progress)
    gm, ctx = prepared_graph(bundle, tgt)
    table = profile_model(gm, tgt, model_name=bundle.name, trials=trials, repeats=repeats, progress=progress)
    return fit_model_time(table, gm, ctx, trials)


def prepared_graph(bundle: ModelBundle, target: Target) -> tuple[fx.GraphModule, PassContext]:
    """``bundle``'s model captured and costed for ``target`` (the graph a latency table is
    measured on), with its pass context."""
    gm = capture(bundle.model, bundle.example_inputs, bundle.name)
    ctx = PassContext(target, bundle.example_inputs, bundle.calib_batches)
    return Pipeline(prepare_phase(target))(gm, ctx).graph_module, ctx
