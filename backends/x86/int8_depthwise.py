"""Quantized int8 depthwise conv2d built with TVM for AVX-512, requantization fused.

Semantics are exactly those of :func:`lcpaq.backends.common.integer_ref.conv2d` with ``groups == C``
(weights ``[C, 1, KH, KW]``) and the results are bit-exact against it: u8 activations with zero
point ``x_zp``, s8 weights in [-127, 127], int32 bias, int32 accumulation, per-channel dyadic
requantization ``(acc * M + 2^(shift-1)) >> shift`` (round half up, int64), ``+ out_zp``, clamp
to [qmin, qmax] (the epilogue is :func:`lcpaq.backends.x86.int8.requant_compute`).

A depthwise conv has no reduction over channels, so there is nothing for ``vpdpbusd`` to sum:
each output is ``KH * KW`` products of one channel. The kernel keeps channels innermost (NHWC
activations, ``[KH, KW, C]`` weights) and computes 16 channels per AVX-512 vector in int32.
As in :mod:`lcpaq.backends.x86.int8` the zero point is folded into the bias on the host
(``bias_eff[c] = bias[c] - x_zp * sum(w[c])``) and the padding uses code ``qp[0] = x_zp``, so
the fold is exact at the borders too. Channel counts that are not multiples of 16 are
zero-padded on the host (zero weights, bias and multiplier) and the result is sliced.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import tvm
from tvm import s_tir, te

from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.x86.int8 import Requant, _bias_eff, _channel_params, _pad_dim, pad_nhwc, requant_compute
from lcpaq.backends.x86.vnni import LANES, Kernel, build, to_tvm

#: Output columns computed together at most (each loaded weight vector is reused across them).
MAX_COL_TILE = 8


def qdepthwise_func(
    shape_nhwc: tuple[int, int, int, int], kernel: int, stride: int, padding: int, out_dtype: str = "uint8"
) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X u8 NHWC, W int8 [KH, KW, C], bias, multiplier, shift, qp, Y NHWC out_dtype)``.

    ``shape_nhwc`` is the input shape, C % 16 == 0; square ``kernel``, symmetric ``stride`` and
    ``padding``. Computes ``acc[n, i, j, c] = sum_{kh, kw} int32(Xpad[n, i*s + kh, j*s + kw, c]) *
    int32(W[kh, kw, c])`` where padding is code ``qp[0]``; the input zero point is *not* subtracted
    (fold it into the bias: ``bias - x_zp * sum(w[c])``), then the requantization epilogue."""
    b, h, w_, c = shape_nhwc
    if c % LANES:
        raise ValueError(f"depthwise kernel needs C % {LANES} == 0 (pad channels on the host), got C={c}")
    if kernel < 1 or stride < 1 or padding < 0:
        raise ValueError(f"bad depthwise geometry: kernel={kernel}, stride={stride}, padding={padding}")
    oh, ow = conv_out_size(h, kernel, stride, padding), conv_out_size(w_, kernel, stride, padding)
    x = te.placeholder(shape_nhwc, "uint8", name="X")
    wt = te.placeholder((kernel, kernel, c), "int8", name="W")
    qp = te.placeholder((4,), "int32", name="qp")
    xp = pad_nhwc(x, padding, qp[0].astype("uint8"))
    rh = te.reduce_axis((0, kernel), name="rh")
    rw = te.reduce_axis((0, kernel), name="rw")
    acc = te.compute(
        (b, oh, ow, c),
        lambda n, i, j, ch: te.sum(
            xp[n, i * stride + rh, j * stride + rw, ch].astype("int32") * wt[rh, rw, ch].astype("int32"), axis=[rh, rw]
        ),
        name="dwconv",
    )
    bias, mult, shift, qp, y = requant_compute(acc, 3, out_dtype, qp)
    return te.create_prim_func([x, wt, bias, mult, shift, qp, y])


def col_tile(width: int, most: int = MAX_COL_TILE) -> int:
    """The largest divisor of ``width`` up to ``most``: output columns sharing each weight vector."""
    return max(d for d in range(1, most + 1) if width % d == 0)


def schedule_qdepthwise(func: tvm.tirx.PrimFunc, tile: int | None = None) -> s_tir.Schedule:
    """Hand schedule of :func:`qdepthwise_func` for AVX-512: ``(n, oh) parallel, ow / tile, c / 16,
    kh, kw (unrolled), tile columns (unrolled), 16 channels vectorized (int32 lanes)``; the
    accumulator tile lives per ``(row, column tile, channel block)``, the requantization epilogue
    is fused there and vectorized. Padding is inlined into the loads (a branch per row and tap, no
    padded copy of the input: on the MobileNetV2 layer of ``__main__`` a separate padding stage
    cost three times the convolution). ``tile`` must divide OW (default :func:`col_tile`)."""
    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("pad"))
    block = sch.get_sblock("dwconv")
    n, oh, ow, c, rh, rw = sch.get_loops(block)
    width = int(sch.get(ow).extent)
    tile = col_tile(width) if tile is None else tile
    if width % tile:
        raise ValueError(f"column tile {tile} does not divide the output width {width}")
    owo, owi = sch.split(ow, [None, tile])
    co, ci = sch.split(c, [None, LANES])
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


@functools.lru_cache(maxsize=32)
def build_qdepthwise(shape_nhwc: tuple[int, int, int, int], kernel: int, stride: int, padding: int, out_dtype: str = "uint8") -> Kernel:
    """The compiled, hand-scheduled kernel of :func:`qdepthwise_func` (cached per shape)."""
    return build(schedule_qdepthwise(qdepthwise_func(shape_nhwc, kernel, stride, padding, out_dtype)).mod)


