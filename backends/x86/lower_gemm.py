"""Relax lowerings of the integer graph's GEMM ops: conv (VNNI; depthwise on the AVX-512
depthwise kernel), linear (VNNI dense) and activation x activation matmul.

Weights are padded and packed on the host into the kernels' blocked layouts and bound as
constants, with the input zero point folded into the bias (``bias - x_zp * sum(w)``). With
``trials`` the conv and dense kernels are tuned (:meth:`RelaxLowering.kernel_schedule`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import RelaxLowering, RVal, channels_of, codes, round_up
from lcpaq.backends.x86 import elementwise as ew
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86 import int8_depthwise as dw
from lcpaq.backends.x86.lowerings import LOWERINGS
from lcpaq.backends.x86.vnni import DEPTH, LANES, pack_weight
from lcpaq.ir.errors import LoweringError


def _channel_vectors(bias_eff: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, n_pad: int) -> list[relax.Expr]:
    return [relax.const(a.numpy()) for a in t8._channel_params(bias_eff, mult, shift, len(mult), n_pad)]


@LOWERINGS.register(iops.qconv2d)
def _qconv2d(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    if x.dtype != "uint8" or len(x.shape) != 4:
        raise LoweringError(f"{node.name}: conv input must be uint8 NCHW codes")
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    kw = node.kwargs
    stride, pad, groups, dtype = int(kw["stride"]), int(kw["padding"]), int(kw.get("groups", 1)), kw.get("out_dtype", "uint8")
    o, c, k, k2 = w.shape
    if groups != 1 and groups == o == x.shape[1] and c == 1 and k == k2:
        return _qdepthwise(lw, node, x, w, bias, mult, shift)
    if groups != 1 or k != k2:
        raise LoweringError(f"{node.name}: grouped (not depthwise) or non-square convs have no TVM kernel yet (groups={groups})")
    b, _, h, wd = x.shape
    o16 = round_up(o, LANES)
    w_p = torch.zeros(o16, x.cp, k, k, dtype=torch.int8)  # padded channels: zero weights
    w_p[:o, :c] = w.to(torch.int8)
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    rq = t8.Requant(int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), dtype)
    tag = f"conv-{x.cp}x{h}x{wd}-o{o16}-k{k}s{stride}p{pad}-int8" + ("" if dtype == "uint8" else "-i32") + ("" if b == 1 else f"-b{b}")
    sched = lw.kernel_schedule(tag)
    gv = lw.prim(
        ("qconv2d", (b, h, wd, x.cp), o16, k, stride, pad, dtype),
        lambda: t8.qconv2d_func((b, h, wd, x.cp), o16, k, stride, pad, dtype),
        lambda f: sched(f, lambda g: t8.schedule_qconv2d(g, t8.vnni_col_tile(ow))),
    )
    args = [x.expr, relax.const(t8.pack_conv_weight(w_p)), *_channel_vectors(t8._bias_eff(w, int(kw["x_zp"]), bias), mult, shift, o16),
            relax.const(rq.qp(int(kw["x_zp"])))]
    return RVal(lw.call(gv, args, (b, oh, ow, o16), dtype), (b, o, oh, ow), dtype, o16)


def _qdepthwise(lw: RelaxLowering, node: fx.Node, x: RVal, w: torch.Tensor, bias: Any, mult: Any, shift: Any) -> RVal:
    """Depthwise conv (groups == C): the AVX-512 kernel of :mod:`tvm_int8_depthwise`, 16 channels a vector."""
    kw = node.kwargs
    stride, pad, dtype = int(kw["stride"]), int(kw["padding"]), kw.get("out_dtype", "uint8")
    c, k = w.shape[0], w.shape[2]
    b, _, h, wd = x.shape
    if x.cp % LANES:
        raise LoweringError(f"{node.name}: depthwise input has {x.cp} stored channels, not a multiple of {LANES}")
    w_p = torch.zeros(x.cp, 1, k, k, dtype=torch.int8)
    w_p[:c] = w.to(torch.int8)
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    rq = t8.Requant(int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), dtype)
    gv = lw.prim(("qdepthwise", (b, h, wd, x.cp), k, stride, pad, dtype),
                 lambda: dw.qdepthwise_func((b, h, wd, x.cp), k, stride, pad, dtype), dw.schedule_qdepthwise)
    args = [x.expr, relax.const(dw.pack_depthwise_weight(w_p)),
            *_channel_vectors(t8._bias_eff(w, int(kw["x_zp"]), bias), mult, shift, x.cp), relax.const(rq.qp(int(kw["x_zp"])))]
    return RVal(lw.call(gv, args, (b, oh, ow, x.cp), dtype), (b, c, oh, ow), dtype, x.cp)


@LOWERINGS.register(iops.qlinear)
def _qlinear(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    if x.dtype != "uint8" or len(x.shape) == 4:
        raise LoweringError(f"{node.name}: linear input must be uint8 codes [..., K], got {x.dtype} {x.shape}")
    lead = x.shape[:-1]
    if len(x.shape) != 2:  # rows = every leading dimension
        rows = int(np.prod(lead))
        x = RVal(lw.bb.emit(relax.op.reshape(x.expr, (rows, x.cp))), (rows, x.shape[-1]), x.dtype, x.cp)
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    kw = node.kwargs
    dtype = kw.get("out_dtype", "uint8")
    n, k = w.shape
    m, k4, n16 = x.shape[0], round_up(x.cp, DEPTH), round_up(n, LANES)
    w_p = torch.zeros(n16, k4, dtype=torch.int8)
    w_p[:n, :k] = w.to(torch.int8)
    if k4 != x.cp:
        raise LoweringError(f"{node.name}: linear input of {x.cp} stored features is not a multiple of 4")
    rq = t8.Requant(int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), dtype)
    tag = f"dense-m{m}-n{n16}-k{k4}-int8" + ("" if dtype == "uint8" else "-i32")
    sched = lw.kernel_schedule(tag)
    gv = lw.prim(("qdense", m, n16, k4, dtype), lambda: t8.qdense_func(m, n16, k4, dtype), lambda f: sched(f, t8.schedule_qdense))
    args = [x.expr, relax.const(pack_weight(w_p)), *_channel_vectors(t8._bias_eff(w, int(kw["x_zp"]), bias), mult, shift, n16),
            relax.const(rq.qp(int(kw["x_zp"])))]
    y = lw.call(gv, args, (m, n16), dtype)
    if len(lead) != 1:
        y = lw.bb.emit(relax.op.reshape(y, (*lead, n16)))
    return RVal(y, (*lead, n), dtype, n16)


@LOWERINGS.register(iops.qmatmul)
def _qmatmul(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Activation x activation matmul of codes in their logical layout (plain int32 arithmetic)."""
    a, b = lw.env[node.args[0]], lw.env[node.args[1]]
    for v in (a, b):
        if v.dtype != "uint8" or (len(v.shape) == 4 and v.layout != "NCHW") or v.cp != v.channels:
            raise LoweringError(f"{node.name}: matmul operands must be unpadded uint8 codes in logical layout")
    if a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise LoweringError(f"{node.name}: matmul of {a.shape} and {b.shape} (batch broadcasting is not lowered)")
    a_zp, b_zp, mult, shift = (int(v) for v in node.args[2:6])
    kw = node.kwargs
    out_zp, qmin, qmax, dtype = int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), kw.get("out_dtype", "uint8")
    shape = (*a.shape[:-1], b.shape[-1])
    key = ("qmatmul", a.shape, b.shape, a_zp, b_zp, mult, shift, out_zp, qmin, qmax, dtype)
    gv = lw.prim(key, lambda: ew.qmatmul_func(a.shape, b.shape, a_zp, b_zp, mult, shift, out_zp, qmin, qmax, dtype),
                 ew.schedule_elementwise)
    return RVal(lw.call(gv, [a.expr, b.expr], shape, dtype), shape, dtype, channels_of(shape), "NCHW")
