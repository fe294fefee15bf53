"""Integer-only transformer glue, after I-BERT: softmax, layer norm and GELU on integer codes.

These are ops of the integer graph (see :mod:`lcpaq.backends.common.integerize`), and running
them *is* the integer reference: int64 arithmetic only (adds, multiplies, arithmetic shifts,
floor divisions, min / max), each op over the last dimension of its input. Backends lower each
to a kernel computing the same bits (:mod:`lcpaq.backends.common.glue_kernels`). Every constant
a kernel needs (fixed-point multipliers, polynomial tables) is computed once when the graph is
made, in Python, and passed in; so a kernel and this reference cannot disagree about them.

- **softmax**: ``x - max`` is turned into a base-2 exponent in fixed point (``EXP_FRAC``
  fraction bits), ``2^-frac`` is a degree-5 polynomial (``EXP2_POLY``, error 5e-8), the
  integer part is a right shift (I-BERT's ``i-exp`` with a better polynomial); probabilities
  are ``e`` times one reciprocal of ``sum(e)`` per row (a floor division), then requantized
  to the output codes.
- **layer norm**: the mean is subtracted exactly (``n * x - sum(x)``), each row is normalised
  by a power of two to ``LN_NORM_BITS`` bits, its standard deviation is an integer square root
  (Newton's method, exact floor), and ``gamma / sigma`` is a multiply by one reciprocal per row
  (a floor division per row, none per element: kernels vectorize).
- **GELU**: ``relu(x) - R(|x|)`` with ``R(a) = a * Phi(-a)`` (``x * Phi(x)`` exactly), ``R`` a
  quartic per segment of 5/8 on ``|x| < 5`` (``GELU_TABLE``; ``R`` within 7.6e-6, see there),
  evaluated in int32 (kernels run all but the input and output scaling in 32-bit lanes).

Softmax and GELU outputs go through :func:`fixed_to_codes`: a clamp that keeps the dyadic
multiply in int64, round half up, then the zero point and the output range. The one float
operation is the starting guess of the integer square root, which Newton's method corrects to
the exact floor whatever the guess (so it does not affect the result).
"""
from __future__ import annotations

import torch

from lcpaq.backends.common.integer_ops import CODE_DTYPES, qadd

