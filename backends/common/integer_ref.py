"""Integer reference for quantized kernels: the oracle every backend is checked against.

Pure torch, integer arithmetic only (int64 internally, results checked to fit int32/uint8).
Conventions (those of ``lcpaq.ir.quantizer`` and gemmlowp / HAWQ-V3):

- activations: unsigned 8-bit codes ``x_q`` in [0, 255] with an integer zero point ``x_zp``;
- weights: signed 8-bit codes in the restricted range [-127, 127], zero point 0, one scale per
  output channel;
- bias: int32, in units of ``x_scale * w_scale[n]`` (so it adds straight to the accumulator);
- accumulation: int32, ``acc[n] = sum_k (x_q - x_zp) * w_q[n, k] + bias[n]``;
- *wide* layers (16-bit activation codes in int16, or weights in the restricted int16 range
  [-32767, 32767]): the same sums exact in int64 (``acc_dtype=torch.int64``), int64 bias, and
  requantization multipliers of fewer bits (:func:`wide_requant_params`) so that
  ``acc * M`` stays below 2^62;
- requantization: ``y = clamp(round(acc * M[n] * 2^-shift[n]) + out_zp, qmin, qmax)`` with a
  31-bit integer ``M[n]`` (dyadic fixed point) and rounding **half up** (ties toward +inf),
  computed exactly as ``(acc * M + 2^(shift-1)) >> shift`` in int64 (arithmetic shift).
  A fused ReLU is ``qmin = out_zp``; a fused clip is any narrower [qmin, qmax].
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
#: Largest right shift we allow: |acc| < 2^31 and M < 2^31, so acc * M + 2^(shift-1) fits int64.
MAX_SHIFT = 62


def quantize_multiplier(real: float, bits: int = 31) -> tuple[int, int]:
    """Dyadic approximation ``real ≈ multiplier * 2^-shift``.

    Guarantees: ``multiplier`` in [2^(bits-1), 2^bits - 1] (a normalised ``bits``-bit mantissa,
    so the relative error is at most 2^-bits; 31 by default), ``1 <= shift <= MAX_SHIFT``;
    ``real == 0`` gives ``(0, 1)``. Raises ValueError for negative, non-finite, or out-of-range
    (no shift in [1, MAX_SHIFT]) values."""
    if not 2 <= bits <= 31:
        raise ValueError(f"a multiplier has 2 to 31 bits, got {bits}")
    if not math.isfinite(real) or real < 0:
        raise ValueError(f"requantization scale must be finite and >= 0, got {real!r}")
    if real == 0:
        return 0, 1
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    multiplier = round(mantissa * 2**bits)
    if multiplier == 2**bits:  # mantissa rounded up to 1.0
        multiplier //= 2
        exponent += 1
    shift = bits - exponent
    if not 1 <= shift <= MAX_SHIFT:
        raise ValueError(f"requantization scale {real:g} has no {bits}-bit dyadic form with a shift in [1, {MAX_SHIFT}]")
    return multiplier, shift


def requant_params(x_scale: float, w_scales: torch.Tensor | Sequence[float], out_scale: float,
                   bits: int | Sequence[int] = 31) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(multiplier, shift)`` int64 tensors for ``x_scale * w_scale[n] / out_scale``,
    multipliers of ``bits`` bits (one width, or one per channel; one scale serves every channel)."""
    widths = [bits] if isinstance(bits, int) else [int(b) for b in bits]
    scales = torch.as_tensor(w_scales, dtype=torch.float64).flatten()
    n = max(len(scales), len(widths))
    scales, widths = scales.expand(n), widths * n if len(widths) == 1 else widths
    pairs = [quantize_multiplier(float(x_scale) * float(s) / float(out_scale), b) for s, b in zip(scales, widths)]
    return torch.tensor([p[0] for p in pairs], dtype=torch.int64), torch.tensor([p[1] for p in pairs], dtype=torch.int64)


