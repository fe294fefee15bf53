"""x86 lowerings of the integer graph's element-wise and pooling ops (kernels of
:mod:`lcpaq.backends.x86.elementwise`), and of reshapes of padded codes."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.relax_lower import NotThisForm, RelaxLowering, RVal, channels_of, codes, logical, nhwc, round_up
from lcpaq.backends.x86 import elementwise as ew
from lcpaq.backends.x86.lowerings import LOWERINGS
from lcpaq.backends.x86.vnni import DEPTH, LANES
from lcpaq.ir.errors import LoweringError

aten = torch.ops.aten


@LOWERINGS.register(iops.quantize)
def _quantize(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = lw.env[node.args[0]]
    if node.kwargs.get("out_dtype", "uint8") != "uint8":
        raise LoweringError(f"{node.name}: the x86 kernels read uint8 activation codes, not {node.kwargs['out_dtype']}")
    inv, zp = float(node.args[1]), int(node.args[2])
    qmin, qmax = int(node.kwargs["qmin"]), int(node.kwargs["qmax"])
    if not x.shape:
        raise LoweringError(f"{node.name}: quantize of a scalar is not lowered")
    # codes only matmuls and linears read (over the last logical dim) keep the logical layout,
    # unpadded; others are NHWC / padded for the kernels (to 16 when a depthwise conv reads them)
    plain = len(x.shape) == 4 and all(u.target in (iops.qmatmul, iops.qlinear) for u in node.users)
    if plain and x.layout == "NHWC":
        x = RVal(lw.bb.emit(relax.op.permute_dims(x.expr, [0, 3, 1, 2])), x.shape, x.dtype, x.cp, "NCHW")
    cp = x.shape[-1] if plain else round_up(x.channels, LANES if any(_depthwise(lw, u) for u in node.users) else DEPTH)
    nhwc = len(x.shape) == 4 and x.layout == "NHWC"
    key = ("quantize", x.shape, inv, zp, qmin, qmax, cp, nhwc, plain)
    gv = lw.prim(key, lambda: ew.quantize_func(x.shape, inv, zp, qmin, qmax, cp, nhwc, plain), ew.schedule_elementwise)
    if plain:
        return RVal(lw.call(gv, [x.expr], x.shape, "uint8"), x.shape, "uint8", x.channels, "NCHW")
    phys = (x.shape[0], x.shape[2], x.shape[3], cp) if len(x.shape) == 4 else (*x.shape[:-1], cp)
    return RVal(lw.call(gv, [x.expr], phys, "uint8"), x.shape, "uint8", cp)


def _depthwise(lw: RelaxLowering, node: fx.Node) -> bool:
    """A depthwise conv of the integer graph (its kernel reads channels 16 at a time)."""
    if node.target is not iops.qconv2d or int(node.kwargs.get("groups", 1)) == 1:
        return False
    return lw.tensor(node.args[1]).shape[1] == 1


@LOWERINGS.register(iops.dequantize, iops.dequantize_channels)
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
        gv = lw.prim(key, lambda: ew.dequantize_func(x.phys, x.dtype, c, scale, zp, nhwc, plain), ew.schedule_elementwise)
        args = [x.expr]
    else:
        scales = lw.tensor(node.args[1]).float().numpy()
        key = ("dequantize_channels", x.phys, x.dtype, c, nhwc, plain)
        gv = lw.prim(key, lambda: ew.dequantize_func(x.phys, x.dtype, c, [1.0] * c, 0, nhwc, plain), ew.schedule_elementwise)
        args = [x.expr, relax.const(np.ascontiguousarray(scales))]
    if nhwc:
        b, _, h, w = x.shape
        return RVal(lw.call(gv, args, (b, h, w, c), "float32"), x.shape, "float32", c, "NHWC")
    return RVal(lw.call(gv, args, x.shape, "float32"), x.shape, "float32", x.channels, "NCHW")


@LOWERINGS.register(iops.requantize)
def _requantize(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    x_zp, mult, shift, out_zp = (int(a) for a in node.args[1:5])
    qmin, qmax, dtype = int(node.kwargs["qmin"]), int(node.kwargs["qmax"]), node.kwargs.get("out_dtype", "uint8")
    key = ("requantize", x.phys, x.dtype, x_zp, mult, shift, out_zp, qmin, qmax, dtype)
    gv = lw.prim(key, lambda: ew.requantize_func(x.phys, x.dtype, x_zp, mult, shift, out_zp, qmin, qmax, dtype), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], x.phys, dtype), x.shape, dtype, x.cp)


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


@LOWERINGS.register(iops.qadd)
def _qadd(lw: RelaxLowering, node: fx.Node) -> RVal:
    a, b = codes(lw, node, 0), codes(lw, node, 1)
    if a.phys != b.phys or a.layout != b.layout:
        a, b = _common_layout(lw, a, b)
    pa, pb = tuple(int(v) for v in node.args[2:5]), tuple(int(v) for v in node.args[5:8])
    out_zp, qmin, qmax = int(node.args[8]), int(node.kwargs["qmin"]), int(node.kwargs["qmax"])
    dtype = node.kwargs.get("out_dtype", "uint8")
    key = ("qadd", a.phys, a.dtype, b.dtype, pa, pb, out_zp, qmin, qmax, dtype)
    gv = lw.prim(key, lambda: ew.qadd_func(a.phys, a.dtype, b.dtype, pa, pb, out_zp, qmin, qmax, dtype), ew.schedule_elementwise)
    return RVal(lw.call(gv, [a.expr, b.expr], a.phys, dtype), a.shape, dtype, a.cp)


@LOWERINGS.register(iops.clamp)
def _clamp(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    qmin, qmax = int(node.args[1]), int(node.args[2])
    gv = lw.prim(("clamp", x.phys, x.dtype, qmin, qmax), lambda: ew.clamp_func(x.phys, x.dtype, qmin, qmax), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], x.phys, x.dtype), x.shape, x.dtype, x.cp)


@LOWERINGS.register(iops.max_pool2d)
def _max_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = nhwc(lw, codes(lw, node))
    k, s, p = (int(a) for a in node.args[1:4])
    b, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    gv = lw.prim(("max_pool", x.phys, x.dtype, k, s, p), lambda: ew.max_pool2d_func(x.phys, x.dtype, k, s, p), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], (b, oh, ow, x.cp), x.dtype), (b, c, oh, ow), x.dtype, x.cp)


@LOWERINGS.register(iops.global_avg_pool)
def _global_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = nhwc(lw, codes(lw, node))
    b, c = x.shape[:2]
    gv = lw.prim(("global_avg_pool", x.phys, x.dtype), lambda: ew.global_avg_pool_func(x.phys, x.dtype), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], (b, 1, 1, x.cp), x.dtype), (b, c, 1, 1), x.dtype, x.cp)


@LOWERINGS.register(aten.flatten.using_ints, aten.view.default, aten.reshape.default)
def _flatten(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Reshapes of codes: [B, C, 1, 1] -> [B, C] keeps the padding; any other reshape of padded
    codes drops it first (the result is in its logical layout). Float values: TVM's frontend."""
    x = lw.env[node.args[0]]
    out_shape = tuple(int(d) for d in node.meta["val"].shape) if "val" in node.meta else None
    if len(x.shape) == 4 and x.layout == "NHWC" and x.shape[2:] == (1, 1) and out_shape in (None, (x.shape[0], x.shape[1])):
        b = x.shape[0]
        return RVal(lw.bb.emit(relax.op.reshape(x.expr, (b, x.cp))), (b, x.shape[1]), x.dtype, x.cp)
    if x.dtype not in ("uint8", "int8", "int32") or out_shape is None:
        raise NotThisForm(f"reshape of {x.dtype} values is TVM's frontend reshape")
    v = logical(lw, x)
    return RVal(lw.bb.emit(relax.op.reshape(v.expr, out_shape)), out_shape, x.dtype, channels_of(out_shape), "NCHW")
