"""Integer GEMM kernels as TVM tensor expressions, for any CPU family's blocked dot-product
instruction: the computations, the weight packing and the requantization epilogue.

A family's dot-product instruction multiplies ``depth`` activation codes by a ``lanes x depth``
weight block into ``lanes`` int32 accumulators (x86 VNNI ``vpdpbusd``: 16 x 4, u8 x s8; Arm
``sdot``: 4 x 4, s8 x s8). :class:`Blocking` names that shape and the activation code type; the
kernels here read weights blocked that way, so a family's schedule can tensorize the inner
``lanes x depth`` block with its intrinsic. The families' schedules live in their packages.

Semantics are those of :mod:`lcpaq.backends.common.integer_ref` (``dense``, ``conv2d``): raw
activation codes times int8 weights, int32 accumulation, the input zero point folded into the
bias on the host (``bias - x_zp * sum(w)``, so padding with code ``x_zp`` is exact),
per-output-channel dyadic requantization ``(acc * M + 2^(shift-1)) >> shift`` in int64,
``+ out_zp``, clamp to ``[qmin, qmax]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import tvm
from tvm import te

from lcpaq.backends.common.op_args import conv_out_size

#: Output dtypes of the requantizing kernels: activation codes, or int32 (an intermediate on a
#: finer scale, e.g. a conv output that a residual add combines before the final requantization).
OUT_DTYPES = ("uint8", "int8", "int16", "int32")
_RANGE = {"uint8": (0, 255), "int8": (-128, 127), "int16": (-(2**15), 2**15 - 1), "int32": (-(2**31), 2**31 - 1)}


@dataclass(frozen=True)
class Blocking:
    """The shape of a family's dot-product instruction: ``lanes`` outputs x ``depth`` reduction
    elements, activations in ``act_dtype`` codes (weights are int8)."""

    lanes: int
    depth: int
    act_dtype: str = "uint8"


@dataclass(frozen=True)
class Requant:
    """Output quantization of a layer: zero point and the clamp range (ReLU: ``qmin = out_zp``).

    The kernels take these at run time, with the input zero point, as the int32 vector
    :meth:`qp` ``= [x_zp, out_zp, qmin, qmax]``: one compiled kernel (and one tuning record)
    serves every layer of the same shape."""

    out_zp: int
    qmin: int = 0
    qmax: int = 255
    out_dtype: str = "uint8"

    def __post_init__(self) -> None:
        if self.out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {self.out_dtype!r}")
        lo, hi = _RANGE[self.out_dtype]
        if not lo <= self.qmin <= self.qmax <= hi or not lo <= self.out_zp <= hi:
            raise ValueError(f"{self.out_dtype} output needs {lo} <= qmin <= qmax <= {hi} and out_zp in range, got {self}")

    def qp(self, x_zp: int, act_dtype: str = "uint8") -> np.ndarray:
        """The kernels' run-time parameter vector ``[x_zp, out_zp, qmin, qmax]`` (int32)."""
        lo, hi = _RANGE[act_dtype]
        if not lo <= x_zp <= hi:
            raise ValueError(f"input zero point must be a {act_dtype} code, got {x_zp}")
        return np.array([x_zp, self.out_zp, self.qmin, self.qmax], dtype=np.int32)


