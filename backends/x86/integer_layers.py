"""Which quantizable layers the x86 backend computes in integer arithmetic (the others run in
float): what the backend can tell the assignment before a layer is given an integer precision.

It states what :mod:`lcpaq.backends.common.integerize` and the x86 lowerings do: every 2-d conv
with one stride, one padding and no dilation (dense, depthwise or grouped, any kernel size),
every linear (any rank, any layout, and ``x @ W`` with a constant 2-d ``W``), and every
activation x activation matmul of operands of rank 2 or more; embeddings (weight-only) and
other convs run in float.
"""
from __future__ import annotations

import torch.fx as fx

from lcpaq.backends.common.op_args import integer_conv_reason
from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import CONV_OPS, LINEAR_OPS, QuantLayer


def _rank(node: object) -> int | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.dim() if hasattr(val, "dim") else None


def has_integer_kernel(gm: fx.GraphModule, layer: QuantLayer) -> bool:
    """True when the x86 backend runs ``layer`` (of ``gm``, float or fake-quantized) on an
    integer kernel at 8 bits; False when it would run in float whatever its precision."""
    node = layer.node
    if layer.kind == "conv":
        return node.target in CONV_OPS and integer_conv_reason(node) is None
    if layer.kind == "linear":
        if node.target in LINEAR_OPS:
            return True
        return layer.weight is not None and len(node.args) == 2 and get_attr(gm, str(layer.weight.target)).dim() == 2
    if layer.kind == "matmul":
        ranks = [_rank(a) for a in layer.act_inputs]
        return len(node.args) == 2 and all(r is None or r >= 2 for r in ranks)
    return False


__all__ = ["has_integer_kernel"]