def acc_bound(w_q: torch.Tensor, x_span: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per output channel (dim 0 of ``w_q``), the largest ``|acc|`` a layer can reach when
    ``|x_q - x_zp| <= x_span``: ``x_span * sum|w| + |bias|`` (int64)."""
    bound = w_q.to(torch.int64).abs().flatten(1).sum(1) * int(x_span)
    return bound if bias is None else bound + bias.to(torch.int64).abs().flatten()


def code_span(dtype: str, zero_point: int) -> int:
    """The largest ``|code - zero_point|`` of any code of ``dtype`` (what a kernel, which sees
    only the type, can assume)."""
    info = torch.iinfo(getattr(torch, dtype))
    return max(zero_point - info.min, info.max - zero_point)


def narrow_requant(w_q: torch.Tensor, x_dtype: str, x_zp: int, bias: torch.Tensor | None,
                   multiplier: torch.Tensor, shift: torch.Tensor) -> bool:
    """Whether a layer's requantization is exact in int32 (:func:`fits_int32` of its bound over
    every code of ``x_dtype``): the test a backend applies before it picks an int32 epilogue."""
    return fits_int32(acc_bound(w_q, code_span(x_dtype, x_zp), bias), multiplier, shift)


def multiplier_bits(bound: int) -> int:
    """The most multiplier bits (at most 31) for accumulators up to ``bound`` in magnitude, so
    that ``bound * M + 2^(shift-1)`` stays below 2^63: ``M < 2^bits`` with ``bound < 2^(62 - bits)``."""
    return max(2, min(31, 62 - max(int(bound), 1).bit_length()))


#: Fewest multiplier bits an 8-bit layer's requantization is narrowed to so that it runs in
#: int32 (a gain error of at most 2^-10 per channel, far under the weights' own quantization).
NARROW_MIN_BITS = 10


def narrow_multiplier_bits(bound: int) -> int | None:
    """Multiplier bits that keep ``bound * M`` under 2^30, so that the whole requantization of
    accumulators up to ``bound`` (with a shift of at most 31) is exact in int32 arithmetic; None
    when that leaves fewer than :data:`NARROW_MIN_BITS`."""
    bits = 30 - max(int(bound), 1).bit_length()
    return min(bits, 31) if bits >= NARROW_MIN_BITS else None


def fits_int32(bound: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> bool:
    """Whether ``(acc * M + 2^(shift-1)) >> shift`` is exact in int32 for every channel's
    accumulators up to ``bound``: no product or rounding sum reaches 2^31."""
    b, m, s = (torch.as_tensor(t, dtype=torch.int64).flatten() for t in (bound, multiplier, shift))
    if bool((s > 31).any()):
        return False
    return bool((b * m + (torch.ones_like(s) << (s - 1)) < 2**31).all())


def wide_requant_params(x_scale: float, w_scales: torch.Tensor | Sequence[float], out_scale: float,
                        bound: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`requant_params` for int64 accumulators of magnitude at most ``bound[n]``: each
    channel's multiplier has :func:`multiplier_bits` of its bound (31 where it fits)."""
    return requant_params(x_scale, w_scales, out_scale, [multiplier_bits(int(b)) for b in bound.flatten()])


def _as_channel_tensor(v: int | torch.Tensor, acc: torch.Tensor, dim: int) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=torch.int64)
    if t.dim() == 0:
        return t
    if not -acc.dim() <= dim < acc.dim():
        raise ValueError(f"per-channel parameters need channel axis {dim} of a {acc.dim()}-d accumulator")
    n, ndim = acc.shape[dim], acc.dim()
    if t.numel() != n:
        raise ValueError(f"per-channel parameter has {t.numel()} entries for {n} channels")
    shape = [1] * ndim
    shape[dim] = n
    return t.reshape(shape)


