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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import tvm
from tvm import s_tir, te

from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.x86.vnni import DEPTH, LANES, VNNI_INTRIN, Kernel, build, dense_compute, pack_weight, tensorize_dense_block, to_tvm


#: Output dtypes of the requantizing kernels: uint8 codes, or int32 (an intermediate on a finer
#: scale, e.g. a conv output that a residual add combines before the final requantization).
OUT_DTYPES = ("uint8", "int32")
_OUT_RANGE = {"uint8": (0, 255), "int32": (-(2**31), 2**31 - 1)}


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
        lo, hi = _OUT_RANGE[self.out_dtype]
        if not lo <= self.qmin <= self.qmax <= hi or not lo <= self.out_zp <= hi:
            raise ValueError(f"{self.out_dtype} output needs {lo} <= qmin <= qmax <= {hi} and out_zp in range, got {self}")

    def qp(self, x_zp: int) -> np.ndarray:
        """The kernels' run-time parameter vector ``[x_zp, out_zp, qmin, qmax]`` (int32)."""
        if not 0 <= x_zp <= 255:
            raise ValueError(f"input zero point must be a uint8 code, got {x_zp}")
        return np.array([x_zp, self.out_zp, self.qmin, self.qmax], dtype=np.int32)


def requant_compute(
    acc: te.Tensor, ch_axis: int, out_dtype: str = "uint8", qp: te.Tensor | None = None, name: str = "requant"
) -> tuple[te.Tensor, ...]:
    """TE stage ``acc (int32) -> out_dtype`` with per-channel bias, multiplier and shift (int32
    inputs of length ``acc.shape[ch_axis]``) and the run-time vector ``qp = [x_zp, out_zp, qmin,
    qmax]`` (a new placeholder unless given). Returns (bias, multiplier, shift, qp, out)."""
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    n = acc.shape[ch_axis]
    bias = te.placeholder((n,), "int32", name="bias")
    mult = te.placeholder((n,), "int32", name="multiplier")
    shift = te.placeholder((n,), "int32", name="shift")
    qp = te.placeholder((4,), "int32", name="qp") if qp is None else qp
    one = tvm.tirx.const(1, "int64")

    def f(*idx: Any) -> Any:
        c = idx[ch_axis]
        s = shift[c].astype("int64")
        a = acc(*idx).astype("int64") + bias[c].astype("int64")
        y = ((a * mult[c].astype("int64") + (one << (s - one))) >> s) + qp[1].astype("int64")
        y = tvm.tirx.max(tvm.tirx.min(y, qp[3].astype("int64")), qp[2].astype("int64"))
        return y.astype(out_dtype)

    return bias, mult, shift, qp, te.compute(acc.shape, f, name=name)


