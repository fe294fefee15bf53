"""TVM kernels of the integer transformer glue (softmax, layer norm, GELU), with one CPU schedule.

Each function returns an unscheduled PrimFunc computing exactly the bits of the op of the same
name in :mod:`lcpaq.backends.common.integer_glue` (``softmax_func`` is ``qsoftmax`` and so on),
over the last dimension of its input (every other dimension is a row), in the same integer
arithmetic (int64, and int32 where the reference fits it): the same adds, multiplies,
arithmetic shifts, floor divisions and clamps, and every constant taken from that module. The
GELU kernel is in :mod:`lcpaq.backends.common.gelu_kernel`. The reference was written so that no division is per element; the kernels
keep that shape: each per-row quantity (maximum, sums, bit length, square root, reciprocal) is a
small block of its own over the leading dimensions, and the per-element work is spatial blocks
over the whole shape. :func:`schedule_glue` computes the row blocks once per row, inside a
parallel loop over the (fused) rows, and vectorizes the per-element blocks over the last dimension.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import tvm
from tvm import s_tir, te
from tvm import tirx as tir

from lcpaq.backends.common import integer_glue as ig
from lcpaq.backends.common.integer_ops import CODE_DTYPES
from lcpaq.backends.common.code_kernels import _clamp, _dyadic, _i64  # the code kernels' int64 helpers

Shape = Sequence[int]

#: Most lanes a per-element loop is vectorized with (int64: two AVX-512 registers).
MAX_LANES = 16
_INT32_MAX = 2**31 - 1


def _c(v: int) -> Any:
    return tir.const(int(v), "int64")


def _fixed_to_codes(y: Any, mult: int, shift: int, zp: int, qmin: int, qmax: int, out_dtype: str) -> Any:
    """:func:`integer_glue.fixed_to_codes` of int64 ``y``, cast to ``out_dtype``."""
    b = ig.clamp_bound(mult)
    return _clamp(_dyadic(_clamp(y, -b, b), mult, shift) + _c(zp), qmin, qmax).astype(out_dtype)


def _horner(coeffs: Sequence[Any], w: Any, frac: int) -> Any:
    """:func:`integer_glue.horner`: ``coeffs`` lowest degree first (int64 expressions)."""
    h = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        h = ((h * w) >> _c(frac)) + c
    return h


def _check_dtypes(in_dtype: str, out_dtype: str) -> None:
    for d in (in_dtype, out_dtype):
        if d not in CODE_DTYPES:
            raise ValueError(f"integer glue kernels take and make {', '.join(CODE_DTYPES)} codes, got {d!r}")


@dataclass(frozen=True)
class FusedAdd:
    """``integer_ops.qadd(X, R, *params)`` computed where a kernel reads its input (a residual
    or mask add fused into a layer norm or softmax: the int32 sum is never stored). ``R`` has
    ``shape`` (broadcast against ``X``'s, aligned at the right); ``params`` are ``(a_zp, a_mult,
    a_shift, r_zp, r_mult, r_shift, out_zp, qmin, qmax)``."""

    shape: tuple[int, ...]
    dtype: str
    params: tuple[int, ...]


def _term(v: Any, zp: int, mult: int, shift: int) -> Any:
    """One term of ``qadd``: ``requantize(v - zp)`` to int32, as :func:`integer_ref.requantize`."""
    return _clamp(_dyadic(_i64(v) - _c(zp), mult, shift), -(2**31), _INT32_MAX)


def _source(shape: tuple[int, ...], in_dtype: str, add: FusedAdd | None) -> tuple[list[te.Tensor], Callable[..., Any]]:
    """The kernel's input placeholders and how an element of its input is read (int64)."""
    x = te.placeholder(shape, in_dtype, name="X")
    if add is None:
        return [x], lambda *i: _i64(x(*i))
    _check_dtypes(add.dtype, add.dtype)
    r = te.placeholder(tuple(add.shape), add.dtype, name="R")
    a_zp, a_m, a_s, r_zp, r_m, r_s, zp, lo, hi = add.params
    off = len(shape) - len(add.shape)

    def read(*i: Any) -> Any:
        at = [i[off + d] if size != 1 else 0 for d, size in enumerate(add.shape)]
        return _clamp(_term(x(*i), a_zp, a_m, a_s) + _term(r(*at), r_zp, r_m, r_s) + _c(zp), lo, hi)

    return [x, r], read


def _split(shape: Shape) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    shape = tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("integer glue works over the last dimension: the shape needs one")
    return shape, shape[:-1], shape[-1]


