"""The CUDA family's integer GEMM kernels as tensor expressions: a dense layer, and a conv as an
implicit GEMM over an im2col view of its NHWC input, both with the requantization epilogue of
:func:`lcpaq.backends.common.gemm_te.requant_compute`.

Shapes are what the tensor cores want: rows (``M``) padded to the block tile, output channels
(``N``) and the reduction (``K``) to multiples of 16; weights are plain ``[N, K]`` int8 rows, a
conv's reduction ordered ``(kh, kw, c)`` so that the im2col view reads contiguous channels.
Activation codes are int8 (WMMA multiplies s8 x s8). Semantics are those of
:mod:`lcpaq.backends.common.integer_ref`: int32 accumulation, the input zero point folded into
the bias on the host (so spatial padding reads code ``x_zp``), per-channel dyadic requantization.
Padded rows compute don't-care values the lowering slices away; padded reduction entries meet
zero weights.
"""
from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import te
from tvm import tirx as tir

from lcpaq.backends.common.gemm_te import requant_compute
from lcpaq.backends.common.op_args import conv_out_size


def _gemm(a: te.Tensor, n: int, name: str = "gemm") -> tuple[te.Tensor, te.Tensor]:
    """``C[i, j] = sum_k int32(A[i, k]) * int32(W[j, k])``; returns (W, C)."""
    m, k = (int(d) for d in a.shape)
    w = te.placeholder((n, k), "int8", name="W")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((m, n), lambda i, j: te.sum(a[i, r].astype("int32") * w[j, r].astype("int32"), axis=r), name=name)
    return w, c


def qdense_func(m: int, n: int, k: int, out_dtype: str) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X [m, k] int8, W [n, k] int8, bias, multiplier, shift, qp, Y [m, n])``; blocks
    ``gemm`` and ``requant``."""
    x = te.placeholder((m, k), "int8", name="X")
    w, acc = _gemm(x, n)
    bias, mult, shift, qp, y = requant_compute(acc, 1, out_dtype)
    return te.create_prim_func([x, w, bias, mult, shift, qp, y])


def qconv2d_func(shape: tuple[int, int, int, int], n: int, kernel: tuple[int, int], stride: int, padding: int, rows: int,
                 k_pad: int, out_dtype: str) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X NHWC int8, W [n, k_pad] int8, bias, multiplier, shift, qp, Y [rows, n])``:
    blocks ``im2col`` (``rows x k_pad``, spatial padding code ``qp[0]``), ``gemm``, ``requant``.
    Row ``b * OH * OW + i * OW + j`` of Y is output pixel ``(b, i, j)``; rows past the last pixel
    are padding."""
    b, h, w_, c = shape
    kh, kw = kernel
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    pixels, taps = b * oh * ow, kh * kw * c
    x = te.placeholder(shape, "int8", name="X")
    qp = te.placeholder((4,), "int32", name="qp")

    def patch(row: tir.PrimExpr, col: tir.PrimExpr) -> tir.PrimExpr:
        img, pix = row // (oh * ow), row % (oh * ow)
        y = pix // ow * stride + col // (kw * c) - padding
        xx = pix % ow * stride + col // c % kw - padding
        inside = tir.all(y >= 0, y < h, xx >= 0, xx < w_)
        value = x[tir.min(img, b - 1), tir.max(tir.min(y, h - 1), 0), tir.max(tir.min(xx, w_ - 1), 0), col % c]
        code = tir.if_then_else(inside, value, qp[0].astype("int8"))
        return tir.if_then_else(tir.all(row < pixels, col < taps), code, tir.const(0, "int8"))

    a = te.compute((rows, k_pad), patch, name="im2col")
    w, acc = _gemm(a, n)
    bias, mult, shift, qp, y = requant_compute(acc, 1, out_dtype, qp)
    return te.create_prim_func([x, w, bias, mult, shift, qp, y])


def pack_conv_weight(w_q: torch.Tensor, k_pad: int) -> np.ndarray:
    """OIHW int8 codes to ``[O, k_pad]`` rows ordered ``(kh, kw, c)`` (the im2col order), the
    reduction zero-padded to ``k_pad``."""
    o = w_q.shape[0]
    rows = w_q.to(torch.int8).permute(0, 2, 3, 1).reshape(o, -1)
    out = torch.zeros(o, k_pad, dtype=torch.int8)
    out[:, : rows.shape[1]] = rows
    return np.ascontiguousarray(out.numpy())