#: Fraction bits of the softmax's base-2 exponent ``(max - x) * scale / ln 2``.
EXP_FRAC = 16
#: ``2^-phi`` for ``phi`` in [0, 1) as a polynomial in ``phi`` (lowest degree first), at 2^30.
EXP2_POLY = (1073741765, -744256846, 257890763, -59377501, 9890102, -1017428)
#: Layer norm: each row's centred values are scaled by a power of two to this many bits ...
LN_NORM_BITS = 14
#: ... and its standard deviation is computed with this many fraction bits.
LN_SQRT_BITS = 10
#: ``2^LN_RECIP_BITS // sigma`` is each row's reciprocal; ``x_hat`` has ``LN_XHAT_BITS`` fraction bits.
LN_RECIP_BITS = 46
LN_XHAT_BITS = 20
#: Largest epsilon term: shifted left by up to ``2 * LN_NORM_BITS`` it stays below 2^62.
LN_MAX_EPS = 2**33
#: Largest layer-norm width: ``n * 2^(2 * (LN_NORM_BITS + LN_SQRT_BITS))`` must fit int64.
LN_MAX_WIDTH = 2**14
#: Fraction bits of GELU's fixed point: its input ``v`` and its output ``y``.
GELU_FRAC = 20
#: ``R``'s argument is ``min(|v|, GELU_EDGE - 1) >> GELU_ARG_SHIFT`` (at 2^-16), in segments
#: ``GELU_SEG_WIDTH`` wide (5/8), ``GELU_SEGMENTS`` of them: from ``|x| = 5`` on, ``R`` is its value
#: at the edge (``R(5) = 1.4e-6``, the polynomial gives 1.9e-6).
GELU_ARG_SHIFT = 4
GELU_SEG_WIDTH = 5 << 13
GELU_SEGMENTS = 8
GELU_EDGE = (GELU_SEGMENTS * GELU_SEG_WIDTH) << GELU_ARG_SHIFT
#: Row ``j`` of ``GELU_TABLE``: ``R`` on segment ``j`` as a quartic, ``R = sum_k C[k] *
#: 2^-GELU_COEF_FRAC[k] * (w / 2^15)^k`` with ``w`` the argument's offset from the segment's centre
#: (in [-2^14.3, 2^14.3]); the row is ``C[0], C[1], C[2]`` and ``C[3]``, ``C[4]`` as the low and high
#: 16-bit halves of one int32 (:func:`gelu_coefficients`: one table lookup fewer per element).
#: Horner's rule is ``h = ((h * w) >> GELU_SHIFTS[k]) + C[k]``: every product and sum fits int32
#: (2^30.93 at most, checked over every argument). ``h`` ends at 2^33 and ``C[0]`` includes 2^12,
#: so ``h >> GELU_OUT_SHIFT`` is ``R`` rounded half up to 2^-20. Fit offline (numpy): per segment
#: a minimax quartic of ``R`` at the middle of the 16 values of ``|v|`` that share an argument,
#: quantized from the top coefficient down with the lower ones refitted (minimax), then ``C[1]``
#: and ``C[0]`` adjusted against the exact integer evaluation. Over every ``|v|`` the result is
#: within 7.6e-6 of ``R(|v| / 2^20)`` (up to 3.6e-6 of it the argument's truncation to 2^-16,
#: worst near 0 where ``R' = 1/2``; 1.9e-6 far past the edge).
GELU_COEF_FRAC = (33, 19, 20, 20, 23)
GELU_SHIFTS = tuple(GELU_COEF_FRAC[k + 1] + 15 - GELU_COEF_FRAC[k] for k in range(len(GELU_COEF_FRAC) - 1))
GELU_OUT_SHIFT = GELU_COEF_FRAC[0] - GELU_FRAC
GELU_TABLE = torch.tensor([
    [1012904524, 67803, -94719, 1768892034],
    [1403253300, -17486, -37785, -476758257],
    [793026393, -32722, 6801, -1176889159],
    [269700037, -17151, 13313, -353240284],
    [59383064, -4991, 5923, 115079399],
    [8671115, -899, 1395, 94567798],
    [852083, -104, 197, 24838022],
    [58503, -7, 18, 3538930],
], dtype=torch.int32)
#: Softmax probabilities are ``(e << PROB_BITS) // sum(e)`` before requantization.
PROB_BITS = 24
#: ... computed as ``e * (2^SOFTMAX_RECIP_BITS // sum(e)) >> (SOFTMAX_RECIP_BITS - PROB_BITS)``.
SOFTMAX_RECIP_BITS = 61

def clamp_bound(mult: int) -> int:
    """The largest ``|y|`` :func:`fixed_to_codes` multiplies by ``mult`` (``|y| * mult <= 2^62``)."""
    return (1 << 62) // max(int(mult), 1)


