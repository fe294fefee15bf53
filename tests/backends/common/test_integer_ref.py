"""The integer oracle: fixed-point requantization, integer dense and conv2d."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from lcpaq.backends.common import integer_ref as ir
from lcpaq.ir.quantizer import QuantSpec, dequantize, qparams_from_range, quantize, weight_qparams

ACT = QuantSpec(8, symmetric=False)
WGT = QuantSpec(8, symmetric=True, ch_axis=0)


def test_quantize_multiplier_is_a_normalised_31_bit_dyadic() -> None:
    gen = torch.Generator().manual_seed(0)
    for real in (10 ** torch.empty(500, dtype=torch.float64).uniform_(-9, 8, generator=gen)).tolist() + [0.5, 1.0, 2**-32, 2**30 - 1]:
        m, s = ir.quantize_multiplier(real)
        assert 2**30 <= m < 2**31 and 1 <= s <= ir.MAX_SHIFT
        assert abs(m * 2.0**-s - real) <= real * 2**-31


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 2.0**30, 2.0**-34])
def test_quantize_multiplier_rejects_unrepresentable(bad: float) -> None:
    with pytest.raises(ValueError, match="scale"):
        ir.quantize_multiplier(bad)


def test_quantize_multiplier_of_zero() -> None:
    assert ir.quantize_multiplier(0.0) == (0, 1)


def test_requantize_is_exact_round_half_up() -> None:
    gen = torch.Generator().manual_seed(1)
    acc = torch.randint(-(2**31), 2**31 - 1, (400,), generator=gen, dtype=torch.int64).to(torch.int32)
    for real in (3.7e-5, 0.013, 0.49, 1.0, 7.25):
        m, s = ir.quantize_multiplier(real)
        got = ir.requantize(acc, m, s, 0, -(2**31), 2**31 - 1)
        exact = (math.floor(Fraction(a * m, 2**s) + Fraction(1, 2)) for a in acc.tolist())
        want = [min(max(v, -(2**31)), 2**31 - 1) for v in exact]
        assert got.tolist() == want


def test_requantize_within_one_lsb_of_float() -> None:
    gen = torch.Generator().manual_seed(2)
    acc = torch.randint(-(2**20), 2**20, (20000,), generator=gen, dtype=torch.int32)
    reals = 10 ** torch.empty(50, dtype=torch.float64).uniform_(-6, -2, generator=gen)
    for real in reals.tolist():
        m, s = ir.quantize_multiplier(real)
        got = ir.requantize(acc, m, s, 0, -(2**31), 2**31 - 1).to(torch.float64)
        want = torch.floor(acc.to(torch.float64) * real + 0.5)
        assert float((got - want).abs().max()) <= 1.0


def test_requantize_ties_go_up_and_saturate() -> None:
    half = (2**30, 31)  # exactly 0.5
    acc = torch.tensor([5, -5, -3, 3, 1000, -1000], dtype=torch.int32)
    assert ir.requantize(acc, *half, out_zero_point=0, qmin=-128, qmax=127).tolist() == [3, -2, -1, 2, 127, -128]
    assert ir.requantize(acc, *half, out_zero_point=10, qmin=0, qmax=255).tolist() == [13, 8, 9, 12, 255, 0]
    qmin, qmax = ir.relu_range(10)
    assert ir.requantize(acc, *half, 10, qmin, qmax).tolist() == [13, 10, 10, 12, 255, 10]


def test_requantize_per_channel() -> None:
    acc = torch.tensor([[4, 4, 4]], dtype=torch.int32)
    m = torch.tensor([2**30, 2**30, 2**30])
    s = torch.tensor([30, 31, 32])  # x1, x0.5, x0.25
    assert ir.requantize(acc, m, s, 0).tolist() == [[4, 2, 1]]
    with pytest.raises(ValueError, match="per-channel"):
        ir.requantize(acc, m[:2], s[:2], 0)


def _quantized_problem(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    x_scale, x_zp = qparams_from_range(x.min(), x.max(), ACT)
    w_scale, _ = weight_qparams(w, WGT)
    x_q = quantize(x, x_scale, x_zp, ACT).to(torch.int32)
    w_q = quantize(w, w_scale, torch.zeros_like(w_scale), WGT).to(torch.int8)
    b_q = torch.round(b / (x_scale * w_scale)).to(torch.int32)
    return x_q, int(x_zp), float(x_scale), w_q, w_scale, b_q


def _dequantized_inputs(x_q, x_zp, x_scale, w_q, w_scale, b_q):
    x_dq = (x_q.double() - x_zp) * x_scale
    w_dq = w_q.double() * w_scale.double().reshape(-1, *([1] * (w_q.dim() - 1)))
    return x_dq, w_dq, b_q.double() * x_scale * w_scale.double()


@pytest.mark.parametrize("relu", [False, True])
def test_dense_matches_float_within_one_lsb(relu: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(16, 64, generator=gen) * 4 - 1
    w = torch.randn(24, 64, generator=gen) * torch.linspace(0.1, 2, 24).reshape(-1, 1)
    b = torch.randn(24, generator=gen)
    x_q, x_zp, x_scale, w_q, w_scale, b_q = _quantized_problem(x, w, b)
    x_dq, w_dq, b_dq = _dequantized_inputs(x_q, x_zp, x_scale, w_q, w_scale, b_q)
    ref = x_dq @ w_dq.T + b_dq
    out_scale, out_zp = qparams_from_range(ref.min(), ref.max(), ACT)
    mult, shift = ir.requant_params(x_scale, w_scale, float(out_scale))
    qmin, qmax = ir.relu_range(int(out_zp)) if relu else (0, 255)
    y_q = ir.dense(x_q, x_zp, w_q, b_q, mult, shift, int(out_zp), qmin, qmax)
    assert y_q.dtype == torch.uint8
    want = torch.clamp(torch.floor(ref / out_scale.double() + 0.5) + out_zp, qmin, qmax)
    assert float((y_q.double() - want).abs().max()) <= 1.0
    # and against the unquantized float layer, within quantization tolerance
    y = dequantize(y_q.float(), out_scale, out_zp, ACT)
    true = x @ w.T + b
    true = torch.relu(true) if relu else true
    assert float((y - true).abs().max()) < 0.05 * float(true.abs().max())


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0), (1, 0)])
def test_conv2d_acc_is_exact(stride: int, padding: int) -> None:
    gen = torch.Generator().manual_seed(4)
    x_q = torch.randint(0, 256, (2, 5, 9, 8), generator=gen, dtype=torch.int32)
    w_q = torch.randint(-127, 128, (7, 5, 3, 3), generator=gen).to(torch.int8)
    b_q = torch.randint(-1000, 1000, (7,), generator=gen, dtype=torch.int32)
    acc = ir.conv2d_acc(x_q, 37, w_q, b_q, stride, padding)
    want = torch.nn.functional.conv2d((x_q - 37).double(), w_q.double(), b_q.double(), stride, padding)
    assert acc.dtype == torch.int32 and torch.equal(acc.double(), want)


@pytest.mark.parametrize("c,o,groups,stride,padding", [(6, 6, 6, 1, 1), (6, 6, 6, 2, 1), (6, 9, 3, 1, 0), (8, 4, 2, 2, 2), (6, 12, 6, 1, 1)])
def test_grouped_conv2d_acc_is_exact(c: int, o: int, groups: int, stride: int, padding: int) -> None:
    gen = torch.Generator().manual_seed(c + o + groups)
    x_q = torch.randint(0, 256, (2, c, 9, 7), generator=gen, dtype=torch.int32)
    w_q = torch.randint(-127, 128, (o, c // groups, 3, 3), generator=gen).to(torch.int8)
    b_q = torch.randint(-1000, 1000, (o,), generator=gen, dtype=torch.int32)
    acc = ir.conv2d_acc(x_q, 201, w_q, b_q, stride, padding, groups)
    want = torch.nn.functional.conv2d((x_q - 201).double(), w_q.double(), b_q.double(), stride, padding, groups=groups)
    assert acc.dtype == torch.int32 and torch.equal(acc.double(), want)


def test_grouped_conv2d_rejects_mismatched_groups() -> None:
    x_q = torch.zeros(1, 6, 4, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="groups=4"):
        ir.conv2d_acc(x_q, 0, torch.zeros(6, 1, 3, 3, dtype=torch.int8), groups=4)
    with pytest.raises(ValueError, match="groups=6"):
        ir.conv2d_acc(x_q, 0, torch.zeros(6, 2, 3, 3, dtype=torch.int8), groups=6)


def test_conv2d_matches_float_within_one_lsb() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(1, 8, 10, 10, generator=gen) * 3 - 0.5
    w = torch.randn(16, 8, 3, 3, generator=gen)
    b = torch.randn(16, generator=gen)
    x_q, x_zp, x_scale, w_q, w_scale, b_q = _quantized_problem(x, w, b)
    x_dq, w_dq, b_dq = _dequantized_inputs(x_q, x_zp, x_scale, w_q, w_scale, b_q)
    ref = torch.nn.functional.conv2d(x_dq, w_dq, b_dq, padding=1)
    out_scale, out_zp = qparams_from_range(ref.min(), ref.max(), ACT)
    mult, shift = ir.requant_params(x_scale, w_scale, float(out_scale))
    y_q = ir.conv2d(x_q, x_zp, w_q, b_q, mult, shift, int(out_zp), padding=1)
    want = torch.clamp(torch.floor(ref / out_scale.double() + 0.5) + out_zp, 0, 255)
    assert float((y_q.double() - want).abs().max()) <= 1.0


def test_identity_weights_reproduce_the_input_exactly() -> None:
    gen = torch.Generator().manual_seed(6)
    x_q = torch.randint(0, 256, (5, 32), generator=gen, dtype=torch.int32)
    eye = torch.eye(32, dtype=torch.int8)
    one = ir.quantize_multiplier(1.0)
    assert torch.equal(ir.dense(x_q, 0, eye, None, *one, out_zp=0).to(torch.int32), x_q)
    assert torch.equal(ir.dense(x_q, 77, eye, None, *one, out_zp=77).to(torch.int32), x_q)
    img = x_q[:4].reshape(1, 4, 4, 8)
    conv_eye = torch.eye(4, dtype=torch.int8).reshape(4, 4, 1, 1)
    assert torch.equal(ir.conv2d(img, 9, conv_eye, None, *one, out_zp=9).to(torch.int32), img)


def test_bad_codes_are_rejected() -> None:
    x_q = torch.zeros(2, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match=r"restricted range \[-127, 127\]"):
        ir.dense_acc(x_q, 0, torch.full((3, 4), -128, dtype=torch.int8))
    with pytest.raises(TypeError, match="integer codes"):
        ir.dense_acc(x_q.float(), 0, torch.zeros(3, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="dense needs"):
        ir.dense_acc(x_q, 0, torch.zeros(3, 5, dtype=torch.int8))


# -- wide (16-bit) layers --------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 12, 20, 31])
def test_quantize_multiplier_of_fewer_bits(bits: int) -> None:
    real = 0.000123456789
    m, s = ir.quantize_multiplier(real, bits)
    assert 2 ** (bits - 1) <= m < 2**bits
    assert abs(m / 2**s - real) <= real * 2.0**-bits


def test_multiplier_bits_keep_the_product_below_2_62() -> None:
    for bound in (1, 2**20, 2**31 - 1, 2**31, 3 * 2**40, 2**59):
        bits = ir.multiplier_bits(bound)
        assert bound * (2**bits - 1) < 2**62 and (bits == 31 or bound * 2 ** (bits + 1) >= 2**62)
    assert ir.multiplier_bits(2**30) == 31 and ir.multiplier_bits(2**40) == 21


def test_wide_dense_is_exact_in_int64_where_int32_overflows() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.full((2, 4608), -(2**15), dtype=torch.int16)
    w = torch.full((3, 4608), 2**15 - 1, dtype=torch.int16)
    acc = ir.dense_acc(x, 5, w, torch.tensor([1, 2, 3]), torch.int64)
    assert acc.dtype == torch.int64 and int(acc[0, 0]) == 4608 * (-(2**15) - 5) * (2**15 - 1) + 1
    with pytest.raises(OverflowError, match="int32"):
        ir.dense_acc(x, 5, w)
    bound = ir.acc_bound(w, 2**15 + 5, torch.tensor([1, 2, 3]))
    assert int(bound[2]) == (2**15 + 5) * (2**15 - 1) * 4608 + 3 and int(bound[0]) >= int(acc.abs().max())
    scales = torch.rand(3, generator=gen, dtype=torch.float64) * 1e-4
    mult, shift = ir.wide_requant_params(3e-5, scales, 0.5, bound)
    y = ir.requantize(acc, mult, shift, 0, -(2**15), 2**15 - 1)
    real = acc.double() * 3e-5 * scales / 0.5
    assert (y.double() - torch.clamp(real, -(2**15), 2**15 - 1)).abs().max() <= 1.0


def test_requantize_refuses_an_int64_product_past_2_62() -> None:
    with pytest.raises(OverflowError, match="fewer bits"):
        ir.requantize(torch.tensor([[2**40]], dtype=torch.int64), 2**30, 40, 0, -(2**15), 2**15 - 1)


def test_wide_codes_are_checked() -> None:
    x16 = torch.zeros(1, 4, dtype=torch.int16)
    with pytest.raises(ValueError, match=r"restricted range \[-32767, 32767\]"):
        ir.dense_acc(x16, 0, torch.full((1, 4), -(2**15), dtype=torch.int16), acc_dtype=torch.int64)


def test_narrow_requantization_bits_and_exactness_in_int32() -> None:
    assert ir.narrow_multiplier_bits(2**18) == 11 and ir.narrow_multiplier_bits(2**19 - 1) == 11
    assert ir.narrow_multiplier_bits(2**20) is None  # 9 bits: too few
    bound = torch.tensor([2**18, 5])
    m, s = torch.tensor([2**11 - 1, 2**11 - 1]), torch.tensor([20, 20])
    assert ir.fits_int32(bound, m, s)  # 2^18 * 2047 + 2^19 < 2^31
    assert not ir.fits_int32(bound, m, torch.tensor([32, 20]))  # a shift past 31 has no int32 rounding term
    assert not ir.fits_int32(torch.tensor([2**20]), torch.tensor([2**11]), torch.tensor([20]))
    assert ir.code_span("uint8", 31) == 224 and ir.code_span("int8", -128) == 255 and ir.code_span("int16", 0) == 2**15
