"""Grouped (not depthwise) int8 conv2d on the windowed VNNI kernel, bit-exact vs integer_ref.conv2d."""
from __future__ import annotations

import pytest
import torch

from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.x86 import int8_grouped as gw
from lcpaq.backends.x86.int8 import schedule_qconv2d
from lcpaq.backends.x86.vnni import build


def _problem(gen: torch.Generator, x_shape: tuple[int, ...], out_ch: int, groups: int, kernel: tuple[int, int]):
    x = torch.randint(0, 256, x_shape, generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (out_ch, x_shape[1] // groups, *kernel), generator=gen).to(torch.int8)
    b = torch.randint(-20000, 20000, (out_ch,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (out_ch,), generator=gen)
    shift = torch.randint(36, 40, (out_ch,), generator=gen)  # outputs spread over the u8 range
    return x, w, b, mult, shift


@pytest.mark.parametrize(
    "x_shape,out_ch,groups,kernel,stride,padding",
    [
        ((1, 128, 7, 7), 128, 32, (3, 3), 1, 1),  # ResNeXt 32x4d: 4 channels a group, 4 groups a block
        ((1, 64, 9, 9), 64, 32, (3, 3), 2, 1),  # 2 channels a group
        ((1, 32, 8, 8), 32, 4, (3, 3), 1, 1),  # 8 a group: 2 groups a block
        ((2, 64, 6, 5), 96, 2, (1, 1), 1, 0),  # 48 outputs a group: 3 blocks inside each group
        ((1, 12, 7, 5), 15, 3, (3, 3), 1, 1),  # 5 outputs a group: regrouped to 8
        ((1, 6, 5, 5), 12, 2, (1, 3), 1, 1),  # 3 inputs a group: regrouped to 4; a 1x3 kernel
        ((1, 24, 6, 6), 48, 2, (3, 3), 1, 1),  # 24 outputs a group: regrouped to 32
        ((1, 16, 6, 6), 32, 16, (3, 3), 1, 1),  # depthwise with channel multiplier 2
    ],
)
def test_grouped_conv_is_bit_exact(x_shape, out_ch, groups, kernel, stride, padding) -> None:
    gen = torch.Generator().manual_seed(sum(x_shape) + out_ch + groups)
    x, w, b, mult, shift = _problem(gen, x_shape, out_ch, groups, kernel)
    qmin, qmax = ir.relu_range(90)
    want = ir.conv2d(x, 17, w, b, mult, shift, 90, qmin, qmax, stride, padding, groups=groups)
    got = gw.qgrouped(x, 17, w, b, mult, shift, 90, qmin, qmax, stride, padding, groups)
    assert got.shape == want.shape and torch.equal(got, want)
    assert float(want.float().std()) > 10 and int(want.min()) == qmin  # spread, and the clamp is active


def test_grouped_conv_int32_output_without_bias() -> None:
    gen = torch.Generator().manual_seed(7)
    x, w, _, _, _ = _problem(gen, (1, 32, 6, 6), 32, 8, (3, 3))
    m, s = ir.quantize_multiplier(0.37)
    lo, hi = ir.INT32_MIN, ir.INT32_MAX
    want = ir.requantize(ir.conv2d_acc(x, 41, w, None, 1, 1, groups=8), m, s, -7, lo, hi)
    got = gw.qgrouped(x, 41, w, None, m, s, -7, lo, hi, 1, 1, 8, out_dtype="int32")
    assert got.dtype == torch.int32 and torch.equal(got, want)
    assert int(want.min()) < 0 < int(want.max())


@pytest.mark.parametrize(
    "c,o,groups,plan",
    [
        (128, 128, 32, (4, 4, 4, 4, 16, 128, 128)),  # (cg, og, cg_p, og_p, window, in, out channels)
        (64, 96, 2, (32, 48, 32, 48, 32, 64, 96)),
        (12, 15, 3, (4, 5, 4, 8, 8, 16, 32)),  # 3 groups of 8 outputs: 2 blocks, the 2nd reads groups 2-3
        (6, 12, 2, (3, 6, 4, 8, 8, 8, 16)),
    ],
)
def test_group_plan_by_hand(c, o, groups, plan) -> None:
    p = gw.group_plan(c, o, groups)
    assert (p.cg, p.og, p.cg_p, p.og_p, p.win, p.in_channels, p.out_channels) == plan


def test_grouped_kernel_uses_vpdpbusd() -> None:
    plan = gw.group_plan(128, 128, 32)
    assert "vpdpbusd" in build(schedule_qconv2d(gw.qgrouped_func((1, 8, 8, 128), plan, 3, 1, 1), 8).mod).asm


def test_bad_groups_are_rejected() -> None:
    with pytest.raises(ValueError, match="divisible by groups"):
        gw.group_plan(30, 32, 4)
    with pytest.raises(ValueError, match="input channels"):
        gw.qgrouped_func((1, 8, 8, 8), gw.group_plan(16, 16, 4), 3, 1, 1)
