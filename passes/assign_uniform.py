"""uniform: give every quantizable layer the same precision."""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import BITS, FLOAT_BITS, BitAssignment
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext


@register_pass
@dataclass(frozen=True)
class UniformBits(Pass):
    """Assigns W``w``A``a`` to every layer (an activation x activation matmul gets A``a`` on
    both operands; an embedding table, weight-only, gets W``w``).

    Reads: nothing. Writes: ``lcpaq.bits`` on every layer. Guarantees: the target can run
    every assignment (the target is asked per op kind; a precision it lacks is refused)."""

    name = "uniform"
    writes = (BITS,)
    w: int = 8
    a: int = 8

    def __post_init__(self) -> None:
        BitAssignment(self.w, self.a)  # validates both widths

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        for layer in find_layers(gm):
            bits = BitAssignment(self.a if layer.kind == "matmul" else self.w, FLOAT_BITS if layer.kind == "embedding" else self.a)
            ctx.target.check(layer.kind, bits)
            BITS.set(layer.node, bits)
        return PassResult(gm, False)
