"""executable: what the target's backend really executes for each layer, for the assignment.

Passes never import backends, so the question is asked here: the ``executable`` pass asks the
target's :class:`~lcpaq.backends.common.backend.Backend` (:meth:`layer_precisions`) for every
quantizable layer and writes the answer as ``lcpaq.executable``. ``uniform``, ``ilp`` and
``pareto`` read it where it is present: a precision the layer cannot execute is not offered,
and a layer with no integer kernel (an embedding, a conv geometry no kernel takes) is left in,
and costed as, float. Without it (``sim``, a target whose family is not implemented) they offer
what the target lists.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from lcpaq.backends.common.backend import backend_for
from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import EXECUTABLE
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext


@register_pass
@dataclass(frozen=True)
class LayerPrecisions(Pass):
    """Asks the target's backend which precisions it executes for each layer.

    Reads: nothing. Writes: ``lcpaq.executable`` on every layer (float always among them; float
    alone with the reason). A target without an implemented backend is a one-line error."""

    name = "executable"
    writes = (EXECUTABLE,)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        backend = backend_for(ctx.target)
        for layer in find_layers(gm):
            EXECUTABLE.set(layer.node, backend.layer_precisions(gm, layer, ctx.target))
        return PassResult(gm, False)


def capability_phase(target: Target) -> list[Pass]:
    """``[executable]`` when ``target``'s backend family is implemented, else nothing."""
    try:
        backend_for(target)
    except ConfigError:
        return []
    return [LayerPrecisions()]
