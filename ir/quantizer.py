"""Uniform affine quantization: the arithmetic every pass and backend shares.

Conventions (those of TensorRT and HAWQ-V3):
- symmetric: signed, restricted range [-(2^(b-1)-1), 2^(b-1)-1], zero point 0, scale = amax / qmax;
- asymmetric: unsigned [0, 2^b-1], the range widened to include 0, zero point round(-lo / scale).
For any x inside the calibrated range, |fake_quantize(x) - x| <= scale / 2.
"""
from __future__ import annotations

import torch

from lcpaq.ir.precision import QuantSpec

__all__ = [
    "QuantSpec", "dequantize", "fake_quantize", "fake_quantize_weight", "qparams_from_range", "quantization_error",
    "quantize", "tensor_range", "weight_qparams",
]

_TINY = 1e-12


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float tensors of ``lo``'s shape) covering [lo, hi]."""
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if spec.symmetric:
        amax = torch.maximum(lo.abs(), hi.abs())
        scale = torch.clamp(amax / spec.qmax, min=_TINY)
        return scale, torch.zeros_like(scale)
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    scale = torch.clamp((hi - lo) / (spec.qmax - spec.qmin), min=_TINY)
    zero_point = torch.clamp(torch.round(spec.qmin - lo / scale), spec.qmin, spec.qmax)
    return scale, zero_point


def tensor_range(x: torch.Tensor, ch_axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``x``, per channel along ``ch_axis`` or over the whole tensor."""
    x = x.detach().float()
    if ch_axis is None:
        return x.amin(), x.amax()
    dims = [d for d in range(x.dim()) if d != ch_axis % x.dim()]
    return x.amin(dim=dims), x.amax(dim=dims)


def weight_qparams(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = tensor_range(w, spec.ch_axis)
    return qparams_from_range(lo, hi, spec)


def _broadcast(p: torch.Tensor, x: torch.Tensor, ch_axis: int | None) -> torch.Tensor:
    if ch_axis is None or p.dim() == 0:
        return p
    shape = [1] * x.dim()
    shape[ch_axis % x.dim()] = -1
    return p.reshape(shape)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes (as float tensor values) of ``x``."""
    s = _broadcast(scale, x, spec.ch_axis)
    z = _broadcast(zero_point, x, spec.ch_axis)
    return torch.clamp(torch.round(x / s) + z, spec.qmin, spec.qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    return (q - _broadcast(zero_point, q, spec.ch_axis)) * _broadcast(scale, q, spec.ch_axis)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize then dequantize; gradients pass straight through (STE) inside the range."""
    y = dequantize(quantize(x, scale, zero_point, spec), scale, zero_point, spec)
    if not x.requires_grad:
        return y
    return x + (y - x).detach()


def fake_quantize_weight(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    scale, zero_point = weight_qparams(w, spec)
    return fake_quantize(w, scale, zero_point, spec)


def quantization_error(w: torch.Tensor, spec: QuantSpec) -> float:
    """Squared L2 norm of Q(w) - w."""
    return float(torch.sum((fake_quantize_weight(w.detach(), spec) - w.detach()) ** 2))
