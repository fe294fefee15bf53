"""Quantized depthwise conv2d built with TVM (AVX-512, fused requantization), bit-exact vs the oracle."""
from __future__ import annotations

import pytest
import torch


from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.common import cpu_depthwise as cd
from lcpaq.backends.x86 import int8_depthwise as dw


def _problem(gen: torch.Generator, x_shape: tuple[int, int, int, int], kernel: int):
    c = x_shape[1]
    x = torch.randint(0, 256, x_shape, generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (c, 1, kernel, kernel), generator=gen).to(torch.int8)
    b = torch.randint(-5000, 5000, (c,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (c,), generator=gen)
    shift = torch.randint(36, 39, (c,), generator=gen)  # outputs spread over the u8 range
    return x, w, b, mult, shift


@pytest.mark.parametrize(
    "x_shape,kernel,stride,padding,x_zp",
    [
        ((1, 32, 9, 9), 3, 1, 1, 17),
        ((1, 32, 9, 9), 3, 2, 1, 200),
        ((2, 24, 11, 7), 3, 2, 1, 3),  # C not a multiple of 16, odd spatial sizes
        ((1, 24, 13, 5), 3, 1, 0, 0),
        ((1, 16, 8, 8), 5, 1, 2, 128),
    ],
)
@pytest.mark.parametrize("relu", [False, True])
def test_qdepthwise_is_bit_exact(x_shape, kernel: int, stride: int, padding: int, x_zp: int, relu: bool) -> None:
    gen = torch.Generator().manual_seed(sum(x_shape) + 10 * kernel + stride + x_zp)
    x, w, b, mult, shift = _problem(gen, x_shape, kernel)
    qmin, qmax = ir.relu_range(90) if relu else (0, 255)
    want = ir.conv2d(x, x_zp, w, b, mult, shift, 90, qmin, qmax, stride, padding, groups=x_shape[1])
    got = dw.qdepthwise(x, x_zp, w, b, mult, shift, 90, qmin, qmax, stride, padding)
    assert got.dtype == torch.uint8 and got.shape == want.shape and torch.equal(got, want)
    assert float(want.float().std()) > 10  # not a saturated, trivially equal output
    if relu:
        assert int(want.min()) == qmin  # the clamp is active


def test_qdepthwise_int32_output_and_per_tensor_params() -> None:
    gen = torch.Generator().manual_seed(3)
    x, w, b, _, _ = _problem(gen, (1, 24, 9, 11), 3)
    m, s = ir.quantize_multiplier(0.37)
    lo, hi = ir.INT32_MIN, ir.INT32_MAX
    acc = ir.conv2d_acc(x, 41, w, b, stride=2, padding=1, groups=24)
    want = ir.requantize(acc, m, s, -7, lo, hi)
    got = dw.qdepthwise(x, 41, w, b, m, s, -7, lo, hi, stride=2, padding=1, out_dtype="int32")
    assert got.dtype == torch.int32 and torch.equal(got, want)
    assert int(want.min()) < 0 < int(want.max())  # outside the u8 range both ways


def test_qdepthwise_without_bias_matches_oracle() -> None:
    gen = torch.Generator().manual_seed(4)
    x, w, _, mult, shift = _problem(gen, (1, 48, 6, 6), 3)
    want = ir.conv2d(x, 9, w, None, mult, shift, 128, 20, 200, 1, 1, groups=48)
    assert torch.equal(dw.qdepthwise(x, 9, w, None, mult, shift, 128, 20, 200, 1, 1), want)


def test_qdepthwise_kernel_is_vectorized_16_wide() -> None:
    asm = dw.build_qdepthwise((1, 8, 8, 32), 3, 1, 1).asm
    assert "zmm" in asm


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="C % 16"):
        cd.qdepthwise_func((1, 8, 8, 24), 3, 1, 1)
    with pytest.raises(ValueError, match="square w"):
        dw.qdepthwise(torch.zeros(1, 8, 6, 6, dtype=torch.int32), 0, torch.zeros(8, 2, 3, 3, dtype=torch.int8), None, 1, 1, 0)
    with pytest.raises(ValueError, match="does not divide"):
        cd.schedule_qdepthwise(cd.qdepthwise_func((1, 7, 7, 16), 3, 1, 1), tile=2)
    with pytest.raises(ValueError, match="out_dtype"):
        cd.qdepthwise_func((1, 8, 8, 16), 3, 1, 1, out_dtype="float32")
