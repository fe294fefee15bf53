"""Relax lowerings of the integer graph's GEMM ops: conv (VNNI; depthwise on the vector
depthwise kernel; other grouped convs on the windowed VNNI conv) and linear (VNNI dense, any rank).

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

from lcpaq.backends.common import gemm_te
from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import RelaxLowering, RVal, channels_of, codes, logical, nhwc, pad_last, round_up
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.common import cpu_depthwise as dw
from lcpaq.backends.x86 import int8_grouped as gw
from lcpaq.backends.x86.lowerings import LOWERINGS
from lcpaq.backends.x86.vnni import DEPTH, LANES, pack_weight
from lcpaq.ir.errors import LoweringError


def _channel_vectors(bias: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, n_pad: int) -> list[relax.Expr]:
    return [relax.const(a) for a in gemm_te.channel_params(bias, mult, shift, len(mult), n_pad)]


def _conv_params(lw: RelaxLowering, node: fx.Node) -> tuple[torch.Tensor, Any, Any, Any, int, int, str, "gemm_te.Requant"]:
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    kw = node.kwargs
    rq = gemm_te.Requant(int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), kw.get("out_dtype", "uint8"))
    return w, bias, mult, shift, int(kw["stride"]), int(kw["padding"]), rq.out_dtype, rq


@LOWERINGS.register(iops.qconv2d)
def _qconv2d(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Dense convs on the VNNI conv, depthwise ones on the AVX-512 depthwise kernel, other
    grouped ones on the windowed VNNI conv (:mod:`lcpaq.backends.x86.int8_grouped`); any kernel size."""
    x = codes(lw, node)
    if x.dtype != "uint8" or len(x.shape) != 4:
        raise LoweringError(f"{node.name}: conv input must be uint8 NCHW codes")
    w, bias, mult, shift, stride, pad, dtype, rq = _conv_params(lw, node)
    groups = int(node.kwargs.get("groups", 1))
    o, c, kh, kw = w.shape
    if groups != 1 and groups == o == x.shape[1] and c == 1 and kh == kw:
        return _qdepthwise(lw, node, x, w, bias, mult, shift)
    if groups != 1:
        return _qgrouped(lw, node, x, groups)
    x = nhwc(lw, x, DEPTH)
    b, _, h, wd = x.shape
    o16 = round_up(o, LANES)
    w_p = torch.zeros(o16, x.cp, kh, kw, dtype=torch.int8)  # padded channels: zero weights
    w_p[:o, :c] = w.to(torch.int8)
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(wd, kw, stride, pad)
    ksize = f"k{kh}" if kh == kw else f"k{kh}x{kw}"
    tag = f"conv-{x.cp}x{h}x{wd}-o{o16}-{ksize}s{stride}p{pad}-int8" + ("" if dtype == "uint8" else "-i32") + ("" if b == 1 else f"-b{b}")
    sched = lw.kernel_schedule(tag)
    gv = lw.prim(
        ("qconv2d", (b, h, wd, x.cp), o16, (kh, kw), stride, pad, dtype),
        lambda: t8.qconv2d_func((b, h, wd, x.cp), o16, (kh, kw), stride, pad, dtype),
        lambda f: sched(f, lambda g: t8.schedule_qconv2d(g, t8.vnni_col_tile(ow))),
    )
    x_zp = int(node.kwargs["x_zp"])
    args = [x.expr, relax.const(t8.pack_conv_weight(w_p)), *_channel_vectors(gemm_te.bias_eff(w, x_zp, bias), mult, shift, o16),
            relax.const(rq.qp(x_zp))]
    return RVal(lw.call(gv, args, (b, oh, ow, o16), dtype), (b, o, oh, ow), dtype, o16)


def _qdepthwise(lw: RelaxLowering, node: fx.Node, x: RVal, w: torch.Tensor, bias: Any, mult: Any, shift: Any) -> RVal:
    """Depthwise conv (groups == C): the AVX-512 kernel of :mod:`int8_depthwise`, 16 channels a
    vector; stored channels padded to 16 first when they are not (e.g. 72 after a float op)."""
    kw = node.kwargs
    stride, pad, dtype = int(kw["stride"]), int(kw["padding"]), kw.get("out_dtype", "uint8")
    c, k = w.shape[0], w.shape[2]
    x = nhwc(lw, x, LANES)
    b, _, h, wd = x.shape
    w_p = torch.zeros(x.cp, 1, k, k, dtype=torch.int8)
    w_p[:c] = w.to(torch.int8)
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    rq = gemm_te.Requant(int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), dtype)
    gv = lw.prim(("qdepthwise", (b, h, wd, x.cp), k, stride, pad, dtype),
                 lambda: dw.qdepthwise_func((b, h, wd, x.cp), k, stride, pad, dtype), dw.schedule_qdepthwise)
    args = [x.expr, relax.const(dw.pack_depthwise_weight(w_p)),
            *_channel_vectors(gemm_te.bias_eff(w, int(kw["x_zp"]), bias), mult, shift, x.cp), relax.const(rq.qp(int(kw["x_zp"])))]
    return RVal(lw.call(gv, args, (b, oh, ow, x.cp), dtype), (b, c, oh, ow), dtype, x.cp)