def qdense_func(m: int, n: int, k: int, out_dtype: str = "uint8") -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X u8 [m,k], W packed, bias, multiplier, shift, qp, Y [m,n])``; n % 16 == k % 4 == 0."""
    x, w, acc = dense_compute(m, n, k)
    bias, mult, shift, qp, y = requant_compute(acc, 1, out_dtype)
    return te.create_prim_func([x, w, bias, mult, shift, qp, y])


def schedule_qdense(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    """Untuned VNNI schedule of :func:`qdense_func`: tensorized core, epilogue fused per tile."""
    sch = s_tir.Schedule(func)
    tensorize_dense_block(sch, sch.get_sblock("dense"), epilogue=sch.get_sblock("requant"))
    return sch


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


def qconv2d_func(
    shape: tuple[int, int, int, int], out_channels: int, kernel: int | tuple[int, int], stride: int, padding: int,
    out_dtype: str = "uint8",
) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X u8 NHWC, W [O/16, KH, KW, C/4, 16, 4], bias, multiplier, shift, qp, Y NHWC)``.

    ``shape`` is the NHWC input shape; C % 4 == 0 and O % 16 == 0; ``kernel`` is KH = KW or
    ``(KH, KW)``. Padding uses code ``qp[0]`` (the input zero point)."""
    b, h, w_, c = shape
    kh, kw = kernel_hw(kernel)
    if c % DEPTH or out_channels % LANES:
        raise ValueError(f"VNNI conv2d needs C % 4 == 0 and O % 16 == 0, got C={c}, O={out_channels}")
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    x = te.placeholder(shape, "uint8", name="X")
    wt = te.placeholder((out_channels // LANES, kh, kw, c // DEPTH, LANES, DEPTH), "int8", name="W")
    qp = te.placeholder((4,), "int32", name="qp")
    xp = pad_nhwc(x, padding, qp[0].astype("uint8"))
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")
    rc = te.reduce_axis((0, c), name="rc")
    acc = te.compute(
        (b, oh, ow, out_channels),
        lambda n, i, j, o: te.sum(
            xp[n, i * stride + rh, j * stride + rw, rc].astype("int32")
            * wt[o // LANES, rh, rw, rc // DEPTH, o % LANES, rc % DEPTH].astype("int32"),
            axis=[rh, rw, rc],
        ),
        name="conv",
    )
    bias, mult, shift, qp, y = requant_compute(acc, 3, out_dtype, qp)
    return te.create_prim_func([x, wt, bias, mult, shift, qp, y])


#: Most output columns a VNNI conv tile computes together: each needs a 16-lane int32
#: accumulator plus a broadcast activation register; 7 measured fastest here (782 GOPS for
#: 64->64 3x3 at 56x56 against 607 with 8 and 609 with 4, 2 threads).
MAX_COL_TILE = 7


def vnni_col_tile(width: int) -> int:
    """Output columns per VNNI conv tile: the largest divisor of ``width`` up to :data:`MAX_COL_TILE`."""
    return max(d for d in range(1, MAX_COL_TILE + 1) if width % d == 0)


def schedule_qconv2d(func: tvm.tirx.PrimFunc, col_tile: int = 4) -> s_tir.Schedule:
    """Untuned VNNI schedule of :func:`qconv2d_func`: ``(n, oh) parallel, ow/tile, o/16, kh, kw,
    c/4, tile of ow, [16 x 4 -> vpdpbusd]``; padding computed per output row, epilogue fused."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("conv")
    n, oh, ow, o, rh, rw, rc = sch.get_loops(block)
    width = int(sch.get(ow).extent)
    col_tile = col_tile if width % col_tile == 0 else 1
    owo, owi = sch.split(ow, [None, col_tile])
    oo, oi = sch.split(o, [None, LANES])
    rco, rci = sch.split(rc, [None, DEPTH])
    sch.reorder(n, oh, owo, oo, rh, rw, rco, owi, oi, rci)
    sch.parallel(sch.fuse(n, oh))
    epilogue = sch.get_sblock("requant")
    sch.reverse_compute_at(epilogue, oo)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    pad = sch.get_sblock("pad")
    sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))
    sch.decompose_reduction(block, rh)
    sch.tensorize(oi, VNNI_INTRIN)
    return sch


def _pad_dim(t: torch.Tensor, dim: int, multiple: int) -> torch.Tensor:
    extra = -t.shape[dim] % multiple
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, torch.zeros(shape, dtype=t.dtype)], dim=dim)


def _channel_params(bias_eff: torch.Tensor, multiplier: Any, shift: Any, n: int, n_pad: int) -> list[Any]:
    """int32 TVM tensors of bias_eff, multiplier and shift, broadcast to n and padded to n_pad."""
    out = []
    for v, fill in ((bias_eff, 0), (multiplier, 0), (shift, 1)):
        t = torch.as_tensor(v, dtype=torch.int64).flatten().expand(n) if torch.as_tensor(v).dim() == 0 else torch.as_tensor(v, dtype=torch.int64)
        if t.numel() != n:
            raise ValueError(f"per-channel parameter has {t.numel()} entries for {n} channels")
        t = torch.cat([t, torch.full((n_pad - n,), fill, dtype=torch.int64)])
        if bool((t < -(2**31)).any()) or bool((t >= 2**31).any()):
            raise OverflowError("per-channel parameter does not fit int32")
        out.append(to_tvm(t.to(torch.int32)))
    return out


def _bias_eff(w_q: torch.Tensor, x_zp: int, bias: torch.Tensor | None) -> torch.Tensor:
    """``bias - x_zp * sum(w)`` per output channel (dim 0 of ``w_q``), int64."""
    wsum = w_q.to(torch.int64).flatten(1).sum(1)
    b = torch.zeros_like(wsum) if bias is None else bias.to(torch.int64)
    return b - int(x_zp) * wsum


def qdense(
    x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None,
    multiplier: Any, shift: Any, out_zp: int, qmin: int = 0, qmax: int = 255,
) -> torch.Tensor:
    """Same contract as :func:`integer_ref.dense`, computed by an untuned VNNI TVM kernel."""
    m, k = x_q.shape
    n = w_q.shape[0]
    x_p = _pad_dim(x_q.to(torch.uint8), 1, DEPTH)
    w_p = _pad_dim(_pad_dim(w_q.to(torch.int8), 1, DEPTH), 0, LANES)
    qp = Requant(out_zp, qmin, qmax).qp(x_zp)
    kernel = build(schedule_qdense(qdense_func(m, w_p.shape[0], w_p.shape[1])).mod)
    out = to_tvm(np.zeros((m, w_p.shape[0]), np.uint8))
    params = _channel_params(_bias_eff(w_q, x_zp, bias), multiplier, shift, n, w_p.shape[0])
    kernel(to_tvm(x_p), to_tvm(pack_weight(w_p)), *params, to_tvm(qp), out)
    return torch.from_numpy(out.numpy())[:, :n].contiguous()


def pack_conv_weight(w_q: torch.Tensor) -> np.ndarray:
    """OIHW int8 (O % 16 == C % 4 == 0) to ``[O/16, KH, KW, C/4, 16, 4]``."""
    o, c, kh, kw = w_q.shape
    w = w_q.to(torch.int8).reshape(o // LANES, LANES, c // DEPTH, DEPTH, kh, kw).permute(0, 4, 5, 2, 1, 3)
    return np.ascontiguousarray(w.numpy())


def qconv2d(
    x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None,
    multiplier: Any, shift: Any, out_zp: int, qmin: int = 0, qmax: int = 255, stride: int = 1, padding: int = 0,
) -> torch.Tensor:
    """Same contract as :func:`integer_ref.conv2d` (NCHW in and out), by an untuned VNNI TVM kernel."""
    o, c, kh, kw = w_q.shape
    if x_q.shape[1] != c:
        raise ValueError(f"qconv2d needs matching channels, got x {tuple(x_q.shape)}, w {tuple(w_q.shape)}")
    x_nhwc = _pad_dim(x_q.to(torch.uint8).permute(0, 2, 3, 1).contiguous(), 3, DEPTH)
    w_p = _pad_dim(_pad_dim(w_q.to(torch.int8), 1, DEPTH), 0, LANES)
    qp = Requant(out_zp, qmin, qmax).qp(x_zp)
    func = qconv2d_func(tuple(x_nhwc.shape), w_p.shape[0], (kh, kw), stride, padding)
    kernel = build(schedule_qconv2d(func).mod)
    b, h, w_, _ = x_nhwc.shape
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    out = to_tvm(np.zeros((b, oh, ow, w_p.shape[0]), np.uint8))
    params = _channel_params(_bias_eff(w_q, x_zp, bias), multiplier, shift, o, w_p.shape[0])
    kernel(to_tvm(x_nhwc), to_tvm(pack_conv_weight(w_p)), *params, to_tvm(qp), out)
    return torch.from_numpy(out.numpy())[..., :o].permute(0, 3, 1, 2).contiguous()


__all__ = ["Kernel", "Requant", "qconv2d", "qconv2d_func", "qdense", "qdense_func", "schedule_qconv2d", "schedule_qdense"]