def requant_compute(
    acc: te.Tensor, ch_axis: int, out_dtype: str = "uint8", qp: te.Tensor | None = None, name: str = "requant",
    bias_dtype: str = "int32", narrow: bool = False,
) -> tuple[te.Tensor, ...]:
    """TE stage ``acc (int32, or int64 with an int64 bias) -> out_dtype`` with per-channel bias,
    multiplier and shift (int32 inputs of length ``acc.shape[ch_axis]``) and the run-time vector
    ``qp = [x_zp, out_zp, qmin, qmax]`` (a new placeholder unless given). Returns (bias,
    multiplier, shift, qp, out). ``narrow``: the whole requantization in int32 lanes, exact only
    for constants that pass :func:`~lcpaq.backends.common.integer_ref.fits_int32` (the
    sum ``acc + bias`` wraps in between but fits int32 at the end, as the reference checks)."""
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    n = acc.shape[ch_axis]
    bias = te.placeholder((n,), bias_dtype, name="bias")
    mult = te.placeholder((n,), "int32", name="multiplier")
    shift = te.placeholder((n,), "int32", name="shift")
    qp = te.placeholder((4,), "int32", name="qp") if qp is None else qp
    one = tvm.tirx.const(1, "int64")
    if narrow:
        if acc.dtype != "int32" or bias_dtype != "int32":
            raise ValueError("a narrow (int32) requantization takes int32 accumulators and bias")

        def g(*idx: Any) -> Any:
            c = idx[ch_axis]
            y = (((acc(*idx) + bias[c]) * mult[c] + (tvm.tirx.const(1, "int32") << (shift[c] - 1))) >> shift[c]) + qp[1]
            return tvm.tirx.max(tvm.tirx.min(y, qp[3]), qp[2]).astype(out_dtype)

        return bias, mult, shift, qp, te.compute(acc.shape, g, name=name)

    def f(*idx: Any) -> Any:
        c = idx[ch_axis]
        s = shift[c].astype("int64")
        a = acc(*idx).astype("int64") + bias[c].astype("int64")
        y = ((a * mult[c].astype("int64") + (one << (s - one))) >> s) + qp[1].astype("int64")
        y = tvm.tirx.max(tvm.tirx.min(y, qp[3].astype("int64")), qp[2].astype("int64"))
        return y.astype(out_dtype)

    return bias, mult, shift, qp, te.compute(acc.shape, f, name=name)


def pad_nhwc(x: te.Tensor, padding: int, value: Any, name: str = "pad") -> te.Tensor:
    """TE stage padding the H and W axes of NHWC ``x`` by ``padding`` on each side with ``value``
    (a TIR expression of x's dtype, e.g. the run-time input zero point)."""
    b, h, w_, c = x.shape
    return te.compute(
        (b, h + 2 * padding, w_ + 2 * padding, c),
        lambda n, i, j, ch: tvm.tirx.if_then_else(
            tvm.tirx.all(i >= padding, i < h + padding, j >= padding, j < w_ + padding), x[n, i - padding, j - padding, ch], value,
        ),
        name=name,
    )


def kernel_hw(kernel: int | tuple[int, int]) -> tuple[int, int]:
    """``(KH, KW)`` of a square (int) or rectangular kernel size."""
    return (kernel, kernel) if isinstance(kernel, int) else (int(kernel[0]), int(kernel[1]))


