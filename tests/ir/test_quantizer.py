import pytest
import torch

from lcpaq.ir.meta import BitAssignment
from lcpaq.ir.qops import FakeQuantize
from lcpaq.ir.quantizer import QuantSpec, fake_quantize, qparams_from_range, quantization_error, weight_qparams

BITS = [2, 3, 4, 5, 6, 7, 8, 16]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("ch_axis", [None, 0])
def test_error_within_half_a_step(bits: int, symmetric: bool, ch_axis: int | None) -> None:
    x = torch.randn(16, 64) * torch.linspace(0.1, 5, 16)[:, None] + 0.3
    spec = QuantSpec(bits, symmetric, ch_axis)
    scale, zp = weight_qparams(x, spec)
    err = (fake_quantize(x, scale, zp, spec) - x).abs()
    bound = scale[:, None] if ch_axis == 0 else scale
    assert torch.all(err <= bound / 2 * (1 + 1e-5) + 1e-7)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_number_of_levels(bits: int, symmetric: bool) -> None:
    x = torch.linspace(-3, 5, 200_001)
    spec = QuantSpec(bits, symmetric)
    scale, zp = weight_qparams(x, spec)
    levels = torch.unique(fake_quantize(x, scale, zp, spec)).numel()
    assert levels <= spec.qmax - spec.qmin + 1
    assert levels >= (spec.qmax - spec.qmin + 1) * (0.5 if symmetric else 1.0) - 1


def test_exact_at_16_bits_symmetric() -> None:
    x = torch.arange(-32767, 32768, dtype=torch.float32)
    spec = QuantSpec(16, symmetric=True)
    scale, zp = weight_qparams(x, spec)
    assert float(scale) == 1.0
    assert torch.equal(fake_quantize(x, scale, zp, spec), x)


def test_exact_at_16_bits_asymmetric() -> None:
    x = torch.arange(0, 65536, dtype=torch.float32) * 0.25 - 100.0  # a grid the quantizer can hit
    spec = QuantSpec(16, symmetric=False)
    scale, zp = qparams_from_range(x.min(), x.max(), spec)
    assert float(scale) == pytest.approx(0.25)
    assert torch.allclose(fake_quantize(x, scale, zp, spec), x, atol=1e-3, rtol=0)


def test_16_bits_far_better_than_8() -> None:
    w = torch.randn(64, 128)
    e8 = quantization_error(w, QuantSpec(8, True, 0))
    e16 = quantization_error(w, QuantSpec(16, True, 0))
    assert e16 < e8 / 60_000  # each extra bit divides the error power by 4: 4**8 = 65536


def test_fake_quantize_is_idempotent() -> None:
    x = torch.randn(1000)
    spec = QuantSpec(4, symmetric=False)
    scale, zp = weight_qparams(x, spec)
    once = fake_quantize(x, scale, zp, spec)
    assert torch.equal(fake_quantize(once, scale, zp, spec), once)


def test_asymmetric_zero_is_exact() -> None:
    spec = QuantSpec(3, symmetric=False)
    scale, zp = qparams_from_range(torch.tensor(-0.37), torch.tensor(2.9), spec)
    assert float(fake_quantize(torch.zeros(1), scale, zp, spec)) == 0.0


def test_straight_through_gradient() -> None:
    q = FakeQuantize.for_range(-1.0, 1.0, QuantSpec(4, symmetric=True))
    x = torch.linspace(-0.9, 0.9, 11, requires_grad=True)
    q(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("bits", [0, 1, 9, 12, 17, 64])
def test_unsupported_bits_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        QuantSpec(bits)
    with pytest.raises(ValueError, match="unsupported"):
        BitAssignment(bits, 8)
