"""Which quantizable layers a CPU family computes in integer arithmetic (the others run in
float): what the backend can tell the assignment before a layer is given an integer precision.

It states what :mod:`lcpaq.backends.common.integerize` and the CPU lowerings
(:mod:`lcpaq.backends.common.lower_blocked`, :mod:`lcpaq.backends.common.lower_codes`) do: every
2-d conv with one stride, one padding and no dilation (dense and square depthwise always; other
grouped ones where the family has a grouped kernel), every linear (any rank, any layout, and
``x @ W`` with a constant 2-d ``W``), and every activation x activation matmul of operands of
rank 2 or more; embeddings (weight-only) and other convs run in float.
"""
from __future__ import annotations

import torch.fx as fx

from lcpaq.backends.common.op_args import conv_geometry, integer_conv_reason
from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import CONV_OPS, LINEAR_OPS, QuantLayer


def _rank(node: object) -> int | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val.dim() if hasattr(val, "dim") else None


def _dense_or_depthwise(gm: fx.GraphModule, layer: QuantLayer) -> bool:
    groups = (conv_geometry(layer.node) or {}).get("groups", 1)
    if groups == 1:
        return True
    o, c, kh, kw = get_attr(gm, layer.weight_name).shape
    return c == 1 and groups == o and kh == kw


def has_integer_kernel(gm: fx.GraphModule, layer: QuantLayer, grouped_convs: bool = True) -> bool:
    """True when a CPU family runs ``layer`` (of ``gm``, float or fake-quantized) on an integer
    kernel at 8 bits; False when it would run in float whatever its precision. Without
    ``grouped_convs`` (no grouped kernel), only dense and square depthwise convs are integer."""
    node = layer.node
    if layer.kind == "conv":
        if node.target not in CONV_OPS or integer_conv_reason(node) is not None:
            return False
        return grouped_convs or _dense_or_depthwise(gm, layer)
    if layer.kind == "linear":
        if node.target in LINEAR_OPS:
            return True
        return layer.weight is not None and len(node.args) == 2 and get_attr(gm, str(layer.weight.target)).dim() == 2
    if layer.kind == "matmul":
        ranks = [_rank(a) for a in layer.act_inputs]
        return len(node.args) == 2 and all(r is None or r >= 2 for r in ranks)
    return False


def conv_kind(gm: fx.GraphModule, layer: QuantLayer) -> tuple[str, dict[str, int]] | None:
    """The kernel form of a conv layer with a square kernel and no dilation, with its geometry:
    ``("dense", geometry)`` (groups = 1: the families' GEMM kernels), ``("depthwise", geometry)``
    (groups = channels, one input channel each), ``("grouped", geometry)`` (any other groups: a
    family's grouped kernel if it has one); None for any other layer (the layer timers time it in
    float)."""
    if layer.kind != "conv" or layer.node.target not in CONV_OPS or layer.weight is None:
        return None
    geo = conv_geometry(layer.node)
    weight = get_attr(gm, layer.weight_name)
    if geo is None or weight.dim() != 4 or weight.shape[2] != weight.shape[3] or geo["dilation"] != 1:
        return None
    if geo["groups"] == 1:
        return "dense", geo
    if weight.shape[1] == 1 and geo["groups"] == weight.shape[0]:
        return "depthwise", geo
    return "grouped", geo


__all__ = ["conv_kind", "has_integer_kernel"]