def fixed_to_codes(y: torch.Tensor, mult: int, shift: int, zp: int, qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(((clamp(y, -B, B) * mult + 2^(shift-1)) >> shift) + zp, qmin, qmax)`` (int64),
    ``B = clamp_bound(mult)``: exact whenever ``|y| * mult / 2^shift`` stays below 2^(62 - shift)
    (for ``shift <= 53`` every clamped value lands outside an 8-bit code range anyway)."""
    b = clamp_bound(mult)
    r = (torch.clamp(y, -b, b) * int(mult) + (1 << (int(shift) - 1))) >> int(shift)
    return torch.clamp(r + int(zp), int(qmin), int(qmax))


def horner(coeffs: torch.Tensor, w: torch.Tensor, frac: int) -> torch.Tensor:
    """``sum_i coeffs[..., i] * (w / 2^frac)^i`` in the coefficients' fixed point, by Horner's
    rule with a floor shift after each multiply; ``coeffs`` [..., d] broadcasts against ``w``."""
    h = coeffs[..., -1]
    for i in range(coeffs.shape[-1] - 2, -1, -1):
        h = ((h * w) >> frac) + coeffs[..., i]
    return h


def bit_length(m: torch.Tensor) -> torch.Tensor:
    """Bits of non-negative int64 ``m`` (0 for 0): how many of 2^0 .. 2^62 it reaches."""
    powers = torch.tensor([1 << j for j in range(63)], dtype=torch.int64)
    return (m.unsqueeze(-1) >= powers).sum(-1)


def isqrt(t: torch.Tensor) -> torch.Tensor:
    """``floor(sqrt(t))`` of int64 ``t >= 1``: a float64 guess plus one (>= the floor, at most
    3 above it), then three integer Newton steps ``x = min(x, (x + t // x) // 2)``, each of
    which lowers any ``x`` above the floor and keeps the floor."""
    x = torch.floor(torch.sqrt(t.double())).long() + 1
    for _ in range(3):
        x = torch.minimum(x, (x + t // x) // 2)
    return x


def _out(y: torch.Tensor, out_dtype: str) -> torch.Tensor:
    if out_dtype not in CODE_DTYPES:
        raise ValueError(f"integer glue outputs {', '.join(CODE_DTYPES)}, got {out_dtype!r}")
    return y.to(getattr(torch, out_dtype))


def fused_input(x: torch.Tensor, add: tuple | None) -> torch.Tensor:
    """``x``, or with ``add = (b, *params)`` the residual or mask add ``integer_ops.qadd(x, b,
    *params)`` a glue op reads (fused into it: the sum is never stored)."""
    return x if add is None else qadd(x, add[0], *add[1:], out_dtype="int32")


def qsoftmax(x: torch.Tensor, x_zp: int, mult: int, shift: int, out_mult: int, out_shift: int,
             out_zp: int, qmin: int, qmax: int, out_dtype: str = "uint8", add: tuple | None = None) -> torch.Tensor:
    """Softmax over the last dimension of codes ``x`` (plus ``add``, see :func:`fused_input`);
    ``(mult, shift)`` is the dyadic form of ``scale * 2^EXP_FRAC / ln 2`` and ``(out_mult,
    out_shift)`` that of ``2^-PROB_BITS / out_scale``."""
    q = fused_input(x, add).to(torch.int64) - int(x_zp)
    t = torch.clamp(q.amax(-1, keepdim=True) - q, max=2**31 - 1)
    u = (t * int(mult) + (1 << (int(shift) - 1))) >> int(shift)
    p = horner(torch.tensor(EXP2_POLY, dtype=torch.int64), u & ((1 << EXP_FRAC) - 1), EXP_FRAC)
    e = p >> torch.clamp(u >> EXP_FRAC, max=62)
    inv = (1 << SOFTMAX_RECIP_BITS) // e.sum(-1, keepdim=True)  # one division per row
    prob = (e * inv) >> (SOFTMAX_RECIP_BITS - PROB_BITS)
    return _out(fixed_to_codes(prob, out_mult, out_shift, out_zp, qmin, qmax), out_dtype)


def qlayer_norm(x: torch.Tensor, x_zp: int, gamma: torch.Tensor, beta: torch.Tensor, frac: int, eps: int,
                out_zp: int, qmin: int, qmax: int, out_dtype: str = "uint8", add: tuple | None = None) -> torch.Tensor:
    """Layer norm over the last dimension (width ``n``) of codes ``x`` (plus ``add``, see
    :func:`fused_input`). ``gamma`` / ``beta`` [n]
    are ``gamma / out_scale`` and ``beta / out_scale`` at 2^``frac``; ``eps`` is
    ``eps * n^2 * 2^(2 * LN_SQRT_BITS) / x_scale^2`` (the real epsilon in the units the
    variance is computed in, before the row's power-of-two normalisation), at most ``LN_MAX_EPS``."""
    if not 0 <= int(eps) <= LN_MAX_EPS:
        raise ValueError(f"layer norm epsilon term {eps} is outside [0, {LN_MAX_EPS}]")
    n = x.shape[-1]
    q = fused_input(x, add).to(torch.int64) - int(x_zp)
    d = q * n - q.sum(-1, keepdim=True)  # n * (x - mean), exact
    k = bit_length(d.abs().amax(-1, keepdim=True)) - LN_NORM_BITS
    e = torch.where(k >= 0, d >> torch.clamp(k, min=0), d << torch.clamp(-k, min=0))
    eps_term = torch.where(k >= 0, int(eps) >> torch.clamp(2 * k, min=0, max=62), int(eps) << torch.clamp(-2 * k, min=0))
    var = ((e * e).sum(-1, keepdim=True) << (2 * LN_SQRT_BITS)) // n + eps_term
    inv = (1 << LN_RECIP_BITS) // isqrt(torch.clamp(var, min=1))  # one division per row
    xhat = (e * inv) >> (LN_RECIP_BITS - LN_SQRT_BITS - LN_XHAT_BITS)
    z = (xhat * gamma.to(torch.int64)) >> LN_XHAT_BITS
    y = ((z + beta.to(torch.int64) + (1 << (int(frac) - 1))) >> int(frac)) + int(out_zp)
    return _out(torch.clamp(y, int(qmin), int(qmax)), out_dtype)


def gelu_segment(a):  # noqa: ANN001, ANN201 (a tensor or a TVM expression)
    """``a // GELU_SEG_WIDTH`` for ``0 <= a < GELU_SEGMENTS * GELU_SEG_WIDTH``, without a division:
    ``((a >> 13) * 13) >> 6`` (``(t * 13) >> 6 == t // 5`` for every ``t < 64``)."""
    return ((a >> 13) * 13) >> 6


def gelu_coefficients(row: torch.Tensor) -> list[torch.Tensor]:
    """``C[0] .. C[4]`` of rows of :data:`GELU_TABLE` (``[..., 4]``, int64)."""
    packed = row[..., 3]
    return [row[..., 0], row[..., 1], row[..., 2], ((packed & 0xFFFF) ^ 0x8000) - 0x8000, packed >> 16]


def qgelu(x: torch.Tensor, x_zp: int, mult: int, shift: int, table: torch.Tensor, out_mult: int, out_shift: int,
          out_zp: int, qmin: int, qmax: int, out_dtype: str = "uint8") -> torch.Tensor:
    """GELU (erf form) of codes ``x``; ``(mult, shift)`` is the dyadic form of
    ``scale * 2^GELU_FRAC``, ``table`` is :data:`GELU_TABLE` and ``(out_mult, out_shift)`` that
    of ``2^-GELU_FRAC / out_scale``. ``GELU(v) = relu(v) - R(|v|)``, ``R(a) = a * Phi(-a)``:
    ``R`` is subtracted, not multiplied, so its error is the output's (not scaled by ``|v|``);
    ``y`` is within 8.1e-6 of the exact GELU of the input (``R``'s 7.6e-6 and ``v``'s rounding),
    before :func:`fixed_to_codes` (whose clamp bounds ``y``). ``v`` and ``y`` are int64, ``R``'s
    evaluation fits int32."""
    q = x.to(torch.int64) - int(x_zp)
    v = (q * int(mult) + (1 << (int(shift) - 1))) >> int(shift)
    a = torch.clamp(v.abs(), max=GELU_EDGE - 1) >> GELU_ARG_SHIFT
    j = gelu_segment(a)
    c = gelu_coefficients(table.to(torch.int64)[j])
    w = a - j * GELU_SEG_WIDTH - GELU_SEG_WIDTH // 2  # offset from the segment's centre
    h = c[-1]
    for k in range(len(c) - 2, -1, -1):
        h = ((h * w) >> GELU_SHIFTS[k]) + c[k]
    y = torch.clamp(v, min=0) - (h >> GELU_OUT_SHIFT)
    return _out(fixed_to_codes(y, out_mult, out_shift, out_zp, qmin, qmax), out_dtype)


#: The glue ops; each clamps its output to its (qmin, qmax) arguments.
GLUE_OPS = (qsoftmax, qlayer_norm, qgelu)
