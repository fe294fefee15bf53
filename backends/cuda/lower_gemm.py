"""CUDA lowerings of the integer graph's conv and linear onto the tensor-core GEMM kernels
(:mod:`lcpaq.backends.cuda.gemm`, scheduled by :mod:`lcpaq.backends.cuda.gemm_schedule`).

A dense conv is one implicit-GEMM kernel: ``M = batch x OH x OW`` output pixels, ``N`` output
channels, ``K = KH x KW x C``; its rows come back NHWC by a reshape. A linear's leading
dimensions are its rows. Rows are padded to the block tile (the padding rows are sliced off),
channels and reduction to 16 with zero weights; the input zero point is folded into the bias on
the host. Square depthwise convs run on the shared depthwise compute, scheduled by the pipeline.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common import gemm_te
from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common import lower_blocked as lb
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import RelaxLowering, RVal, nhwc, pad_last
from lcpaq.backends.cuda import gemm, gemm_schedule
from lcpaq.backends.cuda.lowerings import LOWERINGS

#: Channels a depthwise thread reads together (int8 x 4: one 32-bit load).
DEPTHWISE_LANES = 4
#: Channels activations are padded to between kernels (the backend's ``in_multiple``).
CHANNEL_MULTIPLE = 4


def _gemm_args(lw: RelaxLowering, node: fx.Node, w_rows: np.ndarray, w: torch.Tensor, n_p: int) -> list[relax.Expr]:
    bias, mult, shift = (lw.tensor(a) for a in node.args[2:5])
    x_zp = int(node.kwargs["x_zp"])
    return [relax.const(w_rows), *lb.channel_vectors(gemm_te.bias_eff(w, x_zp, bias), mult, shift, n_p),
            relax.const(lb.requant_of(node).qp(x_zp, "int8"))]


def _weight_rows(w: torch.Tensor, n_p: int, k_p: int) -> np.ndarray:
    """``[n_p, k_p]`` int8 rows of a 2-d weight, zero-padded."""
    out = torch.zeros(n_p, k_p, dtype=torch.int8)
    out[: w.shape[0], : w.shape[1]] = w.to(torch.int8)
    return np.ascontiguousarray(out.numpy())


def lower_conv(lw: RelaxLowering, node: fx.Node, x: RVal) -> RVal:
    """A dense (groups = 1) conv of ``x`` (int8 codes) as one implicit-GEMM kernel."""
    w = lw.tensor(node.args[1])
    stride, pad, dtype = int(node.kwargs["stride"]), int(node.kwargs["padding"]), lb.requant_of(node).out_dtype
    o, c, kh, kw = w.shape
    x = nhwc(lw, x, lw.backend.conventions.in_multiple)
    b, _, h, wd = x.shape
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(wd, kw, stride, pad)
    rows = b * oh * ow
    m_p, n_p, k_p = gemm_schedule.padded_gemm(rows, o, kh * kw * x.cp)
    w_p = torch.zeros(o, x.cp, kh, kw, dtype=torch.int8)
    w_p[:, :c] = w.to(torch.int8)
    w_rows = np.zeros((n_p, k_p), dtype=np.int8)
    w_rows[:o] = gemm.pack_conv_weight(w_p, k_p)
    gv = lw.prim(("qconv2d", (b, h, wd, x.cp), n_p, (kh, kw), stride, pad, m_p, k_p, dtype),
                 lambda: gemm.qconv2d_func((b, h, wd, x.cp), n_p, (kh, kw), stride, pad, m_p, k_p, dtype),
                 lambda f: lw.backend.schedule_gemm(f, lw.tvm_target))
    y = lw.call(gv, [x.expr, *_gemm_args(lw, node, w_rows, w, n_p)], (m_p, n_p), dtype)
    if m_p != rows:
        y = lw.bb.emit(relax.op.strided_slice(y, axes=[0], begin=[0], end=[rows]))
    y = lw.bb.emit(relax.op.reshape(y, (b, oh, ow, n_p)))
    return RVal(y, (b, o, oh, ow), dtype, n_p)


def lower_linear(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Linear over the last logical dimension (:func:`~lcpaq.backends.common.lower_blocked.linear_rows`)."""
    lin = lb.linear_rows(lw, node)
    rows, stored = lin.rows, lin.stored
    w = lw.tensor(node.args[1])
    dtype = lb.requant_of(node).out_dtype
    n, k = w.shape
    m_p, n_p, k_p = gemm_schedule.padded_gemm(rows, n, stored)
    expr = pad_last(lw, lin.expr, (rows, stored), k_p)  # padded features meet zero weights
    if m_p != rows:
        expr = lw.bb.emit(relax.op.nn.pad(expr, [0, m_p - rows, 0, 0]))
    gv = lw.prim(("qdense", m_p, n_p, k_p, dtype), lambda: gemm.qdense_func(m_p, n_p, k_p, dtype), lambda f: lw.backend.schedule_gemm(f, lw.tvm_target))
    y = lw.call(gv, [expr, *_gemm_args(lw, node, _weight_rows(w, n_p, k_p), w, n_p)], (m_p, n_p), dtype)
    if m_p != rows:
        y = lw.bb.emit(relax.op.strided_slice(y, axes=[0], begin=[0], end=[rows]))
    return lb.linear_result(lw, y, lin, n, n_p, dtype)


@LOWERINGS.register(iops.qconv2d)
def _qconv2d(lw: RelaxLowering, node: fx.Node) -> RVal:
    return lb.lower_qconv2d(lw, node, lower_conv, lambda lw_, n, x: lb.lower_depthwise_with(lw_, n, x, DEPTHWISE_LANES, None))


@LOWERINGS.register(iops.qlinear)
def _qlinear(lw: RelaxLowering, node: fx.Node) -> RVal:
    return lower_linear(lw, node)
