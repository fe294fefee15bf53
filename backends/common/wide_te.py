"""Wide (16-bit) integer GEMM kernels as TVM tensor expressions: int16 x int16 products summed
exactly in int64, for a CPU whose dot-product instruction multiplies pairs of int16 into int32
(x86 ``vpdpwssd``: 16 lanes x 2).

Semantics are those of :mod:`lcpaq.backends.common.integer_ref` for wide layers: the sum of
``(x - x_zp) * w`` plus an int64 bias, exact, then per-channel dyadic requantization. The kernel
multiplies raw codes (``x_zp`` folded into the bias on the host, as :mod:`gemm_te` does), and keeps
every int32 partial sum exact by bounding it:

* the reduction is cut into *chunks* of :func:`chunk_size` elements whose int32 sum cannot
  overflow (``chunk * max|x| * max|w| < 2^31``), each chunk's sum widened to int64 and added;
* when both sides are 16-bit (``max|x| * max|w|`` near 2^30, no room for a chunk), the weight is
  split into *parts* ``w = 256 * hi + lo`` (``hi`` in [-128, 127], ``lo`` in [0, 255]) summed
  separately and combined in int64 (``hi`` shifted by 8).

Activations are uint8 (a W16A8 layer) or int16 codes; weights are held as int16 blocked
``[parts, N/lanes, K/2, lanes, 2]`` (dense) or ``[parts, O/lanes, KH, KW, C/2, lanes, 2]`` (conv).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import tvm
from tvm import te

from lcpaq.backends.common.gemm_te import kernel_hw, requant_compute
from lcpaq.backends.common.op_args import conv_out_size

#: int16 codes per pair of the dot-product instruction (its reduction depth).
DEPTH = 2
_INT32_MAX = 2**31 - 1


def parts_of(act_dtype: str, w_bits: int) -> int:
    """Weight parts of a wide layer: 2 when 16-bit activations meet weights wider than 8 bits."""
    return 2 if act_dtype == "int16" and w_bits > 8 else 1


def chunk_limit(act_dtype: str, w_bits: int) -> int:
    """The most raw code products an int32 sum can hold without overflow."""
    x_max = 255 if act_dtype == "uint8" else 2**15
    w_max = 127 if w_bits <= 8 else 255 if parts_of(act_dtype, w_bits) == 2 else 2**15 - 1
    return _INT32_MAX // (x_max * w_max)


def chunk_size(reduction: int, act_dtype: str, w_bits: int) -> int:
    """Elements of the reduction summed in int32 before widening: the largest even divisor of
    ``reduction`` (even) whose int32 sum of raw code products cannot overflow."""
    if reduction % DEPTH:
        raise ValueError(f"a wide kernel's reduction must be even, got {reduction}")
    most = chunk_limit(act_dtype, w_bits)
    return max(d for d in range(DEPTH, min(most, reduction) + 1, DEPTH) if reduction % d == 0)


def split_parts(w_q: torch.Tensor, parts: int) -> torch.Tensor:
    """``[parts, *w_q.shape]`` int16: ``w_q`` itself, or its ``(hi, lo)`` with ``w = 256 hi + lo``."""
    w = w_q.to(torch.int64)
    if parts == 1:
        return w.to(torch.int16).unsqueeze(0)
    hi = torch.div(w, 256, rounding_mode="floor")
    return torch.stack([hi, w - 256 * hi]).to(torch.int16)


def _widened(x: te.Tensor) -> te.Tensor:
    if x.dtype == "int16":
        return x
    return te.compute(x.shape, lambda *i: x(*i).astype("int16"), name="widen")


def _combine(part: te.Tensor, parts: int, axes: list[Any], at: tuple[Any, ...]) -> Any:
    """int64 sum over ``axes`` of the parts (the first one shifted by 8 when there are two)."""
    p = axes[0]
    v = part[(p, *axes[1:], *at)].astype("int64")
    if parts == 2:
        v = v << (tvm.tirx.const(8, "int64") * (tvm.tirx.const(1, "int64") - p.astype("int64")))
    return te.sum(v, axis=axes)


def wide_dense_func(m: int, n: int, k: int, lanes: int, act_dtype: str, w_bits: int, out_dtype: str) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X [m, k] codes, W [parts, n/lanes, k/2, lanes, 2] int16, bias int64,
    multiplier, shift, qp, Y [m, n])``: blocks ``partial`` (int32 chunk sums, ``[parts, chunks,
    m, n]``), ``acc`` (int64), ``requant``, and ``widen`` for uint8 activations."""
    if n % lanes or k % DEPTH:
        raise ValueError(f"wide dense needs N % {lanes} == 0 and K % {DEPTH} == 0, got N={n}, K={k}")
    parts, chunk = parts_of(act_dtype, w_bits), chunk_size(k, act_dtype, w_bits)
    x = te.placeholder((m, k), act_dtype, name="X")
    xw = _widened(x)
    w = te.placeholder((parts, n // lanes, k // DEPTH, lanes, DEPTH), "int16", name="W")
    r = te.reduce_axis((0, chunk), name="r")
    part = te.compute(
        (parts, k // chunk, m, n),
        lambda p, c, i, j: te.sum(
            xw[i, c * chunk + r].astype("int32")
            * w[p, j // lanes, c * (chunk // DEPTH) + r // DEPTH, j % lanes, r % DEPTH].astype("int32"), axis=r),
        name="partial",
    )
    rp, rc = te.reduce_axis((0, parts), name="rp"), te.reduce_axis((0, k // chunk), name="rc")
    acc = te.compute((m, n), lambda i, j: _combine(part, parts, [rp, rc], (i, j)), name="acc")
    bias, mult, shift, qp, y = requant_compute(acc, 1, out_dtype, bias_dtype="int64")
    return te.create_prim_func([x, w, bias, mult, shift, qp, y])


def wide_conv2d_func(
    shape: tuple[int, int, int, int], out_channels: int, kernel: int | tuple[int, int], stride: int, padding: int,
    lanes: int, act_dtype: str, w_bits: int, out_dtype: str,
) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X NHWC codes, W [parts, O/lanes, KH, KW, C/2, lanes, 2] int16, bias int64,
    multiplier, shift, qp, Y NHWC)``: blocks ``pad`` (int16, code ``qp[0]``), ``partial`` (int32
    sums of chunks of channels, ``[parts, KH, KW, chunks, n, oh, ow, o]``; of the whole window,
    ``[parts, n, oh, ow, o]``, when it fits one chunk), ``acc``, ``requant``."""
    b, h, w_, c = shape
    kh, kw = kernel_hw(kernel)
    if c % DEPTH or out_channels % lanes:
        raise ValueError(f"wide conv2d needs C % {DEPTH} == 0 and O % {lanes} == 0, got C={c}, O={out_channels}")
    parts, chunk = parts_of(act_dtype, w_bits), chunk_size(c, act_dtype, w_bits)
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    x = te.placeholder(shape, act_dtype, name="X")
    wt = te.placeholder((parts, out_channels // lanes, kh, kw, c // DEPTH, lanes, DEPTH), "int16", name="W")
    qp = te.placeholder((4,), "int32", name="qp")
    xp = te.compute(
        (b, h + 2 * padding, w_ + 2 * padding, c),
        lambda nn, i, j, ch: tvm.tirx.if_then_else(
            tvm.tirx.all(i >= padding, i < h + padding, j >= padding, j < w_ + padding),
            x[nn, i - padding, j - padding, ch].astype("int16"), qp[0].astype("int16")),
        name="pad",
    )
    if kh * kw * c <= chunk_limit(act_dtype, w_bits):  # the whole window fits one int32 sum (a stem conv)
        rh, rw, r = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw"), te.reduce_axis((0, c), name="r")
        part = te.compute(
            (parts, b, oh, ow, out_channels),
            lambda p, nn, i, j, o: te.sum(
                xp[nn, i * stride + rh, j * stride + rw, r].astype("int32")
                * wt[p, o // lanes, rh, rw, r // DEPTH, o % lanes, r % DEPTH].astype("int32"), axis=[rh, rw, r]),
            name="partial",
        )
        axes = [te.reduce_axis((0, parts), name="rp")]
    else:
        r = te.reduce_axis((0, chunk), name="r")
        part = te.compute(
            (parts, kh, kw, c // chunk, b, oh, ow, out_channels),
            lambda p, i_, j_, cc, nn, i, j, o: te.sum(
                xp[nn, i * stride + i_, j * stride + j_, cc * chunk + r].astype("int32")
                * wt[p, o // lanes, i_, j_, cc * (chunk // DEPTH) + r // DEPTH, o % lanes, r % DEPTH].astype("int32"), axis=r),
            name="partial",
        )
        axes = [te.reduce_axis((0, e), name=nm) for e, nm in ((parts, "rp"), (kh, "rh"), (kw, "rw"), (c // chunk, "rc"))]
    acc = te.compute((b, oh, ow, out_channels), lambda nn, i, j, o: _combine(part, parts, axes, (nn, i, j, o)), name="acc")
    bias, mult, shift, qp, y = requant_compute(acc, 3, out_dtype, qp, bias_dtype="int64")
    return te.create_prim_func([x, wt, bias, mult, shift, qp, y])


def pack_wide_weight(w_q: torch.Tensor, parts: int, lanes: int) -> np.ndarray:
    """``[N, K]`` (dense) or OIHW (conv) codes to the blocked int16 layouts above (N or O a
    multiple of ``lanes``, K or C even)."""
    w = split_parts(w_q, parts)
    if w_q.dim() == 2:
        n, k = w_q.shape
        w = w.reshape(parts, n // lanes, lanes, k // DEPTH, DEPTH).permute(0, 1, 3, 2, 4)
    else:
        o, c, kh, kw = w_q.shape
        w = w.reshape(parts, o // lanes, lanes, c // DEPTH, DEPTH, kh, kw).permute(0, 1, 5, 6, 3, 2, 4)
    return np.ascontiguousarray(w.numpy())