def dense_compute(m: int, n: int, k: int, blocking: Blocking) -> tuple[te.Tensor, te.Tensor, te.Tensor]:
    """TE of ``C[i, j] = sum_k int32(X[i, k]) * int32(W[j, k])`` with W blocked as
    ``[N/lanes, K/depth, lanes, depth]`` (:func:`pack_weight`); returns (X, W, C)."""
    lanes, depth = blocking.lanes, blocking.depth
    if n % lanes or k % depth:
        raise ValueError(f"blocked dense needs N % {lanes} == 0 and K % {depth} == 0, got N={n}, K={k}")
    x = te.placeholder((m, k), blocking.act_dtype, name="X")
    w = te.placeholder((n // lanes, k // depth, lanes, depth), "int8", name="W")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute(
        (m, n),
        lambda i, j: te.sum(x[i, r].astype("int32") * w[j // lanes, r // depth, j % lanes, r % depth].astype("int32"), axis=r),
        name="dense",
    )
    return x, w, c


def pack_weight(w_q: torch.Tensor, blocking: Blocking) -> np.ndarray:
    """``[N, K]`` int8 codes to ``[N/lanes, K/depth, lanes, depth]``; N and K must be multiples."""
    lanes, depth = blocking.lanes, blocking.depth
    n, k = w_q.shape
    if n % lanes or k % depth:
        raise ValueError(f"blocked weights need N % {lanes} == 0 and K % {depth} == 0, got N={n}, K={k}")
    w = w_q.to(torch.int8).reshape(n // lanes, lanes, k // depth, depth).permute(0, 2, 1, 3)
    return np.ascontiguousarray(w.numpy())


def qdense_func(m: int, n: int, k: int, blocking: Blocking, out_dtype: str = "uint8", narrow: bool = False) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X [m, k] codes, W blocked, bias, multiplier, shift, qp, Y [m, n])``
    (``narrow``: int32 requantization, :func:`requant_compute`)."""
    x, w, acc = dense_compute(m, n, k, blocking)
    bias, mult, shift, qp, y = requant_compute(acc, 1, out_dtype, narrow=narrow)
    return te.create_prim_func([x, w, bias, mult, shift, qp, y])


def qconv2d_func(
    shape: tuple[int, int, int, int], out_channels: int, kernel: int | tuple[int, int], stride: int, padding: int,
    blocking: Blocking, out_dtype: str = "uint8", narrow: bool = False,
) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X NHWC codes, W [O/lanes, KH, KW, C/depth, lanes, depth], bias, multiplier,
    shift, qp, Y NHWC)``: block ``conv`` (loops n, oh, ow, o, kh, kw, c), padding stage ``pad``
    (code ``qp[0]``), epilogue ``requant`` (``narrow``: in int32). ``shape`` is the NHWC input shape."""
    b, h, w_, c = shape
    kh, kw = kernel_hw(kernel)
    lanes, depth = blocking.lanes, blocking.depth
    if c % depth or out_channels % lanes:
        raise ValueError(f"blocked conv2d needs C % {depth} == 0 and O % {lanes} == 0, got C={c}, O={out_channels}")
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    x = te.placeholder(shape, blocking.act_dtype, name="X")
    wt = te.placeholder((out_channels // lanes, kh, kw, c // depth, lanes, depth), "int8", name="W")
    qp = te.placeholder((4,), "int32", name="qp")
    xp = pad_nhwc(x, padding, qp[0].astype(blocking.act_dtype))
    rh, rw, rc = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw"), te.reduce_axis((0, c), name="rc")
    acc = te.compute(
        (b, oh, ow, out_channels),
        lambda n, i, j, o: te.sum(
            xp[n, i * stride + rh, j * stride + rw, rc].astype("int32")
            * wt[o // lanes, rh, rw, rc // depth, o % lanes, rc % depth].astype("int32"),
            axis=[rh, rw, rc],
        ),
        name="conv",
    )
    bias, mult, shift, qp, y = requant_compute(acc, 3, out_dtype, qp, narrow=narrow)
    return te.create_prim_func([x, wt, bias, mult, shift, qp, y])


def pack_conv_weight(w_q: torch.Tensor, blocking: Blocking) -> np.ndarray:
    """OIHW int8 (O % lanes == C % depth == 0) to ``[O/lanes, KH, KW, C/depth, lanes, depth]``."""
    lanes, depth = blocking.lanes, blocking.depth
    o, c, kh, kw = w_q.shape
    w = w_q.to(torch.int8).reshape(o // lanes, lanes, c // depth, depth, kh, kw).permute(0, 4, 5, 2, 1, 3)
    return np.ascontiguousarray(w.numpy())


def pad_dim(t: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    """``t`` zero-padded along ``dim`` to a multiple of ``multiple``."""
    extra = -t.shape[dim] % multiple
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=dim)


def channel_params(bias_eff: torch.Tensor, multiplier: Any, shift: Any, n: int, n_pad: int,
                   bias_dtype: str = "int32") -> list[np.ndarray]:
    """Arrays of bias_eff (``bias_dtype``: int64 for a wide kernel), multiplier and shift (int32),
    broadcast to n and padded to n_pad (padded channels: zero bias and multiplier, shift 1)."""
    out = []
    for v, fill, dtype in ((bias_eff, 0, bias_dtype), (multiplier, 0, "int32"), (shift, 1, "int32")):
        t = torch.as_tensor(v, dtype=torch.int64).flatten().expand(n) if torch.as_tensor(v).dim() == 0 else torch.as_tensor(v, dtype=torch.int64)
        if t.numel() != n:
            raise ValueError(f"per-channel parameter has {t.numel()} entries for {n} channels")
        t = torch.cat([t, torch.full((n_pad - n,), fill, dtype=torch.int64)])
        if dtype == "int32" and (bool((t < -(2**31)).any()) or bool((t >= 2**31).any())):
            raise OverflowError("per-channel parameter does not fit int32")
        out.append(np.ascontiguousarray(t.to(getattr(torch, dtype)).numpy()))
    return out


def bias_eff(w_q: torch.Tensor, x_zp: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``bias - x_zp * sum(w)`` per output channel (dim 0 of ``w_q``), int64."""
    wsum = w_q.to(torch.int64).flatten(1).sum(1)
    b = torch.zeros_like(wsum) if bias is None else bias.to(torch.int64)
    return b - int(x_zp) * wsum
