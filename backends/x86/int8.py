"""Quantized int8 dense and conv2d built with TVM on the VNNI kernel, requantization fused.

Semantics are exactly those of :mod:`lcpaq.backends.common.integer_ref` (``dense`` and ``conv2d``), and
the results are bit-exact against it: u8 activations with zero point ``x_zp``, s8 weights in
[-127, 127], int32 bias, int32 accumulation, per-output-channel dyadic requantization
``(acc * M + 2^(shift-1)) >> shift`` (round half up, int64), ``+ out_zp``, clamp to [qmin, qmax].

The zero point is folded into the bias on the host: ``sum_k (x - zp) w = sum_k x w - zp sum_k w``,
so the kernel multiplies raw u8 codes (what ``vpdpbusd`` takes) and adds
``bias_eff[n] = bias[n] - zp * sum_k w[n, k]``. Conv2d runs directly on NHWC activations with
weights blocked as ``[O/16, KH, KW, C/4, 16, 4]``: its 16 output channels x 4 input channels core
is the same ``vpdpbusd`` as dense. Shapes that are not multiples of 16 (outputs) or 4 (inputs)
are zero-padded on the host (zero weights add nothing to either sum) and the result is sliced.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import tvm
from tvm import s_tir

from lcpaq.backends.common import gemm_schedule, gemm_te
from lcpaq.backends.common.gemm_te import Requant, bias_eff, channel_params, pad_dim
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.x86.vnni import DEPTH, LANES, VNNI_BLOCKING, VNNI_INTRIN, Kernel, build, pack_weight, to_tvm


def qdense_func(m: int, n: int, k: int, out_dtype: str = "uint8", narrow: bool = False) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X u8 [m,k], W packed, bias, multiplier, shift, qp, Y [m,n])``; n % 16 == k % 4 == 0
    (``narrow``: int32 epilogue)."""
    return gemm_te.qdense_func(m, n, k, VNNI_BLOCKING, out_dtype, narrow)


#: Output blocks of 16 lanes a VNNI dense tile computes together, and most rows: 8 x 2 = 16
#: independent accumulators (of 32 zmm registers), unrolled. Measured here (AMD EPYC znver5, 2
#: threads, cold weights) against the former 4 x 1 rolled tile: 256x384x384 0.237 -> 0.067 ms,
#: 256x1536x384 0.48 -> 0.27 ms, 256x384x1536 0.36 -> 0.21 ms, 32x384x384 0.019 -> 0.015 ms.
#: Every variant on every built-in shape: ``docs/x86_tiles.md`` (``python -m lcpaq.tools.bench_tiles``).
DENSE_COL_BLOCKS = 2
DENSE_MAX_ROWS = 8


