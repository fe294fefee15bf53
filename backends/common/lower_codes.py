"""Lowerings of the integer graph's element-wise, pooling and activation x activation matmul ops
(kernels of :mod:`lcpaq.backends.common.code_kernels`) and of reshapes of padded codes, shared by
the CPU families: :data:`CODES`, the parent of their tables.

The family's :class:`~lcpaq.backends.common.backend.Conventions` say what the codes look like:
activations are NHWC between kernels, in ``act_dtype`` codes (int32 into residual adds), channels
padded to ``in_multiple`` (to ``out_multiple`` where a depthwise conv reads them, whose kernel
takes a vector of channels at a time) and never sliced until the float output."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.integer_ops import CODE_DTYPES
from lcpaq.backends.common.relax_lower import NotThisForm, RelaxLowering, RVal, channels_of, codes, logical, nhwc, round_up
from lcpaq.backends.common import code_kernels as ck
from lcpaq.backends.common.relax_frontend import COMMON
from lcpaq.backends.common.relax_lower import LoweringTable
from lcpaq.ir.errors import LoweringError

aten = torch.ops.aten

#: Lowerings of integer codes every CPU family shares; its parent is :data:`COMMON`.
CODES = LoweringTable("integer-codes", parent=COMMON)


@CODES.register(iops.quantize)
def _quantize(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = lw.env[node.args[0]]
    conv = lw.backend.conventions
    code = node.kwargs.get("out_dtype", "uint8")
    if code not in (conv.act_dtype, "int32") and not (code == "int16" and conv.wide_bits):
        raise LoweringError(f"{node.name}: backend {lw.backend.name!r} reads {conv.act_dtype} activation codes, not {code}")
    inv, zp = float(node.args[1]), int(node.args[2])
    qmin, qmax = int(node.kwargs["qmin"]), int(node.kwargs["qmax"])
    if not x.shape:
        raise LoweringError(f"{node.name}: quantize of a scalar is not lowered")
    # codes only matmuls and linears read (over the last logical dim), and int32 codes (a mask
    # into glue), keep the logical layout, unpadded; others are NHWC / padded for the kernels
    # (to 16 when a depthwise conv reads them)
    plain = len(x.shape) == 4 and (code == "int32" or all(u.target in (iops.qmatmul, iops.qlinear) for u in node.users))
    if plain and x.layout == "NHWC":
        x = RVal(lw.bb.emit(relax.op.permute_dims(x.expr, [0, 3, 1, 2])), x.shape, x.dtype, x.cp, "NCHW")
    cp = x.shape[-1] if plain or code == "int32" else round_up(x.channels, conv.out_multiple if any(_depthwise(lw, u) for u in node.users) else conv.in_multiple)
    nhwc = len(x.shape) == 4 and x.layout == "NHWC"
    key = ("quantize", x.shape, inv, zp, qmin, qmax, cp, nhwc, plain, code)
    gv = lw.prim(key, lambda: ck.quantize_func(x.shape, inv, zp, qmin, qmax, cp, nhwc, plain, code), lw.code_schedule)
    if plain:
        return RVal(lw.call(gv, [x.expr], x.shape, code), x.shape, code, x.channels, "NCHW")
    phys = (x.shape[0], x.shape[2], x.shape[3], cp) if len(x.shape) == 4 else (*x.shape[:-1], cp)
    return RVal(lw.call(gv, [x.expr], phys, code), x.shape, code, cp)


def _depthwise(lw: RelaxLowering, node: fx.Node) -> bool:
    """A depthwise conv of the integer graph (its kernel reads a vector of channels at a time)."""
    if node.target is not iops.qconv2d or int(node.kwargs.get("groups", 1)) == 1:
        return False
    return lw.tensor(node.args[1]).shape[1] == 1


@CODES.register(iops.dequantize, iops.dequantize_channels)
def _dequantize(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Codes to float32; 4-d results stay NHWC unless they are a model output (NCHW)."""
    x = codes(lw, node)
    c = x.channels
    plain = len(x.shape) == 4 and x.layout == "NCHW"  # codes in logical layout (matmul results)
    if plain:
        c = x.shape[-1]
    nhwc = len(x.shape) == 4 and not plain and not any(u.op == "output" for u in node.users)
    if node.target is iops.dequantize:
        scale, zp = float(node.args[1]), int(node.args[2])
        key = ("dequantize", x.phys, x.dtype, c, scale, zp, nhwc, plain)
        gv = lw.prim(key, lambda: ck.dequantize_func(x.phys, x.dtype, c, scale, zp, nhwc, plain), lw.code_schedule)
        args = [x.expr]
    else:
        scales = lw.tensor(node.args[1]).float().numpy()
        key = ("dequantize_channels", x.phys, x.dtype, c, nhwc, plain)
        gv = lw.prim(key, lambda: ck.dequantize_func(x.phys, x.dtype, c, [1.0] * c, 0, nhwc, plain), lw.code_schedule)
        args = [x.expr, relax.const(np.ascontiguousarray(scales))]
    if nhwc:
        b, _, h, w = x.shape
        return RVal(lw.call(gv, args, (b, h, w, c), "float32"), x.shape, "float32", c, "NHWC")
    return RVal(lw.call(gv, args, x.shape, "float32"), x.shape, "float32", x.channels, "NCHW")


