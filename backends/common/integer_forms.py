"""Which ops of a fake-quantized graph have an integer form (:mod:`integerize` lowers them to
:mod:`integer_ops`), and, for those that run in float, why: the reason every float node of an
integer graph carries (``integer_ops.FLOAT_REASON``) and builds report per node."""
from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from lcpaq.backends.common.op_args import conv_geometry, integer_conv_reason, is_global_pool, pool_reason
from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import ADD_OPS, CONV_OPS, LINEAR_OPS, MATMUL_OPS, is_quantizer
from lcpaq.ir.meta import QUANTIZER

aten = torch.ops.aten

RELU_OPS = {aten.relu.default, aten.relu_.default}
RELU6_OPS = {aten.relu6.default, aten.relu6_.default} if hasattr(aten, "relu6_") else {aten.relu6.default}
CLAMP_OPS = {aten.hardtanh.default, aten.hardtanh_.default, aten.clamp.default} | RELU6_OPS
IDENTITY_OPS = {aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.detach.default}
RESHAPE_OPS = {aten.flatten.using_ints, aten.view.default, aten.reshape.default}
#: Ops that only reorder dimensions (attention's head split and merge).
TRANSPOSE_OPS = {aten.transpose.int, aten.permute.default}
GLOBAL_POOL_OPS = {aten.adaptive_avg_pool2d.default, aten.mean.dim}
#: Ops that keep the meaning of codes (and the range of values): a target domain is looked for
#: through them.
DOMAIN_PRESERVING = RELU_OPS | CLAMP_OPS | IDENTITY_OPS | RESHAPE_OPS | TRANSPOSE_OPS | {aten.max_pool2d.default}


def _op(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def constant_matmul(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``x @ W`` with a constant 2-d weight ``W [K, N]`` read through a weight quantizer: a linear."""
    if node.target not in MATMUL_OPS or len(node.args) != 2:
        return False
    w = node.args[1]
    return (isinstance(w, fx.Node) and is_quantizer(w) and QUANTIZER.get(w).role == "weight"
            and w.args[0].op == "get_attr" and get_attr(gm, str(w.args[0].target)).dim() == 2)


def layer_reason(gm: fx.GraphModule, node: fx.Node) -> str | None:
    """Why a quantized conv / linear has no integer form (None if it has one)."""
    spec = gm.get_submodule(str(node.args[1].target)).spec
    if not spec.symmetric:
        return f"{_op(node)} with asymmetric weights has no integer kernel"
    return integer_conv_reason(node) if node.target in CONV_OPS else None


def wide_form(node: fx.Node) -> bool:
    """A layer the wide (16-bit) kernels compute: a linear, ``x @ W``, or a conv with groups = 1."""
    if node.target in CONV_OPS:
        return (conv_geometry(node) or {}).get("groups") == 1
    return node.target in LINEAR_OPS or node.target in MATMUL_OPS


def float_reason(gm: fx.GraphModule, node: fx.Node, bits: int, codes: Callable[[fx.Node], bool], wide_bits: int | None = None) -> str:
    """Why ``node`` (of ``gm``) runs in float, given which of its inputs are integer ``codes``,
    the width of the backend's integer kernels (``bits``) and of its wide ones (``wide_bits``,
    dense convs and linears only)."""
    t, name = node.target, _op(node)
    wide_bits = bits if wide_bits is None else wide_bits
    if t in CONV_OPS | LINEAR_OPS or constant_matmul(gm, node):
        for a in node.args[:2]:
            if not (isinstance(a, fx.Node) and is_quantizer(a)):
                return "layer left in float by the assignment (no quantizer on its input or weight)"
            width = gm.get_submodule(str(a.target)).spec.bits
            if width > wide_bits:
                return f"{width}-bit quantizer: the backend's integer kernels are {wide_bits}-bit at most"
            if width > bits:
                return f"{width}-bit quantizer: the backend's {wide_bits}-bit kernels cover linears and convs with groups = 1"
    if t in MATMUL_OPS:
        return "matmul whose operands are not both quantized activations (of rank 2 or more)"
    inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]
    if t is aten.max_pool2d.default and inputs and codes(inputs[0]):
        return pool_reason(node) or "max_pool2d"
    if t in GLOBAL_POOL_OPS and not is_global_pool(node):
        return f"{name} that is not a global average pool over H, W"
    if t in ADD_OPS:
        operands = node.args[:2]
        if len(node.args) > 2 or node.kwargs.get("alpha", 1) != 1 or not all(isinstance(a, fx.Node) for a in operands):
            return "add with a scalar or alpha"
        if not all(codes(a) for a in operands):
            return "add with a float operand (a model constant or an unquantized value)"
        return "add whose result no quantizer reads"
    if t in RELU_OPS | CLAMP_OPS | RESHAPE_OPS | TRANSPOSE_OPS | GLOBAL_POOL_OPS | {aten.max_pool2d.default} and not any(codes(a) for a in inputs):
        return f"{name} of float values (its input is not quantized)"
    return f"no integer form of {name}"
