"""The ops of an integer graph (see :mod:`lcpaq.backends.common.integerize`), as torch functions.

Running an integer graph with these functions *is* the integer reference: every op is exact
integer arithmetic on uint8 / int32 codes (through :mod:`lcpaq.backends.common.integer_ref`), except
:func:`quantize` and :func:`dequantize`, one float32 multiply each at the graph's float edges.
Backends lower each op to a kernel computing the same bits (``backends/relax_build.py``).

Layout is NCHW for 4-d tensors. Codes live in *domains*: ``real = (code - zp) * scale``; the
scales are not needed by the integer ops (they are folded into dyadic multipliers ahead of time)
and stay in the integer graph's node meta for inspection.
"""
from __future__ import annotations

import torch

from lcpaq.backends.common import integer_ref as ir

INT32_RANGE = (ir.INT32_MIN, ir.INT32_MAX)
#: Node meta key of an integer-graph op computed in float: why it has no integer form.
FLOAT_REASON = "lcpaq.float_reason"


_DTYPES = {"uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32}
#: The types integer codes are stored in (int16: wide layers' activations; int32: intermediates).
CODE_DTYPES = tuple(_DTYPES)


def _dtype(out_dtype: str) -> torch.dtype:
    if out_dtype not in _DTYPES:
        raise ValueError(f"integer ops output {', '.join(_DTYPES)}, got {out_dtype!r}")
    return _DTYPES[out_dtype]


def quantize(x: torch.Tensor, inv_scale: float, zp: int, qmin: int, qmax: int, out_dtype: str = "uint8") -> torch.Tensor:
    """``clamp(round_half_even(x * inv_scale) + zp, qmin, qmax)`` as ``out_dtype`` codes; the product is float32."""
    y = torch.round(x.float() * torch.tensor(inv_scale, dtype=torch.float32))
    return torch.clamp(y + zp, qmin, qmax).to(_dtype(out_dtype))


def dequantize(q: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    """``(q - zp) * scale`` in float32 (codes convert to float exactly)."""
    return (q.to(torch.int32) - zp).float() * torch.tensor(scale, dtype=torch.float32)


def dequantize_channels(acc: torch.Tensor, scales: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """int32 accumulators with one scale per channel (along ``axis``) to float32."""
    shape = [1] * acc.dim()
    shape[axis] = -1
    return acc.float() * scales.float().reshape(shape)


def requantize(
    x: torch.Tensor, x_zp: int, multiplier: int, shift: int, out_zp: int, qmin: int, qmax: int, out_dtype: str = "uint8"
) -> torch.Tensor:
    """Codes of one domain into another: ``clamp(dyadic(x - x_zp) + out_zp, qmin, qmax)``."""
    acc = x.to(torch.int32) - x_zp
    return ir.requantize(acc, multiplier, shift, out_zp, qmin, qmax).to(_dtype(out_dtype))


def _acc_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    return torch.int64 if ir.is_wide(x, weight) else torch.int32


def qconv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, multiplier: torch.Tensor, shift: torch.Tensor,
    x_zp: int, out_zp: int, qmin: int, qmax: int, stride: int, padding: int, groups: int = 1, out_dtype: str = "uint8",
) -> torch.Tensor:
    """Quantized conv2d, NCHW: int32 accumulation of ``(x - x_zp) * w`` plus int32 bias, per-channel
    dyadic requantization to ``out_dtype`` codes clamped to [qmin, qmax]. A wide layer (int16
    codes on either side) accumulates in int64 (:mod:`~lcpaq.backends.common.integer_ref`)."""
    acc = ir.conv2d_acc(x, x_zp, weight, bias, stride, padding, groups, _acc_dtype(x, weight))
    return ir.requantize(acc, multiplier, shift, out_zp, qmin, qmax, ch_axis=1).to(_dtype(out_dtype))


def qlinear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, multiplier: torch.Tensor, shift: torch.Tensor,
    x_zp: int, out_zp: int, qmin: int, qmax: int, out_dtype: str = "uint8",
) -> torch.Tensor:
    """Quantized linear over the last dimension (leading dimensions are rows); wide as :func:`qconv2d`."""
    lead = x.shape[:-1]
    acc = ir.dense_acc(x.reshape(-1, x.shape[-1]), x_zp, weight, bias, _acc_dtype(x, weight))
    y = ir.requantize(acc, multiplier, shift, out_zp, qmin, qmax, ch_axis=1).to(_dtype(out_dtype))
    return y.reshape(*lead, weight.shape[0])


def qmatmul(
    a: torch.Tensor, b: torch.Tensor, a_zp: int, b_zp: int, multiplier: int, shift: int,
    out_zp: int, qmin: int, qmax: int, out_dtype: str = "uint8",
) -> torch.Tensor:
    """Activation x activation matmul of codes ``[..., M, K] x [..., K, N]`` (equal batch
    dimensions): int32 ``sum_k (a - a_zp)(b - b_zp)`` (int64 for int16 codes), one dyadic
    requantization for the tensor."""
    acc = (a.to(torch.int64) - a_zp) @ (b.to(torch.int64) - b_zp)
    if torch.int16 in (a.dtype, b.dtype):
        return ir.requantize(acc, multiplier, shift, out_zp, qmin, qmax).to(_dtype(out_dtype))
    if bool((acc < ir.INT32_MIN).any()) or bool((acc > ir.INT32_MAX).any()):
        raise OverflowError("int32 accumulator overflow")
    return ir.requantize(acc.to(torch.int32), multiplier, shift, out_zp, qmin, qmax).to(_dtype(out_dtype))


def qadd(
    a: torch.Tensor, b: torch.Tensor, a_zp: int, a_mult: int, a_shift: int, b_zp: int, b_mult: int, b_shift: int,
    out_zp: int, qmin: int, qmax: int, out_dtype: str = "uint8",
) -> torch.Tensor:
    """Residual add of two code tensors (uint8 or int32, broadcasting): each term is rescaled to
    the output domain on its own, ``clamp(dyadic_a(a - a_zp) + dyadic_b(b - b_zp) + out_zp)``."""
    ta = ir.requantize(a.to(torch.int32) - a_zp, a_mult, a_shift, 0, *INT32_RANGE).to(torch.int64)
    tb = ir.requantize(b.to(torch.int32) - b_zp, b_mult, b_shift, 0, *INT32_RANGE).to(torch.int64)
    return torch.clamp(ta + tb + out_zp, qmin, qmax).to(_dtype(out_dtype))


def clamp(x: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Codes clamped to [qmin, qmax] (a ReLU or ReLU6 in the code domain), dtype kept."""
    return torch.clamp(x, qmin, qmax)


def max_pool2d(x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Max pooling of codes (padding never wins, as with -inf); exact since quantization is monotone."""
    y = torch.nn.functional.max_pool2d(x.to(torch.int32).float(), kernel, stride, padding)
    return y.to(x.dtype)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over H, W of NCHW codes, rounded half up: ``(sum + n // 2) // n``; shape [B, C, 1, 1]."""
    n = x.shape[2] * x.shape[3]
    total = x.to(torch.int64).sum(dim=(2, 3), keepdim=True)
    return torch.div(total + n // 2, n, rounding_mode="floor").to(x.dtype)


#: Ops whose output codes are clamped by their (qmin, qmax) arguments: a following clamp fuses in.
CLAMPED_OPS = (quantize, requantize, qconv2d, qlinear, qmatmul, qadd)