@CODES.register(iops.requantize)
def _requantize(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    x_zp, mult, shift, out_zp = (int(a) for a in node.args[1:5])
    qmin, qmax, dtype = int(node.kwargs["qmin"]), int(node.kwargs["qmax"]), node.kwargs.get("out_dtype", "uint8")
    key = ("requantize", x.phys, x.dtype, x_zp, mult, shift, out_zp, qmin, qmax, dtype)
    gv = lw.prim(key, lambda: ck.requantize_func(x.phys, x.dtype, x_zp, mult, shift, out_zp, qmin, qmax, dtype), lw.code_schedule)
    return RVal(lw.call(gv, [x.expr], x.phys, dtype), x.shape, dtype, x.cp, x.layout)


def _common_layout(lw: RelaxLowering, a: RVal, b: RVal) -> tuple[RVal, RVal]:
    """Two code tensors of an add stored alike: NHWC with equal channels when both are 4-d
    channel-stored, else in their logical layout; a broadcast operand is materialized."""
    shape = tuple(int(d) for d in torch.broadcast_shapes(a.shape, b.shape))
    if len(shape) == 4 and len(a.shape) == len(b.shape) == 4 and "NCHW" not in (a.layout, b.layout):
        cp = max(a.cp, b.cp)
        a, b = nhwc(lw, a, 1, cp), nhwc(lw, b, 1, cp)
        phys = (shape[0], shape[2], shape[3], cp)
        out = [RVal(v.expr if v.phys == phys else lw.bb.emit(relax.op.broadcast_to(v.expr, phys)), shape, v.dtype, cp) for v in (a, b)]
        return out[0], out[1]
    out = []
    for v in (logical(lw, a), logical(lw, b)):
        expr = v.expr if v.shape == shape else lw.bb.emit(relax.op.broadcast_to(v.expr, shape))
        out.append(RVal(expr, shape, v.dtype, channels_of(shape), "NCHW"))
    return out[0], out[1]


@CODES.register(iops.qadd)
def _qadd(lw: RelaxLowering, node: fx.Node) -> RVal:
    a, b = codes(lw, node, 0), codes(lw, node, 1)
    if a.phys != b.phys or a.layout != b.layout:
        a, b = _common_layout(lw, a, b)
    pa, pb = tuple(int(v) for v in node.args[2:5]), tuple(int(v) for v in node.args[5:8])
    out_zp, qmin, qmax = int(node.args[8]), int(node.kwargs["qmin"]), int(node.kwargs["qmax"])
    dtype = node.kwargs.get("out_dtype", "uint8")
    key = ("qadd", a.phys, a.dtype, b.dtype, pa, pb, out_zp, qmin, qmax, dtype)
    gv = lw.prim(key, lambda: ck.qadd_func(a.phys, a.dtype, b.dtype, pa, pb, out_zp, qmin, qmax, dtype), lw.code_schedule)
    return RVal(lw.call(gv, [a.expr, b.expr], a.phys, dtype), a.shape, dtype, a.cp, a.layout)


@CODES.register(iops.clamp)
def _clamp(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    qmin, qmax = int(node.args[1]), int(node.args[2])
    gv = lw.prim(("clamp", x.phys, x.dtype, qmin, qmax), lambda: ck.clamp_func(x.phys, x.dtype, qmin, qmax), lw.code_schedule)
    return RVal(lw.call(gv, [x.expr], x.phys, x.dtype), x.shape, x.dtype, x.cp, x.layout)


@CODES.register(iops.max_pool2d)
def _max_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = nhwc(lw, codes(lw, node))
    k, s, p = (int(a) for a in node.args[1:4])
    b, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    gv = lw.prim(("max_pool", x.phys, x.dtype, k, s, p), lambda: ck.max_pool2d_func(x.phys, x.dtype, k, s, p), lw.code_schedule)
    return RVal(lw.call(gv, [x.expr], (b, oh, ow, x.cp), x.dtype), (b, c, oh, ow), x.dtype, x.cp)


@CODES.register(iops.global_avg_pool)
def _global_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = nhwc(lw, codes(lw, node))
    b, c = x.shape[:2]
    gv = lw.prim(("global_avg_pool", x.phys, x.dtype), lambda: ck.global_avg_pool_func(x.phys, x.dtype), lw.code_schedule)
    return RVal(lw.call(gv, [x.expr], (b, 1, 1, x.cp), x.dtype), (b, c, 1, 1), x.dtype, x.cp)


def _reshaped(lw: RelaxLowering, node: fx.Node, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape a flatten / view / reshape of a ``shape`` value makes, its sizes fixed by the
    build (symbolic sizes read from :attr:`RelaxLowering.scalars`); None if not known."""
    if node.target is aten.flatten.using_ints:
        rank = len(shape)
        start, end = (int(node.args[i]) % rank if len(node.args) > i else d for i, d in ((1, 0), (2, rank - 1)))
        return (*shape[:start], int(np.prod(shape[start : end + 1])), *shape[end + 1 :])
    dims = [lw.scalars.get(d, d) if isinstance(d, fx.Node) else d for d in node.args[1]]
    if not all(isinstance(d, int) for d in dims) or dims.count(-1) > 1:
        return None
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = int(np.prod(shape)) // max(known, 1)
    return tuple(dims)


@CODES.register(aten.flatten.using_ints, aten.view.default, aten.reshape.default)
def _flatten(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Reshapes of codes: [B, C, 1, 1] -> [B, C] keeps the padding; any other reshape of padded
    codes drops it first (the result is in its logical layout). Float values: TVM's frontend."""
    x = lw.env[node.args[0]]
    out_shape = _reshaped(lw, node, x.shape)
    if len(x.shape) == 4 and x.layout == "NHWC" and x.shape[2:] == (1, 1) and out_shape in (None, (x.shape[0], x.shape[1])):
        b = x.shape[0]
        return RVal(lw.bb.emit(relax.op.reshape(x.expr, (b, x.cp))), (b, x.shape[1]), x.dtype, x.cp)
    if x.dtype not in CODE_DTYPES or out_shape is None:
        raise NotThisForm(f"reshape of {x.dtype} values is TVM's frontend reshape")
    v = logical(lw, x)
    return RVal(lw.bb.emit(relax.op.reshape(v.expr, out_shape)), out_shape, x.dtype, channels_of(out_shape), "NCHW")


@CODES.register(aten.embedding.default)
def _embedding(lw: RelaxLowering, node: fx.Node) -> RVal:
    """A gather of rows of a table of codes (int32: an embedding read by integer glue)."""
    table, ids = lw.env[node.args[0]], lw.env[node.args[1]]
    if table.dtype != "int32":
        raise NotThisForm(f"embedding of a {table.dtype} table is TVM's frontend embedding")
    shape = (*ids.shape, table.shape[-1])
    return RVal(lw.bb.emit(relax.op.take(table.expr, ids.expr, axis=0)), shape, "int32", shape[-1], "NCHW")


@CODES.register(aten.transpose.int, aten.permute.default)
def _transpose(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Dimensions of codes reordered, in their logical layout. Float values: TVM's frontend."""
    x = lw.env[node.args[0]]
    if x.dtype not in CODE_DTYPES:
        raise NotThisForm(f"transpose of {x.dtype} values is TVM's frontend transpose")
    v = logical(lw, x)
    rank = len(v.shape)
    if node.target is aten.transpose.int:
        axes = list(range(rank))
        i, j = (int(d) % rank for d in node.args[1:3])
        axes[i], axes[j] = axes[j], axes[i]
    else:
        axes = [int(d) % rank for d in node.args[1]]
    shape = tuple(v.shape[a] for a in axes)
    return RVal(lw.bb.emit(relax.op.permute_dims(v.expr, axes)), shape, x.dtype, channels_of(shape), "NCHW")


def _broadcast(lw: RelaxLowering, v: RVal, batch: tuple[int, ...]) -> RVal:
    shape = (*batch, *v.shape[-2:])
    if shape == v.shape:
        return v
    return RVal(lw.bb.emit(relax.op.broadcast_to(v.expr, shape)), shape, v.dtype, channels_of(shape), "NCHW")


@CODES.register(iops.qmatmul)
def _qmatmul(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Activation x activation matmul of codes in their logical layout (plain int32 arithmetic;
    int64 for the int16 codes of a family with wide kernels)."""
    a, b = (logical(lw, lw.env[arg]) for arg in node.args[:2])
    conv = lw.backend.conventions
    code = "int16" if a.dtype == "int16" and conv.wide_bits else conv.act_dtype
    if a.dtype != code or b.dtype != code or len(a.shape) < 2 or len(b.shape) < 2 or a.shape[-1] != b.shape[-2]:
        raise LoweringError(f"{node.name}: matmul of {a.dtype} {a.shape} and {b.dtype} {b.shape} is not lowered ({code} codes, 2-d or more)")
    if a.shape[:-2] != b.shape[:-2]:  # batch broadcasting: materialize both operands at the common batch shape
        batch = tuple(int(d) for d in torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
        a, b = (_broadcast(lw, v, batch) for v in (a, b))
    a_zp, b_zp, mult, shift = (int(v) for v in node.args[2:6])
    kw = node.kwargs
    out_zp, qmin, qmax, dtype = int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), kw.get("out_dtype", "uint8")
    shape = (*a.shape[:-1], b.shape[-1])
    key = ("qmatmul", a.shape, b.shape, a_zp, b_zp, mult, shift, out_zp, qmin, qmax, dtype, code)
    schedule = ck.schedule_qmatmul if lw.code_schedule is not None else None  # a GPU family's pipeline schedules it
    gv = lw.prim(key, lambda: ck.qmatmul_func(a.shape, b.shape, a_zp, b_zp, mult, shift, out_zp, qmin, qmax, dtype, code),
                 schedule)
    return RVal(lw.call(gv, [a.expr, b.expr], shape, dtype), shape, dtype, channels_of(shape), "NCHW")
