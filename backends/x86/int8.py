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
from lcpaq.backends.x86.tiles import VnniTiles, target_tiles
from lcpaq.backends.x86.vnni import DEPTH, LANES, VNNI_BLOCKING, VNNI_INTRIN, Kernel, build, pack_weight, to_tvm


def qdense_func(m: int, n: int, k: int, out_dtype: str = "uint8", narrow: bool = False) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X u8 [m,k], W packed, bias, multiplier, shift, qp, Y [m,n])``; n % 16 == k % 4 == 0
    (``narrow``: int32 epilogue)."""
    return gemm_te.qdense_func(m, n, k, VNNI_BLOCKING, out_dtype, narrow)


def schedule_qdense(func: tvm.tirx.PrimFunc, tiles: VnniTiles | None = None) -> s_tir.Schedule:
    """Untuned VNNI schedule of :func:`qdense_func`: tensorized core, ``rows x output blocks``
    accumulators a tile (``tiles.int8_dense``, this host's row by default; unrolled), epilogue
    fused per tile. On znver5, 8 x 2 against the former 4 x 1 rolled tile: 256x384x384 0.237 ->
    0.067 ms, 256x1536x384 0.48 -> 0.27 ms (every variant: ``docs/x86_tiles.md``)."""
    rows, blocks = (tiles or target_tiles(None)).int8_dense
    return gemm_schedule.schedule_qdense(func, VNNI_BLOCKING, VNNI_INTRIN, rows, blocks, unroll=True)


def qconv2d_func(
    shape: tuple[int, int, int, int], out_channels: int, kernel: int | tuple[int, int], stride: int, padding: int,
    out_dtype: str = "uint8", narrow: bool = False,
) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X u8 NHWC, W [O/16, KH, KW, C/4, 16, 4], bias, multiplier, shift, qp, Y NHWC)``
    (:func:`lcpaq.backends.common.gemm_te.qconv2d_func` with the VNNI blocking)."""
    return gemm_te.qconv2d_func(shape, out_channels, kernel, stride, padding, VNNI_BLOCKING, out_dtype, narrow)


def schedule_qconv2d(func: tvm.tirx.PrimFunc, width: int, tiles: VnniTiles | None = None) -> s_tir.Schedule:
    """Untuned VNNI schedule of :func:`qconv2d_func` (output ``width`` columns): ``(n, oh)
    parallel, ow/tile, o/blocks, kh, kw, c/4, tile of ow, blocks, [16 x 4 -> vpdpbusd]`` unrolled;
    padding computed per output row, epilogue fused. The tile is ``tiles.int8_conv`` (this host's
    row by default), its columns the largest divisor of ``width`` up to the row's. On znver5, 7 x
    2 against the former 7 x 1 rolled tile: ResNet-18's 64->64 at 56x56 0.354 -> 0.131 ms,
    512->512 at 7x7 0.349 -> 0.215 ms."""
    cols, blocks = (tiles or target_tiles(None)).int8_conv
    return gemm_schedule.schedule_qconv2d(func, VNNI_BLOCKING, VNNI_INTRIN, gemm_schedule.col_tile(width, cols), blocks, unroll=True)


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
    b, h, w_, _ = x_nhwc.shape
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    kernel = build(schedule_qconv2d(func, ow).mod)
    out = to_tvm(np.zeros((b, oh, ow, w_p.shape[0]), np.uint8))
    params = channel_params(bias_eff(w_q, x_zp, bias), multiplier, shift, o, w_p.shape[0])
    kernel(to_tvm(x_nhwc), to_tvm(pack_conv_weight(w_p)), *map(to_tvm, params), to_tvm(qp), out)
    return torch.from_numpy(out.numpy())[..., :o].permute(0, 3, 1, 2).contiguous()


__all__ = ["Kernel", "Requant", "qconv2d", "qconv2d_func", "qdense", "qdense_func", "schedule_qconv2d", "schedule_qdense"]