def softmax_func(shape: Shape, in_dtype: str, x_zp: int, mult: int, shift: int, out_mult: int, out_shift: int,
                 out_zp: int, qmin: int, qmax: int, out_dtype: str, add: FusedAdd | None = None) -> tvm.tirx.PrimFunc:
    """``Y = integer_glue.qsoftmax(X, x_zp, mult, shift, out_mult, out_shift, out_zp, qmin, qmax, out_dtype)``;
    params ``[X, Y]`` (``[X, R, Y]`` with a fused ``add``). ``max(q) - q`` is ``max(x) - x``: the
    zero point cancels."""
    _check_dtypes(in_dtype, out_dtype)
    shape, lead, n = _split(shape)
    inputs, x = _source(shape, in_dtype, add)
    k = te.reduce_axis((0, n), name="k")
    row_max = te.compute(lead, lambda *r: te.max(x(*r, k), axis=k), name="row_max")
    poly = [_c(c) for c in ig.EXP2_POLY]

    def exp2(*i: Any) -> Any:
        t = tir.min(row_max(*i[:-1]) - x(*i), _c(_INT32_MAX))
        u = _dyadic(t, mult, shift)
        p = _horner(poly, u & _c((1 << ig.EXP_FRAC) - 1), ig.EXP_FRAC)
        return p >> tir.min(u >> _c(ig.EXP_FRAC), _c(62))

    e = te.compute(shape, exp2, name="exp")
    k2 = te.reduce_axis((0, n), name="k")
    row_sum = te.compute(lead, lambda *r: te.sum(e[(*r, k2)], axis=k2), name="row_sum")
    row_recip = te.compute(lead, lambda *r: tir.floordiv(_c(1 << ig.SOFTMAX_RECIP_BITS), row_sum(*r)), name="row_recip")
    y = te.compute(
        shape,
        lambda *i: _fixed_to_codes((e(*i) * row_recip(*i[:-1])) >> _c(ig.SOFTMAX_RECIP_BITS - ig.PROB_BITS),
                                   out_mult, out_shift, out_zp, qmin, qmax, out_dtype),
        name="softmax",
    )
    return te.create_prim_func([*inputs, y])


def layer_norm_func(shape: Shape, in_dtype: str, x_zp: int, frac: int, eps: int, out_zp: int, qmin: int, qmax: int,
                    out_dtype: str, add: FusedAdd | None = None) -> tvm.tirx.PrimFunc:
    """``Y = integer_glue.qlayer_norm(X, x_zp, G, B, frac, eps, out_zp, qmin, qmax, out_dtype)``;
    params ``[X, G, B, Y]`` (``[X, R, G, B, Y]`` with a fused ``add``), ``G`` and ``B`` int64
    ``[n]``, ``n = shape[-1]``.

    ``k = bit_length(max |d|) - LN_NORM_BITS`` becomes two shifts per row, ``e = (d << max(-k, 0))
    >> max(k, 0)`` (one of them is 0). ``eps`` is at most ``LN_MAX_EPS``, so ``eps << -2k``
    stays below 2^62."""
    if not 0 <= int(eps) <= ig.LN_MAX_EPS:
        raise ValueError(f"layer norm epsilon term {eps} is outside [0, {ig.LN_MAX_EPS}]")
    _check_dtypes(in_dtype, out_dtype)
    shape, lead, n = _split(shape)
    inputs, x = _source(shape, in_dtype, add)
    gamma = te.placeholder((n,), "int64", name="G")
    beta = te.placeholder((n,), "int64", name="B")

    def q(*i: Any) -> Any:
        return x(*i) - _c(x_zp)

    ks = te.reduce_axis((0, n), name="k")
    row_sum = te.compute(lead, lambda *r: te.sum(q(*r, ks), axis=ks), name="row_sum")

    def d(*i: Any) -> Any:  # n * (x - mean), exact
        return q(*i) * _c(n) - row_sum(*i[:-1])

    km = te.reduce_axis((0, n), name="k")
    row_absmax = te.compute(lead, lambda *r: te.max(tir.abs(d(*r, km)), axis=km), name="row_absmax")
    j = te.reduce_axis((0, 63), name="j")
    row_bits = te.compute(
        lead, lambda *r: te.sum(tir.Select(row_absmax(*r) >= (_c(1) << _i64(j)), _c(1), _c(0)), axis=j), name="row_bits"
    )
    norm = ig.LN_NORM_BITS
    row_rshift = te.compute(lead, lambda *r: tir.max(row_bits(*r) - _c(norm), _c(0)), name="row_rshift")
    row_lshift = te.compute(lead, lambda *r: tir.max(_c(norm) - row_bits(*r), _c(0)), name="row_lshift")

    def e(*i: Any) -> Any:
        r = i[:-1]
        return (d(*i) << row_lshift(*r)) >> row_rshift(*r)

    kq = te.reduce_axis((0, n), name="k")
    row_sumsq = te.compute(lead, lambda *r: te.sum(e(*r, kq) * e(*r, kq), axis=kq), name="row_sumsq")

    def var(*r: Any) -> Any:
        eps_term = tir.Select(
            row_lshift(*r) == _c(0), _c(eps) >> tir.min(row_rshift(*r) * _c(2), _c(62)), _c(eps) << (row_lshift(*r) * _c(2))
        )
        spread = tir.floordiv(row_sumsq(*r) << _c(2 * ig.LN_SQRT_BITS), _c(n))
        return tir.max(spread + eps_term, _c(1))

    row_var = te.compute(lead, var, name="row_var")  # clamp(var, min=1)
    root = te.compute(lead, lambda *r: _i64(tir.floor(tir.sqrt(row_var(*r).astype("float64")))) + _c(1), name="row_isqrt0")
    for step in range(3):  # integer_glue.isqrt: x = min(x, (x + t // x) // 2)
        root = te.compute(lead, _newton(root, row_var), name=f"row_isqrt{step + 1}")
    row_recip = te.compute(lead, lambda *r: tir.floordiv(_c(1 << ig.LN_RECIP_BITS), root(*r)), name="row_recip")
    xhat_shift = ig.LN_RECIP_BITS - ig.LN_SQRT_BITS - ig.LN_XHAT_BITS

    def out(*i: Any) -> Any:
        xhat = (e(*i) * row_recip(*i[:-1])) >> _c(xhat_shift)
        z = (xhat * gamma[i[-1]]) >> _c(ig.LN_XHAT_BITS)
        y = ((z + beta[i[-1]] + _c(1 << (int(frac) - 1))) >> _c(frac)) + _c(out_zp)
        return _clamp(y, qmin, qmax).astype(out_dtype)

    y = te.compute(shape, out, name="layer_norm")
    return te.create_prim_func([*inputs, gamma, beta, y])


