"""Quantized dense and conv2d built with TVM (VNNI, fused requantization), bit-exact vs the oracle."""
from __future__ import annotations

import pytest
import torch


from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86.vnni import build


def _problem(gen: torch.Generator, x_shape: tuple[int, ...], w_shape: tuple[int, ...]):
    x = torch.randint(0, 256, x_shape, generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, w_shape, generator=gen).to(torch.int8)
    b = torch.randint(-20000, 20000, (w_shape[0],), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (w_shape[0],), generator=gen)
    shift = torch.randint(36, 42, (w_shape[0],), generator=gen)  # outputs spread over the u8 range
    return x, w, b, mult, shift


@pytest.mark.parametrize("m,n,k", [(8, 32, 64), (5, 40, 30), (1, 16, 4), (33, 48, 100)])
@pytest.mark.parametrize("relu", [False, True])
def test_qdense_is_bit_exact(m: int, n: int, k: int, relu: bool) -> None:
    gen = torch.Generator().manual_seed(m + 7 * n + 13 * k)
    x, w, b, mult, shift = _problem(gen, (m, k), (n, k))
    qmin, qmax = ir.relu_range(100) if relu else (0, 255)
    want = ir.dense(x, 31, w, b, mult, shift, 100, qmin, qmax)
    got = t8.qdense(x, 31, w, b, mult, shift, 100, qmin, qmax)
    assert got.dtype == torch.uint8 and torch.equal(got, want)
    assert float(want.float().std()) > 10  # not a saturated, trivially equal output


def test_qdense_per_tensor_params_no_bias_and_clip() -> None:
    gen = torch.Generator().manual_seed(1)
    x, w, _, _, _ = _problem(gen, (4, 64), (16, 64))
    m, s = ir.quantize_multiplier(3.1e-4)
    want = ir.dense(x, 0, w, None, m, s, 128, 20, 200)
    assert torch.equal(t8.qdense(x, 0, w, None, m, s, 128, 20, 200), want)


@pytest.mark.parametrize(
    "x_shape,out_ch,kernel,stride,padding",
    [((1, 8, 9, 9), 16, 3, 1, 1), ((2, 3, 10, 7), 20, 3, 2, 1), ((1, 16, 6, 6), 32, 1, 1, 0), ((1, 4, 5, 5), 16, 5, 1, 2)],
)
def test_qconv2d_is_bit_exact(x_shape, out_ch: int, kernel: int, stride: int, padding: int) -> None:
    gen = torch.Generator().manual_seed(sum(x_shape) + out_ch + kernel)
    x, w, b, mult, shift = _problem(gen, x_shape, (out_ch, x_shape[1], kernel, kernel))
    shift = shift + 1
    qmin, qmax = ir.relu_range(90)
    want = ir.conv2d(x, 17, w, b, mult, shift, 90, qmin, qmax, stride, padding)
    got = t8.qconv2d(x, 17, w, b, mult, shift, 90, qmin, qmax, stride, padding)
    assert got.shape == want.shape and torch.equal(got, want)
    assert float(want.float().std()) > 10


def test_qconv2d_from_float_scales_matches_oracle() -> None:
    """A layer quantized from float scales (what a rewritten graph hands the backend)."""
    gen = torch.Generator().manual_seed(2)
    x, w, b, _, _ = _problem(gen, (1, 12, 8, 8), (16, 12, 3, 3))
    w_scale = torch.rand(16, generator=gen) * 0.01 + 0.001
    mult, shift = ir.requant_params(0.02, w_scale, 2.5)
    want = ir.conv2d(x, 120, w, b, mult, shift, 60, padding=1)
    assert torch.equal(t8.qconv2d(x, 120, w, b, mult, shift, 60, padding=1), want)


def test_qconv2d_kernel_assembly_uses_vpdpbusd() -> None:
    func = t8.qconv2d_func((1, 8, 8, 16), 32, 3, 1, 1)
    assert "vpdpbusd" in build(t8.schedule_qconv2d(func, 8).mod).asm


def test_bad_requant_and_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="uint8 output"):
        t8.Requant(out_zp=10, qmin=200, qmax=100)
    with pytest.raises(ValueError, match="C % 4"):
        t8.qconv2d_func((1, 8, 8, 6), 16, 3, 1, 1)
    with pytest.raises(ValueError, match="larger than the padded input"):
        t8.conv_out_size(2, 5, 1, 0)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_narrow_int32_requantization_is_bit_exact(kind: str) -> None:
    """Small accumulators (16 inputs) and a multiplier narrowed by the integer lowering: the int32
    epilogue gives the reference's codes, ties, ReLU clamp and saturation included."""
    gen = torch.Generator().manual_seed(11)
    shape = (37, 16) if kind == "dense" else (2, 16, 9, 9)
    w_shape = (48, 16) if kind == "dense" else (48, 16, 1, 1)
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, w_shape, generator=gen).to(torch.int8)
    b = torch.randint(-3000, 3000, (48,), generator=gen, dtype=torch.int32)
    bound = ir.acc_bound(w, ir.code_span("uint8", 31), b)
    bits = ir.narrow_multiplier_bits(int(bound.max()))
    assert bits is not None and bits >= ir.NARROW_MIN_BITS
    mult, shift = ir.requant_params(1.0, torch.rand(48, generator=gen, dtype=torch.float64) * 2e-3 + 1e-4, 1.0, bits)
    assert ir.narrow_requant(w, "uint8", 31, b, mult, shift) and int(mult.max()) < 2**bits
    qmin, qmax = ir.relu_range(100)
    if kind == "dense":
        want, got = ir.dense(x, 31, w, b, mult, shift, 100, qmin, qmax), t8.qdense(x, 31, w, b, mult, shift, 100, qmin, qmax, narrow=True)
    else:
        want = ir.conv2d(x, 31, w, b, mult, shift, 100, qmin, qmax)
        got = t8.qconv2d(x, 31, w, b, mult, shift, 100, qmin, qmax, narrow=True)
    assert torch.equal(got, want)
    assert float(want.float().std()) > 10 and int(want.min()) == qmin  # spread out, clamped by the ReLU