def schedule_qdense(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    """Untuned VNNI schedule of :func:`qdense_func`: tensorized core, up to
    ``DENSE_MAX_ROWS x DENSE_COL_BLOCKS`` accumulators a tile (unrolled), epilogue fused per tile."""
    return gemm_schedule.schedule_qdense(func, VNNI_BLOCKING, VNNI_INTRIN, DENSE_MAX_ROWS, DENSE_COL_BLOCKS, unroll=True)


def qconv2d_func(
    shape: tuple[int, int, int, int], out_channels: int, kernel: int | tuple[int, int], stride: int, padding: int,
    out_dtype: str = "uint8", narrow: bool = False,
) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X u8 NHWC, W [O/16, KH, KW, C/4, 16, 4], bias, multiplier, shift, qp, Y NHWC)``
    (:func:`lcpaq.backends.common.gemm_te.qconv2d_func` with the VNNI blocking)."""
    return gemm_te.qconv2d_func(shape, out_channels, kernel, stride, padding, VNNI_BLOCKING, out_dtype, narrow)


#: Most output columns a VNNI conv tile computes together, and output-channel blocks of 16:
#: 7 x 2 = 14 independent accumulators, unrolled. Measured here (AMD EPYC znver5, 2 threads,
#: cold weights) against the former 7 x 1 rolled tile, ResNet-18's 3x3 convs: 64->64 at 56x56
#: 0.354 -> 0.131 ms, 128->128 at 28x28 0.186 -> 0.130, 256->256 at 14x14 0.216 -> 0.140,
#: 512->512 at 7x7 0.349 -> 0.215, 128->256 stride 2 0.115 -> 0.077. Other tiles come close
#: only where their column count divides the width; ``docs/x86_tiles.md`` has every variant.
MAX_COL_TILE = 7
CONV_COL_BLOCKS = 2


def vnni_col_tile(width: int) -> int:
    """Output columns per VNNI conv tile: the largest divisor of ``width`` up to :data:`MAX_COL_TILE`."""
    return gemm_schedule.col_tile(width, MAX_COL_TILE)


def schedule_qconv2d(func: tvm.tirx.PrimFunc, col_tile: int = 4) -> s_tir.Schedule:
    """Untuned VNNI schedule of :func:`qconv2d_func`: ``(n, oh) parallel, ow/tile, o/32, kh, kw,
    c/4, tile of ow, 2 blocks, [16 x 4 -> vpdpbusd]`` unrolled; padding computed per output row,
    epilogue fused."""
    return gemm_schedule.schedule_qconv2d(func, VNNI_BLOCKING, VNNI_INTRIN, col_tile, CONV_COL_BLOCKS, unroll=True)


def qdense(
    x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None,
    multiplier: Any, shift: Any, out_zp: int, qmin: int = 0, qmax: int = 255, narrow: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`integer_ref.dense`, computed by an untuned VNNI TVM kernel
    (``narrow``: its int32 epilogue, for constants that pass ``integer_ref.narrow_requant``)."""
    m, k = x_q.shape
    n = w_q.shape[0]
    x_p = pad_dim(x_q.to(torch.uint8), 1, DEPTH)
    w_p = pad_dim(pad_dim(w_q.to(torch.int8), 1, DEPTH), 0, LANES)
    qp = Requant(out_zp, qmin, qmax).qp(x_zp)
    kernel = build(schedule_qdense(qdense_func(m, w_p.shape[0], w_p.shape[1], narrow=narrow)).mod)
    out = to_tvm(np.zeros((m, w_p.shape[0]), np.uint8))
    params = channel_params(bias_eff(w_q, x_zp, bias), multiplier, shift, n, w_p.shape[0])
    kernel(to_tvm(x_p), to_tvm(pack_weight(w_p)), *map(to_tvm, params), to_tvm(qp), out)
    return torch.from_numpy(out.numpy())[:, :n].contiguous()


def pack_conv_weight(w_q: torch.Tensor) -> np.ndarray:
    """OIHW int8 (O % 16 == C % 4 == 0) to ``[O/16, KH, KW, C/4, 16, 4]``."""
    return gemm_te.pack_conv_weight(w_q, VNNI_BLOCKING)


def qconv2d(
    x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None,
    multiplier: Any, shift: Any, out_zp: int, qmin: int = 0, qmax: int = 255, stride: int = 1, padding: int = 0,
    narrow: bool = False,
) -> torch.Tensor:
    """Same contract as :func:`integer_ref.conv2d` (NCHW in and out), by an untuned VNNI TVM kernel
    (``narrow`` as :func:`qdense`)."""
    o, c, kh, kw = w_q.shape
    if x_q.shape[1] != c:
        raise ValueError(f"qconv2d needs matching channels, got x {tuple(x_q.shape)}, w {tuple(w_q.shape)}")
    x_nhwc = pad_dim(x_q.to(torch.uint8).permute(0, 2, 3, 1).contiguous(), 3, DEPTH)
    w_p = pad_dim(pad_dim(w_q.to(torch.int8), 1, DEPTH), 0, LANES)
    qp = Requant(out_zp, qmin, qmax).qp(x_zp)
    func = qconv2d_func(tuple(x_nhwc.shape), w_p.shape[0], (kh, kw), stride, padding, narrow=narrow)
    kernel = build(schedule_qconv2d(func).mod)
    b, h, w_, _ = x_nhwc.shape
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    out = to_tvm(np.zeros((b, oh, ow, w_p.shape[0]), np.uint8))
    params = channel_params(bias_eff(w_q, x_zp, bias), multiplier, shift, o, w_p.shape[0])
    kernel(to_tvm(x_nhwc), to_tvm(pack_conv_weight(w_p)), *map(to_tvm, params), to_tvm(qp), out)
    return torch.from_numpy(out.numpy())[..., :o].permute(0, 3, 1, 2).contiguous()


__all__ = ["Kernel", "Requant", "qconv2d", "qconv2d_func", "qdense", "qdense_func", "schedule_qconv2d", "schedule_qdense"]