def _newton(x: te.Tensor, t: te.Tensor) -> Any:
    return lambda *r: tir.min(x(*r), tir.floordiv(x(*r) + tir.floordiv(t(*r), x(*r)), _c(2)))


def _lanes(extent: int) -> int:
    """The largest divisor of ``extent`` up to :data:`MAX_LANES` (a tail would make TVM
    scalarize the whole vector loop); 1: not vectorized."""
    return max(v for v in range(1, MAX_LANES + 1) if extent % v == 0)


def _vectorize(sch: s_tir.Schedule, loop: Any) -> Any:
    """Vectorize the innermost ``_lanes(extent)`` iterations of ``loop``; returns the outer loop (or None)."""
    lanes = _lanes(int(sch.get(loop).extent))
    if lanes <= 1:
        return loop
    if lanes == int(sch.get(loop).extent):
        sch.vectorize(loop)
        return None
    outer, inner = sch.split(loop, [None, lanes])
    sch.vectorize(inner)
    return outer


def _is_spatial(sch: s_tir.Schedule, block: Any) -> bool:
    return all(iv.iter_type == 0 for iv in sch.get(block).iter_vars)  # DataPar only


def schedule_glue(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    """CPU schedule of any kernel of this module: the leading (row) loops of the output block
    fused and parallel; every other block computed inside that loop, i.e. once per row (row
    reductions, square roots, reciprocals) or per row's elements (softmax's exponentials, kept
    in cache for the row's sum and output); per-element loops vectorized over the last
    dimension. A kernel of one block (GELU) is scheduled as element-wise: all loops fused."""
    sch = s_tir.Schedule(func)
    *producers, out = sch.get_child_blocks(sch.get_sblock("root"))
    loops = sch.get_loops(out)
    if not producers:
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        outer = _vectorize(sch, fused)
        if outer is not None:
            sch.parallel(outer)
        return sch
    *rows, col = loops
    row = (sch.fuse(*rows) if len(rows) > 1 else rows[0]) if rows else None
    _vectorize(sch, col)
    if row is not None:
        for block in reversed(producers):
            sch.compute_at(block, row, preserve_unit_loops=False)
        sch.parallel(row)
    for block in producers:
        inner = sch.get_loops(block)[0 if row is None else 1:]
        if _is_spatial(sch, block) and inner:
            _vectorize(sch, inner[-1])
    return sch
