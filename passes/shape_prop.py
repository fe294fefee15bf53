"""shape-prop: run the graph on the example inputs and record every node's output shape."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from lcpaq.ir.meta import SHAPE, TensorShape
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext


@register_pass
@dataclass(frozen=True)
class ShapeProp(Pass):
    """Interprets the graph on ``ctx.example_inputs``.

    Reads: nothing. Writes: ``lcpaq.shape`` on every node that produces a tensor.
    Guarantees: the graph is unchanged; shapes are concrete (those of the example inputs)."""

    name = "shape-prop"
    writes = (SHAPE,)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        with torch.no_grad():
            _Recorder(gm).run(*ctx.example_inputs)
        return PassResult(gm, False)


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            SHAPE.set(n, TensorShape(tuple(int(d) for d in out.shape), str(out.dtype).removeprefix("torch.")))
        return out