def requantize(
    acc: torch.Tensor,
    multiplier: int | torch.Tensor,
    shift: int | torch.Tensor,
    out_zero_point: int,
    qmin: int = 0,
    qmax: int = 255,
    ch_axis: int = 1,
) -> torch.Tensor:
    """int32 (or int64) accumulators to clamped integer codes (int32 tensor), round half up.

    ``multiplier``/``shift`` are scalars or per-channel tensors along ``ch_axis`` of ``acc``.
    Guarantees: the result equals ``clamp(floor(acc * multiplier / 2^shift + 1/2) + out_zero_point,
    qmin, qmax)`` exactly (no intermediate overflow, all in int64). Raises OverflowError when an
    int64 accumulator times its multiplier reaches 2^62 (see :func:`wide_requant_params`)."""
    if acc.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"requantize takes int32 accumulators, got {acc.dtype}")
    if qmin > qmax:
        raise ValueError(f"empty output range [{qmin}, {qmax}]")
    a = acc.to(torch.int64)
    m = _as_channel_tensor(multiplier, a, ch_axis)
    s = _as_channel_tensor(shift, a, ch_axis)
    if bool((s < 1).any()) or bool((s > MAX_SHIFT).any()):
        raise ValueError(f"shift must lie in [1, {MAX_SHIFT}]")
    if bool((m < 0).any()) or bool((m >= 2**31).any()):
        raise ValueError("multiplier must lie in [0, 2^31)")
    if acc.dtype == torch.int64 and bool((a.abs().to(torch.float64) * m.to(torch.float64) >= 2.0**62).any()):
        raise OverflowError("int64 accumulator times its multiplier reaches 2^62: the multiplier needs fewer bits")
    rounding = torch.ones_like(s) << (s - 1)
    y = torch.bitwise_right_shift(a * m + rounding, s) + int(out_zero_point)
    return torch.clamp(y, qmin, qmax).to(torch.int32)


def is_wide(x_q: torch.Tensor, w_q: torch.Tensor) -> bool:
    """A wide layer: 16-bit activation codes (int16) or 16-bit weight codes (int16)."""
    return torch.int16 in (x_q.dtype, w_q.dtype)


def _check_codes(x_q: torch.Tensor, w_q: torch.Tensor) -> None:
    if x_q.is_floating_point() or w_q.is_floating_point():
        raise TypeError("integer kernels take integer codes, not float tensors")
    (x_lo, x_hi), w_hi = ((-(2**15), 2**15 - 1), 2**15 - 1) if is_wide(x_q, w_q) else ((-128, 255), 127)
    if int(x_q.min()) < x_lo or int(x_q.max()) > x_hi:
        raise ValueError("activation codes must be uint8 values in [0, 255] or int8 values in [-128, 127] (int16 in a wide layer)")
    if int(w_q.min()) < -w_hi or int(w_q.max()) > w_hi:
        raise ValueError(f"weight codes must lie in the restricted range [-{w_hi}, {w_hi}]")


def _to_acc(acc: torch.Tensor, acc_dtype: torch.dtype) -> torch.Tensor:
    if acc_dtype == torch.int64:
        return acc
    if bool((acc < INT32_MIN).any()) or bool((acc > INT32_MAX).any()):
        raise OverflowError("int32 accumulator overflow")
    return acc.to(torch.int32)


def dense_acc(x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None = None,
              acc_dtype: torch.dtype = torch.int32) -> torch.Tensor:
    """``[M, N]`` accumulators of ``(x_q[M, K] - x_zp) @ w_q[N, K]^T + bias[N]``, exact, in
    ``acc_dtype`` (int32: OverflowError when a sum does not fit; int64 for wide layers)."""
    _check_codes(x_q, w_q)
    if x_q.dim() != 2 or w_q.dim() != 2 or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"dense needs x [M, K] and w [N, K], got {tuple(x_q.shape)} and {tuple(w_q.shape)}")
    acc = (x_q.to(torch.int64) - int(x_zp)) @ w_q.to(torch.int64).T
    if bias is not None:
        acc = acc + bias.to(torch.int64).reshape(1, -1)
    return _to_acc(acc, acc_dtype)


