"""Lowerings of the integer transformer glue (:mod:`lcpaq.backends.common.integer_glue`: softmax,
layer norm, GELU on codes) to the kernels of :mod:`lcpaq.backends.common.glue_kernels` (GELU's:
:mod:`lcpaq.backends.common.gelu_kernel`).

:data:`GLUE` is a table whose parent is the CPU families' :data:`~lcpaq.backends.common.lower_codes.CODES`;
a family whose ``Conventions.integer_glue`` is set makes it its table's parent. Each op reads its
input in the logical layout (unpadded, 4-d as NCHW: the glue works over the last logical
dimension) and writes its output the same way. A residual or mask add fused into a layer norm
or softmax (its ``add`` argument) is computed where the kernel reads its input
(:class:`~lcpaq.backends.common.glue_kernels.FusedAdd`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common import gelu_kernel
from lcpaq.backends.common import glue_kernels as gk
from lcpaq.backends.common import integer_glue as glue
from lcpaq.backends.common.lower_codes import CODES
from lcpaq.backends.common.relax_lower import LoweringTable, RelaxLowering, RVal, channels_of, codes, logical
from lcpaq.ir.errors import LoweringError

#: The glue lowerings; parent: the code lowerings every CPU family shares.
GLUE = LoweringTable("integer-glue", parent=CODES)


def _schedule(lw: RelaxLowering):  # noqa: ANN202 (a schedule function or None)
    """The glue kernels' CPU schedule where the family schedules its code kernels itself."""
    return gk.schedule_glue if lw.code_schedule is not None else None


def _out(lw: RelaxLowering, gv: relax.GlobalVar, args: list[relax.Expr], x: RVal, node: fx.Node) -> RVal:
    dtype = node.kwargs.get("out_dtype", "uint8")
    return RVal(lw.call(gv, args, x.shape, dtype), x.shape, dtype, channels_of(x.shape), "NCHW")


def _scalars(node: fx.Node, first: int, last: int) -> tuple[int, ...]:
    return tuple(int(a) for a in node.args[first:last])


def _inputs(lw: RelaxLowering, node: fx.Node) -> tuple[RVal, list[relax.Expr], gk.FusedAdd | None]:
    """The op's input (the larger operand of a fused add: the sum's shape), the Relax arguments
    that carry it, and the fused add."""
    x = logical(lw, codes(lw, node))
    if "add" not in node.kwargs:
        return x, [x.expr], None
    other, *params = node.kwargs["add"]
    r = logical(lw, lw.env[other])
    shape = tuple(int(d) for d in torch.broadcast_shapes(x.shape, r.shape))
    if shape != x.shape:  # qadd is symmetric: the full-shape operand is read as X
        x, r, params = r, x, [*params[3:6], *params[:3], *params[6:]]
    if shape != x.shape:
        raise LoweringError(f"{node.name}: fused add of {x.shape} and {r.shape} broadcasts both operands")
    return x, [x.expr, r.expr], gk.FusedAdd(r.shape, r.dtype, tuple(int(p) for p in params))


def _tail(node: fx.Node) -> tuple:
    kw = node.kwargs
    return int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), kw.get("out_dtype", "uint8")


@GLUE.register(glue.qsoftmax)
def _softmax(lw: RelaxLowering, node: fx.Node) -> RVal:
    x, args, add = _inputs(lw, node)
    params = (*_scalars(node, 1, 6), *_tail(node))
    gv = lw.prim(("qsoftmax", x.shape, x.dtype, params, add), lambda: gk.softmax_func(x.shape, x.dtype, *params, add=add), _schedule(lw))
    return _out(lw, gv, args, x, node)


@GLUE.register(glue.qgelu)
def _gelu(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = logical(lw, codes(lw, node))
    params = (*_scalars(node, 1, 4), *_scalars(node, 5, 7), *_tail(node))
    table = relax.const(np.ascontiguousarray(lw.tensor(node.args[4]).numpy()), "int32")
    gv = lw.prim(("qgelu", x.shape, x.dtype, params), lambda: gelu_kernel.gelu_func(x.shape, x.dtype, *params), _schedule(lw))
    return _out(lw, gv, [x.expr, table], x, node)


@GLUE.register(glue.qlayer_norm)
def _layer_norm(lw: RelaxLowering, node: fx.Node) -> RVal:
    x, args, add = _inputs(lw, node)
    params = (int(node.args[1]), *_scalars(node, 4, 6), *_tail(node))
    gamma, beta = (relax.const(np.ascontiguousarray(lw.tensor(node.args[i]).numpy()), "int64") for i in (2, 3))
    gv = lw.prim(("qlayer_norm", x.shape, x.dtype, params, add), lambda: gk.layer_norm_func(x.shape, x.dtype, *params, add=add),
                 _schedule(lw))
    return _out(lw, gv, [*args, gamma, beta], x, node)