def pack_depthwise_weight(w_q: torch.Tensor) -> np.ndarray:
    """``[C, 1, KH, KW]`` int8 codes to the kernel's ``[KH, KW, C]`` layout."""
    if w_q.dim() != 4 or w_q.shape[1] != 1:
        raise ValueError(f"depthwise weights are [C, 1, KH, KW], got {tuple(w_q.shape)}")
    return np.ascontiguousarray(w_q.to(torch.int8)[:, 0].permute(1, 2, 0).numpy())


def qdepthwise(
    x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None,
    multiplier: Any, shift: Any, out_zp: int, qmin: int = 0, qmax: int = 255, stride: int = 1, padding: int = 0,
    out_dtype: str = "uint8",
) -> torch.Tensor:
    """Same contract as :func:`integer_ref.conv2d` with ``groups = C`` (NCHW in and out, weights
    ``[C, 1, KH, KW]``), computed by the hand-scheduled TVM kernel. With ``out_dtype="int32"`` the
    result is the int32 tensor ``integer_ref.requantize`` returns (no uint8 cast)."""
    c = x_q.shape[1]
    if x_q.dim() != 4 or w_q.dim() != 4 or w_q.shape[:2] != (c, 1) or w_q.shape[2] != w_q.shape[3]:
        raise ValueError(f"qdepthwise needs x [B, C, H, W] and square w [C, 1, K, K], got x {tuple(x_q.shape)}, w {tuple(w_q.shape)}")
    if x_q.is_floating_point() or w_q.is_floating_point():
        raise TypeError("integer kernels take integer codes, not float tensors")
    qp = Requant(out_zp, qmin, qmax, out_dtype).qp(x_zp)
    kh = w_q.shape[2]
    x_nhwc = _pad_dim(x_q.to(torch.uint8).permute(0, 2, 3, 1).contiguous(), 3, LANES)
    w_p = _pad_dim(w_q.to(torch.int8), 0, LANES)
    b, h, w_, c_pad = x_nhwc.shape
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kh, stride, padding)
    kernel = build_qdepthwise((b, h, w_, c_pad), kh, stride, padding, out_dtype)
    out = to_tvm(np.zeros((b, oh, ow, c_pad), out_dtype))
    params = _channel_params(_bias_eff(w_q, x_zp, bias), multiplier, shift, c, c_pad)
    kernel(to_tvm(x_nhwc), to_tvm(pack_depthwise_weight(w_p)), *params, to_tvm(qp), out)
    return torch.from_numpy(out.numpy())[..., :c].permute(0, 3, 1, 2).contiguous()


def _bench(shape_nchw: tuple[int, int, int, int] = (1, 96, 112, 112), kernel: int = 3, stride: int = 2, padding: int = 1) -> None:
    """Print the kernel's time against torch's fp32 depthwise conv (NCHW and channels_last); with
    ``TVM_NUM_THREADS`` set, torch runs on as many threads."""
    import os
    import time

    if os.environ.get("TVM_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["TVM_NUM_THREADS"]))

    gen = torch.Generator().manual_seed(0)
    b, c, h, w_ = shape_nchw
    oh, ow = conv_out_size(h, kernel, stride, padding), conv_out_size(w_, kernel, stride, padding)
    k = build_qdepthwise((b, h, w_, c), kernel, stride, padding)
    w_q = torch.randint(-127, 128, (c, 1, kernel, kernel), generator=gen, dtype=torch.int8)
    args = [
        to_tvm(torch.randint(0, 256, (b, h, w_, c), generator=gen, dtype=torch.uint8)), to_tvm(pack_depthwise_weight(w_q)),
        *_channel_params(torch.zeros(c, dtype=torch.int64), 2**30, 38, c, c), to_tvm(Requant(3).qp(5)),
        to_tvm(np.zeros((b, oh, ow, c), np.uint8)),
    ]
    k(*args)
    tvm_ms = k.time_ms(*args, repeat=20, number=20)
    x, wf = torch.randn(shape_nchw, generator=gen), torch.randn(c, 1, kernel, kernel, generator=gen)

    def torch_ms(xx: torch.Tensor) -> float:
        with torch.no_grad():
            for _ in range(5):
                torch.nn.functional.conv2d(xx, wf, None, stride, padding, groups=c)
            runs = []
            for _ in range(20):
                t0 = time.perf_counter()
                for _ in range(20):
                    torch.nn.functional.conv2d(xx, wf, None, stride, padding, groups=c)
                runs.append((time.perf_counter() - t0) / 20 * 1e3)
        return float(np.median(runs))

    nchw, nhwc = torch_ms(x), torch_ms(x.contiguous(memory_format=torch.channels_last))
    print(f"depthwise {shape_nchw} k{kernel} s{stride} p{padding}, {torch.get_num_threads()} torch threads")
    print(f"  TVM int8 (hand schedule, requant fused): {tvm_ms:.4f} ms")
    print(f"  torch fp32 NCHW:          {nchw:.4f} ms  ({nchw / tvm_ms:.2f}x)")
    print(f"  torch fp32 channels_last: {nhwc:.4f} ms  ({nhwc / tvm_ms:.2f}x)")


__all__ = ["build_qdepthwise", "pack_depthwise_weight", "qdepthwise", "qdepthwise_func", "schedule_qdepthwise"]


if __name__ == "__main__":
    _bench()
