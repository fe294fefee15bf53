"""x86 lowerings of the integer graph's element-wise and pooling ops (kernels of
:mod:`lcpaq.backends.x86.elementwise`), and of reshapes of padded codes."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.relax_lower import NotThisForm, RelaxLowering, RVal, codes, round_up
from lcpaq.backends.x86 import elementwise as ew
from lcpaq.backends.x86.lowerings import LOWERINGS
from lcpaq.backends.x86.vnni import DEPTH
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
    # codes only matmuls read keep the logical layout, unpadded; others are NHWC / padded for the kernels
    plain = len(x.shape) == 4 and all(u.target is iops.qmatmul for u in node.users)
    if plain and x.layout == "NHWC":
        x = RVal(lw.bb.emit(relax.op.permute_dims(x.expr, [0, 3, 1, 2])), x.shape, x.dtype, x.cp, "NCHW")
    cp = x.shape[-1] if plain else round_up(x.channels, DEPTH)
    nhwc = len(x.shape) == 4 and x.layout == "NHWC"
    key = ("quantize", x.shape, inv, zp, qmin, qmax, cp, nhwc, plain)
    gv = lw.prim(key, lambda: ew.quantize_func(x.shape, inv, zp, qmin, qmax, cp, nhwc, plain), ew.schedule_elementwise)
    if plain:
        return RVal(lw.call(gv, [x.expr], x.shape, "uint8"), x.shape, "uint8", x.channels, "NCHW")
    phys = (x.shape[0], x.shape[2], x.shape[3], cp) if len(x.shape) == 4 else (*x.shape[:-1], cp)
    return RVal(lw.call(gv, [x.expr], phys, "uint8"), x.shape, "uint8", cp)


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
        key = ("dequantize_channels", x.phys, x.dtype, c, nhwc)
        gv = lw.prim(key, lambda: ew.dequantize_func(x.phys, x.dtype, c, [1.0] * c, 0, nhwc), ew.schedule_elementwise)
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


@LOWERINGS.register(iops.qadd)
def _qadd(lw: RelaxLowering, node: fx.Node) -> RVal:
    a, b = codes(lw, node, 0), codes(lw, node, 1)
    if a.phys != b.phys:
        raise LoweringError(f"{node.name}: residual add of stored shapes {a.phys} and {b.phys} (broadcasting is not lowered)")
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
    x = codes(lw, node)
    k, s, p = (int(a) for a in node.args[1:4])
    b, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    gv = lw.prim(("max_pool", x.phys, x.dtype, k, s, p), lambda: ew.max_pool2d_func(x.phys, x.dtype, k, s, p), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], (b, oh, ow, x.cp), x.dtype), (b, c, oh, ow), x.dtype, x.cp)


@LOWERINGS.register(iops.global_avg_pool)
def _global_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    b, c = x.shape[:2]
    gv = lw.prim(("global_avg_pool", x.phys, x.dtype), lambda: ew.global_avg_pool_func(x.phys, x.dtype), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], (b, 1, 1, x.cp), x.dtype), (b, c, 1, 1), x.dtype, x.cp)


@LOWERINGS.register(aten.flatten.using_ints, aten.view.default, aten.reshape.default)
def _flatten(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = lw.env[node.args[0]]
    out_shape = tuple(int(d) for d in node.meta["val"].shape) if "val" in node.meta else None
    if len(x.shape) == 4 and x.shape[2:] == (1, 1) and out_shape in (None, (x.shape[0], x.shape[1])):
        b = x.shape[0]
        return RVal(lw.bb.emit(relax.op.reshape(x.expr, (b, x.cp))), (b, x.shape[1]), x.dtype, x.cp)
    if x.cp == x.channels:  # no padding to drop: TVM's frontend reshapes the logical (NCHW) value
        raise NotThisForm(node.name)
    raise LoweringError(f"{node.name}: reshaping padded codes {x.shape} is lowered only for [B, C, 1, 1]")
