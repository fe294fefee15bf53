"""uniform: give every quantizable layer the same precision."""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import FLOAT_BITS, FLOAT_LAYERS, QSPEC, QUANT_SCHEME, BitAssignment, FloatLayers
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.cost_model import offered_bits
from lcpaq.passes.quant_scheme import assign


@register_pass
@dataclass(frozen=True)
class UniformBits(Pass):
    """Assigns W``w``A``a`` to every layer (an activation x activation matmul gets A``a`` on
    both operands; an embedding table, weight-only, gets W``w``).

    Reads: ``lcpaq.quant_scheme``. Writes: ``lcpaq.qspec`` on every layer, its specs built
    from the scheme, and ``lcpaq.float_layers`` on the graph. Guarantees: the target can run
    every assignment (the target is asked per op kind; a precision it lacks is refused). Where
    a layer carries ``lcpaq.executable`` and its backend cannot execute W``w``A``a`` for it,
    the layer is left in float, and so are the other readers of its weight (one tensor, one
    width); ``lcpaq.float_layers`` lists them with why. ``keep_float``: layers left in float
    on purpose (a common deployment recipe keeps the first and last layers float); ``layers``:
    ``(name, w, a)`` of layers given a precision of their own (checked like the rest); a name
    that is no layer of the graph is refused."""

    name = "uniform"
    reads = (QUANT_SCHEME,)
    writes = (QSPEC, FLOAT_LAYERS)
    w: int = 8
    a: int = 8
    keep_float: tuple[str, ...] = ()
    layers: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self) -> None:
        BitAssignment(self.w, self.a)  # validates both widths

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = find_layers(gm)
        own = {name: (w, a) for name, w, a in self.layers}
        unknown = sorted((set(self.keep_float) | set(own)) - {layer.name for layer in layers})
        if unknown:
            raise ConfigError(f"pass 'uniform': keep_float or layers names no layer of this model: {', '.join(unknown)}")
        wanted = {}
        for layer in layers:
            if layer.name in self.keep_float:
                wanted[layer.name] = [BitAssignment(FLOAT_BITS, FLOAT_BITS)]
                continue
            w, a = own.get(layer.name, (self.w, self.a))
            bits = BitAssignment(a if layer.kind == "matmul" else w, FLOAT_BITS if layer.kind == "embedding" else a)
            ctx.target.check(layer.kind, bits)
            wanted[layer.name] = [bits]
        offered, why = offered_bits(gm, layers, wanted)
        assign(gm, {name: bits[0] for name, bits in offered.items()})
        FLOAT_LAYERS.set(gm, FloatLayers(tuple(why.items())))
        return PassResult(gm, False)
