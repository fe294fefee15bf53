"""Requantization multipliers sized to a layer's accumulator bound (the integer lowering,
:mod:`lcpaq.backends.common.integerize`; arithmetic in :mod:`lcpaq.backends.common.integer_ref`).

* *Wide* layers (on a family whose ``Conventions.wide_bits`` is 16: int16 activation codes or
  weights) sum exactly in int64. A sum can pass 2^31, so a multiplier has only as many bits as
  keep the largest sum times it below 2^62 (``multiplier_bits``), and a result nothing quantized
  reads is written as int32 codes on a scale that holds the largest sum in 2^30 codes.
* *Narrow* requantization: an 8-bit layer whose accumulators are small (a 1x1 conv over few
  channels, a depthwise conv) gets a multiplier of as many bits as keep the whole requantization
  in int32 (``narrow_multiplier_bits``, at least 10 bits), so its kernels' epilogue runs in int32
  lanes instead of int64 (2-3x faster where the epilogue dominates); a backend checks
  ``fits_int32`` on the constants before it picks that epilogue.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.code_domains import int32_domain
from lcpaq.backends.common.integer_ref import (
    acc_bound, code_span, fits_int32, multiplier_bits, narrow_multiplier_bits, requant_params, wide_requant_params,
)
from lcpaq.ir.meta import CodeDomain

if TYPE_CHECKING:  # pragma: no cover
    from lcpaq.backends.common.integerize import Integerizer, Value


def span(d: CodeDomain) -> int:
    """The largest ``|code - zero_point|`` of a domain."""
    return max(d.zero_point - d.qmin, d.qmax - d.zero_point)


def matmul_bits(node: fx.Node, a: CodeDomain, b: CodeDomain) -> tuple[int, float]:
    """(multiplier bits, scale of int32 codes that hold the largest sum) of an activation x
    activation matmul of ``a`` and ``b`` codes (its reduction length from the node's first operand)."""
    k = int(getattr(node.args[0].meta.get("val"), "shape", [2**16])[-1])
    bits = multiplier_bits(k * span(a) * span(b))
    return bits, a.scale * b.scale * 2.0 ** max(0, 32 - bits)


def lower_wide_layer(iz: "Integerizer", node: fx.Node, x: "Value", weights: tuple[torch.Tensor, ...], linear: bool) -> "Value":
    """A wide conv or linear: ``weights`` = (codes, per-channel scales, accumulator scales, bias
    codes or None); int64 sums requantized into the readers' domain by multipliers sized to each
    channel's bound, or into int32 codes that hold the largest sum, dequantized."""
    w_codes, w_scale, acc_scale, bias = weights
    d = x.domain
    bound = acc_bound(w_codes, span(d), bias)
    holds = int32_domain(max(float(acc_scale.max()), float((bound.double() * acc_scale).max()) / 2**30))
    target = iz.out_domain(node, lambda: holds)
    out = holds if target is None else target
    mult, shift = wide_requant_params(d.scale, w_scale, out.scale, bound)
    kw_out = dict(out_zp=out.zero_point, qmin=out.qmin, qmax=out.qmax, out_dtype=out.dtype)
    v = iz.emit_layer(node, x, (w_codes, bias, mult, shift), kw_out, out, linear)
    return v if target is not None else iz.emit(iops.dequantize, (v.node, out.scale, 0), {}, None, node)


def layer_requant_params(x: CodeDomain, w_codes: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                         out: CodeDomain) -> tuple[torch.Tensor, torch.Tensor]:
    """``(multiplier, shift)`` of an 8-bit layer into ``out``: narrowed to an int32
    requantization when ``out`` holds 8-bit codes and the accumulators allow it, else 31 bits."""
    if out.dtype in ("uint8", "int8"):
        bound = acc_bound(w_codes, code_span(x.dtype, x.zero_point), bias)
        bits = narrow_multiplier_bits(int(bound.max()))
        if bits is not None:
            mult, shift = requant_params(x.scale, w_scale, out.scale, bits)
            if fits_int32(bound, mult, shift):
                return mult, shift
    return requant_params(x.scale, w_scale, out.scale)
