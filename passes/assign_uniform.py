"""uniform: give every quantizable layer the same precision."""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import FLOAT_BITS, QSPEC, QUANT_SCHEME, BitAssignment
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.quant_scheme import assign


@register_pass
@dataclass(frozen=True)
class UniformBits(Pass):
    """Assigns W``w``A``a`` to every layer (an activation x activation matmul gets A``a`` on
    both operands; an embedding table, weight-only, gets W``w``).

    Reads: ``lcpaq.quant_scheme``. Writes: ``lcpaq.qspec`` on every layer, its specs built
    from the scheme. Guarantees: the target can run every assignment (the target is asked per
    op kind; a precision it lacks is refused)."""

    name = "uniform"
    reads = (QUANT_SCHEME,)
    writes = (QSPEC,)
    w: int = 8
    a: int = 8

    def __post_init__(self) -> None:
        BitAssignment(self.w, self.a)  # validates both widths

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        choice = {}
        for layer in find_layers(gm):
            bits = BitAssignment(self.a if layer.kind == "matmul" else self.w, FLOAT_BITS if layer.kind == "embedding" else self.a)
            ctx.target.check(layer.kind, bits)
            choice[layer.name] = bits
        assign(gm, choice)
        return PassResult(gm, False)
