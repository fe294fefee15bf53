"""``lcpaq profile`` as a function: load, capture and cost a model, then time its layers."""
from __future__ import annotations

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
    return profile_model(gm, tgt, model_name=bundle.name, trials=trials, repeats=repeats, progress=progress)