def conv2d_acc(
    x_q: torch.Tensor,
    x_zp: int,
    w_q: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    acc_dtype: torch.dtype = torch.int32,
) -> torch.Tensor:
    """NCHW accumulators (``acc_dtype``, as :func:`dense_acc`) of a (grouped) conv2d, no dilation, over ``x_q - x_zp``.

    Padding is with real zero, i.e. code ``x_zp`` (which contributes nothing after the zero-point
    subtraction). ``x_q`` is [B, C, H, W], ``w_q`` is [O, C / groups, KH, KW] with C and O
    multiples of ``groups``; output channel ``o`` reads input channels ``g * C/groups ..
    (g + 1) * C/groups - 1`` of its group ``g = o // (O / groups)``. Depthwise is
    ``groups == C == O`` with ``w_q`` [C, 1, KH, KW]. The result is exact (int64 inside)."""
    _check_codes(x_q, w_q)
    if groups < 1 or x_q.dim() != 4 or w_q.dim() != 4:
        raise ValueError(f"conv2d needs x [B, C, H, W], w [O, C/groups, KH, KW] and groups >= 1, got {tuple(x_q.shape)}, {tuple(w_q.shape)}, groups={groups}")
    c, o = x_q.shape[1], w_q.shape[0]
    if c % groups or o % groups or w_q.shape[1] * groups != c:
        raise ValueError(f"conv2d with groups={groups} needs C and O divisible by it and w [O, C/groups, KH, KW], got x {tuple(x_q.shape)} and w {tuple(w_q.shape)}")
    x = torch.nn.functional.pad(x_q.to(torch.int64) - int(x_zp), (padding,) * 4)
    w = w_q.to(torch.int64).reshape(groups, o // groups, c // groups, *w_q.shape[2:])
    kh, kw = w_q.shape[2:]
    ho = (x.shape[2] - kh) // stride + 1
    wo = (x.shape[3] - kw) // stride + 1
    if ho <= 0 or wo <= 0:
        raise ValueError("conv2d kernel is larger than the padded input")
    acc = torch.zeros(x.shape[0], groups, o // groups, ho, wo, dtype=torch.int64)
    xg = x.reshape(x.shape[0], groups, c // groups, *x.shape[2:])
    for i in range(kh):
        for j in range(kw):
            patch = xg[..., i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
            acc += torch.einsum("bgchw,goc->bgohw", patch, w[..., i, j])
    acc = acc.reshape(x.shape[0], o, ho, wo)
    if bias is not None:
        acc = acc + bias.to(torch.int64).reshape(1, -1, 1, 1)
    return _to_acc(acc, acc_dtype)


def dense(
    x_q: torch.Tensor,
    x_zp: int,
    w_q: torch.Tensor,
    bias: torch.Tensor | None,
    multiplier: int | torch.Tensor,
    shift: int | torch.Tensor,
    out_zp: int,
    qmin: int = 0,
    qmax: int = 255,
) -> torch.Tensor:
    """Quantized linear layer: uint8 ``[M, N]`` codes, per-output-channel requantization."""
    acc = dense_acc(x_q, x_zp, w_q, bias)
    return requantize(acc, multiplier, shift, out_zp, qmin, qmax, ch_axis=1).to(torch.uint8)


def conv2d(
    x_q: torch.Tensor,
    x_zp: int,
    w_q: torch.Tensor,
    bias: torch.Tensor | None,
    multiplier: int | torch.Tensor,
    shift: int | torch.Tensor,
    out_zp: int,
    qmin: int = 0,
    qmax: int = 255,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> torch.Tensor:
    """Quantized (grouped) conv2d: uint8 NCHW codes, per-output-channel requantization; see
    :func:`conv2d_acc` for the weight layout of ``groups > 1``."""
    acc = conv2d_acc(x_q, x_zp, w_q, bias, stride, padding, groups)
    return requantize(acc, multiplier, shift, out_zp, qmin, qmax, ch_axis=1).to(torch.uint8)


def relu_range(out_zp: int, qmax: int = 255) -> tuple[int, int]:
    """``(qmin, qmax)`` of a fused ReLU: codes below the zero point (negative reals) are cut."""
    return int(out_zp), qmax
