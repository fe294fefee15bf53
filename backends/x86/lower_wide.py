"""x86 lowerings of wide (16-bit) integer layers: a ``qconv2d`` (groups = 1) or ``qlinear``
reading int16 codes or holding int16 weights runs on the ``vpdpwssd`` kernels of
:mod:`lcpaq.backends.x86.int16` (hand schedules; not tuned).

Weights are split into parts where both sides are 16-bit, padded and packed on the host; the
input zero point is folded into an int64 bias; multipliers are the integer graph's (sized to each
channel's accumulator bound by :mod:`~lcpaq.backends.common.integerize`).
"""
from __future__ import annotations

import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common import lower_blocked as lb
from lcpaq.backends.common import wide_te
from lcpaq.backends.common.gemm_te import bias_eff
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import RelaxLowering, RVal, nhwc, pad_last, round_up
from lcpaq.backends.x86 import int16 as k16
from lcpaq.backends.x86.tiles import target_tiles
from lcpaq.backends.x86.vnni import LANES
from lcpaq.ir.errors import LoweringError


def is_wide(x: RVal, w: torch.Tensor) -> bool:
    """A layer for the wide kernels: int16 activation codes or int16 weight codes."""
    return x.dtype == "int16" or w.dtype == torch.int16


def _w_bits(w: torch.Tensor) -> int:
    return 16 if w.dtype == torch.int16 else 8


def lower_wide_conv(lw: RelaxLowering, node: fx.Node, x: RVal) -> RVal:
    """A dense (groups = 1) conv on the wide conv kernel; any kernel size."""
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    if int(node.kwargs.get("groups", 1)) != 1:
        raise LoweringError(f"{node.name}: the wide (16-bit) kernels compute convs with groups = 1 only")
    stride, pad, rq = int(node.kwargs["stride"]), int(node.kwargs["padding"]), lb.requant_of(node)
    o, c, kh, kw = w.shape
    x = nhwc(lw, x, wide_te.DEPTH)
    b, _, h, wd = x.shape
    o_p = round_up(o, LANES)
    w_p = torch.zeros(o_p, x.cp, kh, kw, dtype=torch.int16)
    w_p[:o, :c] = w.to(torch.int16)
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(wd, kw, stride, pad)
    bits, dtype = _w_bits(w), rq.out_dtype
    gv = lw.prim(("qconv2d_wide", (b, h, wd, x.cp), o_p, (kh, kw), stride, pad, x.dtype, bits, dtype),
                 lambda: k16.qconv2d_func((b, h, wd, x.cp), o_p, (kh, kw), stride, pad, x.dtype, bits, dtype),
                 lambda f: k16.schedule_qconv2d(f, ow, target_tiles(lw.tvm_target)))
    x_zp = int(node.kwargs["x_zp"])
    packed = wide_te.pack_wide_weight(w_p, wide_te.parts_of(x.dtype, bits), LANES)
    args = [x.expr, relax.const(packed), *lb.channel_vectors(bias_eff(w, x_zp, bias), mult, shift, o_p, "int64"), relax.const(rq.qp(x_zp, x.dtype))]
    return RVal(lw.call(gv, args, (b, oh, ow, o_p), dtype), (b, o, oh, ow), dtype, o_p)


def lower_wide_linear(lw: RelaxLowering, node: fx.Node) -> RVal:
    """A linear over the last logical dimension on the wide dense kernel."""
    lin = lb.linear_rows(lw, node, check=False)
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    rq = lb.requant_of(node)
    x_dtype = lw.env[node.args[0]].dtype
    n, k = w.shape
    m, k_p, n_p = lin.rows, round_up(lin.stored, wide_te.DEPTH), round_up(n, LANES)
    expr = pad_last(lw, lin.expr, (m, lin.stored), k_p)
    w_p = torch.zeros(n_p, k_p, dtype=torch.int16)
    w_p[:n, :k] = w.to(torch.int16)
    bits, dtype = _w_bits(w), rq.out_dtype
    gv = lw.prim(("qdense_wide", m, n_p, k_p, x_dtype, bits, dtype), lambda: k16.qdense_func(m, n_p, k_p, x_dtype, bits, dtype),
                 lambda f: k16.schedule_qdense(f, target_tiles(lw.tvm_target)))
    x_zp = int(node.kwargs["x_zp"])
    packed = wide_te.pack_wide_weight(w_p, wide_te.parts_of(x_dtype, bits), LANES)
    args = [expr, relax.const(packed), *lb.channel_vectors(bias_eff(w, x_zp, bias), mult, shift, n_p, "int64"), relax.const(rq.qp(x_zp, x_dtype))]
    return lb.linear_result(lw, lw.call(gv, args, (m, n_p), dtype), lin, n, n_p, dtype)


__all__ = ["is_wide", "lower_wide_conv", "lower_wide_linear"]
