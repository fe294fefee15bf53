"""The integer glue reference (softmax, layer norm, GELU on codes) against float math: each
output within half a code of the exact real result (plus the approximation's own error), and
the integer helpers exact."""
import math

import pytest
import torch

from lcpaq.backends.common import integer_glue as g
from lcpaq.backends.common.integer_ref import quantize_multiplier


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_isqrt_is_the_exact_floor() -> None:
    t = torch.cat([torch.randint(1, 2**62, (20000,), generator=_gen(0)), torch.tensor([1, 2, 3, 4, 2**62 - 1, 2**62])])
    r = g.isqrt(t)
    assert bool(((r * r <= t) & ((r + 1) * (r + 1) > t)).all())


def test_bit_length_and_fixed_point_helpers() -> None:
    m = torch.tensor([0, 1, 2, 3, 255, 256, 2**40 + 1])
    assert g.bit_length(m).tolist() == [0, 1, 2, 2, 8, 9, 41]
    assert g.horner(torch.tensor([3, 2, 1]), torch.tensor([4]), 2).tolist() == [3 + 2 + 1]  # at w = 1.0
    # the clamp keeps y * mult in int64; huge values saturate to the code range
    y = torch.tensor([-(2**62), -5, 0, 5, 2**62])
    mult, shift = quantize_multiplier(0.5)
    assert g.fixed_to_codes(y, mult, shift, 10, 0, 255).tolist() == [0, 8, 10, 13, 255]  # -2.5 -> -2, 2.5 -> 3: half up


def _softmax_case(scale: float, out_scale: float, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mult, shift = quantize_multiplier(scale * 2**g.EXP_FRAC / math.log(2))
    om, osh = quantize_multiplier(2.0**-g.PROB_BITS / out_scale)
    y = g.qsoftmax(x, 0, mult, shift, om, osh, 0, 0, 255)
    return y.double(), torch.softmax(x.double() * scale, -1) / out_scale


def test_softmax_within_half_a_code() -> None:
    x = torch.randint(-20000, 20000, (4, 3, 16, 16), generator=_gen(1), dtype=torch.int32)
    y, ref = _softmax_case(2e-4, 1 / 255, x)
    assert float((y - ref).abs().max()) <= 0.5 + 1e-3


def test_softmax_ignores_a_saturated_mask() -> None:
    """A masked position (code INT32_MIN, from an additive -3.4e38) gets probability 0."""
    x = torch.randint(-2000, 2000, (2, 8), generator=_gen(2), dtype=torch.int32)
    masked = x.clone()
    masked[:, 5:] = -(2**31)
    y, _ = _softmax_case(1e-3, 1 / 255, masked)
    _, ref = _softmax_case(1e-3, 1 / 255, x[:, :5])
    assert y[:, 5:].abs().max() == 0
    assert float((y[:, :5] - ref).abs().max()) <= 0.5 + 1e-3


@pytest.mark.parametrize("low_range", [False, True])
def test_layer_norm_within_half_a_code(low_range: bool) -> None:
    n, out_scale, frac = 96, 0.05, 20
    gen = _gen(3)
    if low_range:  # 8-bit codes around a zero point: the mean is subtracted exactly
        x, x_zp, x_scale = torch.randint(100, 104, (3, 5, n), generator=gen, dtype=torch.int32), 101, 0.02
    else:
        x, x_zp, x_scale = torch.randint(-(2**24), 2**24, (3, 5, n), generator=gen, dtype=torch.int32), 0, 1e-6
    gamma, beta = torch.rand(n, generator=gen, dtype=torch.float64) * 2, torch.randn(n, generator=gen, dtype=torch.float64) * 0.1
    gq = torch.round(gamma / out_scale * 2**frac).long()
    bq = torch.round(beta / out_scale * 2**frac).long()
    eps = min(round(1e-12 * n * n * 2 ** (2 * g.LN_SQRT_BITS) / x_scale**2), g.LN_MAX_EPS)  # as integerize clamps it
    y = g.qlayer_norm(x, x_zp, gq, bq, frac, eps, 128, 0, 255).double()
    real = torch.nn.functional.layer_norm((x.double() - x_zp) * x_scale, (n,), gamma, beta, 1e-12)
    assert float((y - (real / out_scale + 128).clamp(0, 255)).abs().max()) <= 0.51


def test_layer_norm_of_a_constant_row_is_beta() -> None:
    n = 16
    x = torch.full((1, n), 77, dtype=torch.int32)
    beta = torch.arange(n, dtype=torch.int64) << 10
    y = g.qlayer_norm(x, 0, torch.full((n,), 5 << 10), beta, 10, 1, 0, -(2**31), 2**31 - 1, "int32")
    assert y.tolist() == [list(range(n))]


def test_gelu_within_half_a_code_and_exact_at_the_edges() -> None:
    x_scale, out_scale = 1e-4, 0.02
    x = torch.cat([torch.randint(-80000, 80000, (4000,), generator=_gen(4), dtype=torch.int32),
                   torch.tensor([0, 40000, -40000, 2**31 - 1, -(2**31)], dtype=torch.int32)])
    mult, shift = quantize_multiplier(x_scale * 2**g.GELU_FRAC)
    om, osh = quantize_multiplier(2.0**-g.GELU_FRAC / out_scale)
    y = g.qgelu(x, 0, mult, shift, g.GELU_TABLE, om, osh, 20, 0, 255).double()
    ref = (torch.nn.functional.gelu(x.double() * x_scale) / out_scale + 20).clamp(0, 255)
    assert float((y - ref).abs().max()) <= 0.5 + 1e-3
    assert y[-5:].tolist() == [20, ref[-4].round().item(), 20, 255, 20]  # 0, +-4, saturation


def test_gelu_polynomial_fits_int32_and_is_within_its_bound() -> None:
    """Over every ``|v|`` up to past the edge (at 2^-GELU_FRAC): the segment is ``a //
    GELU_SEG_WIDTH``, each Horner product and sum of ``R(a) = a * Phi(-a)`` fits int32 (the kernel
    computes them in int32), and ``R`` rounded to 2^-GELU_FRAC is within 7.6e-6 of the exact one."""
    v = torch.arange(0, g.GELU_EDGE + (1 << 16), dtype=torch.int64)
    a = torch.clamp(v, max=g.GELU_EDGE - 1) >> g.GELU_ARG_SHIFT
    j = g.gelu_segment(a)
    assert torch.equal(j, a // g.GELU_SEG_WIDTH)
    c = g.gelu_coefficients(g.GELU_TABLE.to(torch.int64)[j])
    assert torch.equal(g.gelu_coefficients(g.GELU_TABLE.to(torch.int64))[3],
                       g.GELU_TABLE[:, 3].to(torch.int16).to(torch.int64))  # the kernel's unpacking
    w = a - j * g.GELU_SEG_WIDTH - g.GELU_SEG_WIDTH // 2
    h, widest = c[-1], 0
    for k in range(len(c) - 2, -1, -1):
        p = h * w
        h = (p >> g.GELU_SHIFTS[k]) + c[k]
        widest = max(widest, int(p.abs().max()), int(h.abs().max()))
    assert widest < 2**31
    x = v.double() / 2**g.GELU_FRAC
    exact = x * torch.special.erfc(x / math.sqrt(2)) / 2
    assert float(((h >> g.GELU_OUT_SHIFT).double() / 2**g.GELU_FRAC - exact).abs().max()) <= 7.6e-6