def _qgrouped(lw: RelaxLowering, node: fx.Node, x: RVal, groups: int) -> RVal:
    """Grouped conv on the windowed VNNI kernel (hand schedule); inputs and outputs regrouped in
    Relax when the group sizes need it (see :class:`~lcpaq.backends.x86.int8_grouped.GroupPlan`)."""
    w, bias, mult, shift, stride, pad, dtype, rq = _conv_params(lw, node)
    o, _, kh, kw = w.shape
    plan = gw.group_plan(x.shape[1], o, groups)
    b, c, h, wd = x.shape
    if plan.regroups_inputs:  # [.., groups * cg] -> [.., groups * cg_p]
        x = nhwc(lw, logical(lw, x))
        e = lw.bb.emit(relax.op.reshape(x.expr, (b, h, wd, groups, plan.cg)))
        e = pad_last(lw, e, (b, h, wd, groups, plan.cg), plan.cg_p)
        x = RVal(lw.bb.emit(relax.op.reshape(e, (b, h, wd, groups * plan.cg_p))), (b, c, h, wd), x.dtype, groups * plan.cg_p)
    x = nhwc(lw, x, 1, plan.in_channels)
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(wd, kw, stride, pad)
    n_out = plan.out_channels
    gv = lw.prim(("qgrouped", (b, h, wd, x.cp), plan, (kh, kw), stride, pad, dtype),
                 lambda: gw.qgrouped_func((b, h, wd, x.cp), plan, (kh, kw), stride, pad, dtype),
                 lambda f: t8.schedule_qconv2d(f, t8.vnni_col_tile(ow)))
    x_zp = int(node.kwargs["x_zp"])
    params = [relax.const(a) for a in gw.grouped_channel_params(w, x_zp, bias, mult, shift, plan)]
    args = [x.expr, relax.const(gw.pack_grouped_weight(w, plan)), *params, relax.const(rq.qp(x_zp))]
    y = lw.call(gv, args, (b, oh, ow, n_out), dtype)
    if not plan.regroups_outputs:
        return RVal(y, (b, o, oh, ow), dtype, n_out)
    # kernel channel g * og_p + j holds output g * og + j: drop the padded outputs of each group
    y = lw.bb.emit(relax.op.strided_slice(y, axes=[3], begin=[0], end=[groups * plan.og_p]))
    y = lw.bb.emit(relax.op.reshape(y, (b, oh, ow, groups, plan.og_p)))
    y = lw.bb.emit(relax.op.strided_slice(y, axes=[4], begin=[0], end=[plan.og]))
    return RVal(lw.bb.emit(relax.op.reshape(y, (b, oh, ow, o))), (b, o, oh, ow), dtype, o)


@LOWERINGS.register(iops.qlinear)
def _qlinear(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Linear over the last logical dimension; every leading dimension is a row (a 4-d input,
    e.g. channels-last tokens after a permute, is read in its logical layout)."""
    x = codes(lw, node)
    if x.dtype != "uint8":
        raise LoweringError(f"{node.name}: linear input must be uint8 codes [..., K], got {x.dtype} {x.shape}")
    four_d = len(x.shape) == 4
    if four_d:
        x = logical(lw, x)
    lead, stored = x.shape[:-1], (x.shape[-1] if four_d else x.cp)
    rows = int(np.prod(lead)) if lead else 1
    expr = x.expr if len(x.shape) == 2 else lw.bb.emit(relax.op.reshape(x.expr, (rows, stored)))
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    kw = node.kwargs
    dtype = kw.get("out_dtype", "uint8")
    n, k = w.shape
    m, k4, n16 = rows, round_up(stored, DEPTH), round_up(n, LANES)
    expr = pad_last(lw, expr, (rows, stored), k4)  # padded features meet zero weights
    w_p = torch.zeros(n16, k4, dtype=torch.int8)
    w_p[:n, :k] = w.to(torch.int8)
    rq = gemm_te.Requant(int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), dtype)
    tag = f"dense-m{m}-n{n16}-k{k4}-int8" + ("" if dtype == "uint8" else "-i32")
    sched = lw.kernel_schedule(tag)
    gv = lw.prim(("qdense", m, n16, k4, dtype), lambda: t8.qdense_func(m, n16, k4, dtype), lambda f: sched(f, t8.schedule_qdense))
    args = [expr, relax.const(pack_weight(w_p)), *_channel_vectors(gemm_te.bias_eff(w, int(kw["x_zp"]), bias), mult, shift, n16),
            relax.const(rq.qp(int(kw["x_zp"])))]
    y = lw.call(gv, args, (m, n16), dtype)
    if len(lead) != 1:
        y = lw.bb.emit(relax.op.reshape(y, (*lead, n16)))
    if four_d:  # a 4-d value in its logical layout is stored unpadded
        if n16 != n:
            y = lw.bb.emit(relax.op.strided_slice(y, axes=[3], begin=[0], end=[n]))
        shape = (*lead, n)
        return RVal(y, shape, dtype, channels_of(shape), "NCHW")
    return RVal(y, (*lead, n), dtype, n16)
