"""Integer lowering of *wide* layers (:mod:`lcpaq.backends.common.integerize`, on a family whose
``Conventions.wide_bits`` is 16): 16-bit activation codes (int16) or weights (int16) whose sums
are exact in int64 (:mod:`lcpaq.backends.common.integer_ref`).

A wide sum can pass 2^31, so a requantization multiplier has only as many bits as keep the
largest sum times it below 2^62 (:func:`~lcpaq.backends.common.integer_ref.multiplier_bits`), and
a result nothing quantized reads is written as int32 codes on a scale coarse enough to hold the
largest sum in 2^30 codes, then dequantized.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.code_domains import int32_domain
from lcpaq.backends.common.integer_ref import acc_bound, multiplier_bits, wide_requant_params
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
