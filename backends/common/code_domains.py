"""Code domains of the integer lowering: what the codes of a value mean, and the domains a
value is wanted in by its readers (see :mod:`lcpaq.backends.common.integerize`).

A value's *target* is the domain its readers want: an activation quantizer's (:func:`act_domain`),
:class:`Fine` int32 codes when a residual add or a mean reads it, :data:`WIDE` int32 codes at a
scale the producer picks when integer glue reads it (:func:`int32_domain`, :func:`wide_add_domain`),
or None (float).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from lcpaq.backends.common.integer_ref import INT32_MAX, INT32_MIN
from lcpaq.ir.errors import LoweringError
from lcpaq.ir.meta import CodeDomain
from lcpaq.ir.qops import FakeQuantize

#: Extra bits of precision of a conv output that a residual add consumes (int32 codes).
FINE_BITS = 8


@dataclass(frozen=True)
class Fine:
    """Int32 codes on ``domain.scale / 2^FINE_BITS`` with zero point 0 (a residual add's input)."""

    domain: CodeDomain

    def as_domain(self) -> CodeDomain:
        return CodeDomain(self.domain.scale / 2**FINE_BITS, 0, INT32_MIN, INT32_MAX, "int32")


def finer(target: "CodeDomain | Fine | None") -> "Fine | None":
    """The domain an input of a sum or mean gets when the result should be in ``target``."""
    if isinstance(target, CodeDomain):
        return Fine(target)
    return target


def two_values(add: fx.Node) -> bool:
    """An add of two computed values (no constant, scalar or alpha): a residual add."""
    a = add.args[:2]
    return (len(add.args) == 2 and add.kwargs.get("alpha", 1) == 1
            and all(isinstance(v, fx.Node) and v.op != "get_attr" for v in a))


def act_domain(fq: FakeQuantize, act_dtype: str = "uint8") -> CodeDomain:
    """The code domain of an activation quantizer in ``act_dtype`` codes: in uint8, signed
    (symmetric) codes are offset by +128; in int8, unsigned (asymmetric) codes by -128. The
    offset moves the zero point with the codes, so ``(code - zero_point) * scale`` is unchanged.
    A quantizer of 9 to 16 bits has int16 codes (unsigned ones offset by -2^15), whatever
    ``act_dtype`` (only wide kernels read them)."""
    spec = fq.spec
    if spec.bits > 16 or spec.ch_axis is not None:
        raise LoweringError(f"activation quantizer ({spec.bits} bits, per-channel={spec.ch_axis is not None}) has no {act_dtype} integer form")
    if spec.bits > 8:
        act_dtype, offset = "int16", 0 if spec.symmetric else -(2**15)
    elif act_dtype == "uint8":
        offset = 128 if spec.symmetric else 0
    else:
        offset = 0 if spec.symmetric else -128
    return CodeDomain(float(fq.scale), int(fq.zero_point) + offset, spec.qmin + offset, spec.qmax + offset, act_dtype)


class _Wide:
    """The target of a value that integer glue reads: int32 codes at a scale the producer picks."""

    def __repr__(self) -> str:
        return "WIDE"


WIDE = _Wide()


def int32_domain(scale: float) -> CodeDomain:
    """Int32 codes with zero point 0 at ``scale``."""
    return CodeDomain(float(scale), 0, INT32_MIN, INT32_MAX, "int32")


def unit(domain: CodeDomain) -> float:
    """The finest scale worth keeping of codes of ``domain`` in an int32 sum with others: its
    own for int32 codes, ``2^-FINE_BITS`` of it for 8-bit ones (as a residual add's inputs)."""
    return domain.scale if domain.dtype == "int32" else domain.scale / 2**FINE_BITS


def wide_add_domain(domains: list[CodeDomain]) -> CodeDomain:
    """The int32 domain of a sum read by glue: twice the coarser of its inputs' finest scales
    (each term then stays below 2^30, the sum below 2^31)."""
    return int32_domain(2 * max(unit(d) for d in domains))
