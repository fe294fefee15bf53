"""Quantized int8 depthwise conv2d for any CPU with vector int32 arithmetic, requantization fused.

Semantics are exactly those of :func:`lcpaq.backends.common.integer_ref.conv2d` with ``groups == C``
(weights ``[C, 1, KH, KW]``) and the results are bit-exact against it: u8 activations with zero
point ``x_zp``, s8 weights in [-127, 127], int32 bias, int32 accumulation, per-channel dyadic
requantization ``(acc * M + 2^(shift-1)) >> shift`` (round half up, int64), ``+ out_zp``, clamp
to [qmin, qmax] (the epilogue is :func:`lcpaq.backends.common.gemm_te.requant_compute`).

A depthwise conv has no reduction over channels, so there is nothing for ``vpdpbusd`` to sum:
each output is ``KH * KW`` products of one channel. The kernel keeps channels innermost (NHWC
activations, ``[KH, KW, C]`` weights) and computes ``lanes`` channels per vector in int32.
As in :mod:`lcpaq.backends.common.gemm_te` the zero point is folded into the bias on the host
(``bias_eff[c] = bias[c] - x_zp * sum(w[c])``) and the padding uses code ``qp[0] = x_zp``, so
the fold is exact at the borders too. Channel counts that are not multiples of the vector width
are zero-padded on the host (zero weights, bias and multiplier) and the result is sliced.
``act_dtype`` is the family's activation code type (uint8 on x86, int8 on Arm); ``lanes`` the
channels computed per vector (16 fills an AVX-512 register of int32; on NEON, LLVM splits it).
"""
from __future__ import annotations


import numpy as np
import torch
import tvm
from tvm import s_tir, te

from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.gemm_schedule import col_tile
from lcpaq.backends.common.gemm_te import pad_nhwc, requant_compute

#: Channels per vector by default (an AVX-512 register of int32).
LANES = 16

#: Output columns computed together at most (each loaded weight vector is reused across them).
MAX_COL_TILE = 8


def qdepthwise_func(
    shape_nhwc: tuple[int, int, int, int], kernel: int, stride: int, padding: int, out_dtype: str = "uint8",
    act_dtype: str = "uint8", lanes: int = LANES, narrow: bool = False,
) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X NHWC act_dtype codes, W int8 [KH, KW, C], bias, multiplier, shift, qp, Y NHWC out_dtype)``.

    ``shape_nhwc`` is the input shape, C % lanes == 0; square ``kernel``, symmetric ``stride`` and
    ``padding``. Computes ``acc[n, i, j, c] = sum_{kh, kw} int32(Xpad[n, i*s + kh, j*s + kw, c]) *
    int32(W[kh, kw, c])`` where padding is code ``qp[0]``; the input zero point is *not* subtracted
    (fold it into the bias: ``bias - x_zp * sum(w[c])``), then the requantization epilogue (in
    int32 with ``narrow``)."""
    b, h, w_, c = shape_nhwc
    if c % lanes:
        raise ValueError(f"depthwise kernel needs C % {lanes} == 0 (pad channels on the host), got C={c}")
    if kernel < 1 or stride < 1 or padding < 0:
        raise ValueError(f"bad depthwise geometry: kernel={kernel}, stride={stride}, padding={padding}")
    oh, ow = conv_out_size(h, kernel, stride, padding), conv_out_size(w_, kernel, stride, padding)
    x = te.placeholder(shape_nhwc, act_dtype, name="X")
    wt = te.placeholder((kernel, kernel, c), "int8", name="W")
    qp = te.placeholder((4,), "int32", name="qp")
    xp = pad_nhwc(x, padding, qp[0].astype(act_dtype))
    rh = te.reduce_axis((0, kernel), name="rh")
    rw = te.reduce_axis((0, kernel), name="rw")
    acc = te.compute(
        (b, oh, ow, c),
        lambda n, i, j, ch: te.sum(
            xp[n, i * stride + rh, j * stride + rw, ch].astype("int32") * wt[rh, rw, ch].astype("int32"), axis=[rh, rw]
        ),
        name="dwconv",
    )
    bias, mult, shift, qp, y = requant_compute(acc, 3, out_dtype, qp, narrow=narrow)
    return te.create_prim_func([x, wt, bias, mult, shift, qp, y])


def schedule_qdepthwise(func: tvm.tirx.PrimFunc, tile: int | None = None, lanes: int = LANES) -> s_tir.Schedule:
    """Hand schedule of :func:`qdepthwise_func`: ``(n, oh) parallel, ow / tile, c / lanes,
    kh, kw (unrolled), tile columns (unrolled), ``lanes`` channels vectorized (int32 lanes)``; the
    accumulator tile lives per ``(row, column tile, channel block)``, the requantization epilogue
    is fused there and vectorized. Padding is inlined into the loads (a branch per row and tap, no
    padded copy of the input: on the MobileNetV2 layer of ``__main__`` a separate padding stage
    cost three times the convolution). ``tile`` must divide OW (default :func:`col_tile`)."""
    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("pad"))
    block = sch.get_sblock("dwconv")
    n, oh, ow, c, rh, rw = sch.get_loops(block)
    width = int(sch.get(ow).extent)
    tile = col_tile(width, MAX_COL_TILE) if tile is None else tile
    if width % tile:
        raise ValueError(f"column tile {tile} does not divide the output width {width}")
    owo, owi = sch.split(ow, [None, tile])
    co, ci = sch.split(c, [None, lanes])
    sch.reorder(n, oh, owo, co, rh, rw, owi, ci)
    sch.parallel(sch.fuse(n, oh))
    epilogue = sch.get_sblock("requant")
    sch.reverse_compute_at(epilogue, co)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    sch.vectorize(ci)
    sch.unroll(owi)
    sch.unroll(rw)
    sch.decompose_reduction(block, rh)
    return sch


def pack_depthwise_weight(w_q: torch.Tensor) -> np.ndarray:
    """``[C, 1, KH, KW]`` int8 codes to the kernel's ``[KH, KW, C]`` layout."""
    if w_q.dim() != 4 or w_q.shape[1] != 1:
        raise ValueError(f"depthwise weights are [C, 1, KH, KW], got {tuple(w_q.shape)}")
    return np.ascontiguousarray(w_q.to(torch.int8)[:, 0].permute(1, 2, 0).numpy())


__all__ = ["pack_depthwise_weight", "qdepthwise_func", "schedule_qdepthwise"]
