"""Wide (16-bit) dense and conv2d on vpdpwssd, bit-exact against the integer reference, including
the codes that reach every chunk's int32 bound."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lcpaq.backends.common import gemm_te
from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.common import wide_te
from lcpaq.backends.x86 import int16 as k16
from lcpaq.backends.x86.vnni import build, to_tvm

#: (activation codes, weight bits) of W8A16, W16A8, W16A16.
WIDTHS = [("int16", 8), ("uint8", 16), ("int16", 16)]


def _codes(gen: torch.Generator, shape: tuple[int, ...], act: str, extreme: bool) -> torch.Tensor:
    if act == "uint8":
        return torch.full(shape, 255, dtype=torch.uint8) if extreme else torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    if extreme:
        return torch.full(shape, -(2**15), dtype=torch.int16)
    return torch.randint(-(2**15), 2**15, shape, generator=gen, dtype=torch.int32).to(torch.int16)


def _weights(gen: torch.Generator, shape: tuple[int, ...], bits: int, extreme: bool) -> torch.Tensor:
    top = 2**15 - 1 if bits > 8 else 127
    if extreme:
        return torch.full(shape, -top, dtype=torch.int16)
    return torch.randint(-top, top + 1, shape, generator=gen, dtype=torch.int32).to(torch.int16)


def _run(sch, x: torch.Tensor, w: torch.Tensor, zp: int, bias: torch.Tensor, out_shape: tuple[int, ...], act: str, bits: int):
    """The kernel's int16 output and the reference's (multipliers sized to the accumulator bound)."""
    gen = torch.Generator().manual_seed(1)
    n = w.shape[0]
    bound = ir.acc_bound(w, 2**15 + abs(zp) if act == "int16" else 255 + abs(zp), bias)
    scales = (torch.rand(n, generator=gen, dtype=torch.float64) + 0.5) * 2.0**-24  # outputs spread over int16
    mult, shift = ir.wide_requant_params(1.0, scales, 1.0, bound)
    kernel = build(sch.mod)
    out = to_tvm(np.zeros(out_shape, np.int16))
    args = [to_tvm(x if x.dim() == 2 else x.permute(0, 2, 3, 1).contiguous()),
            to_tvm(wide_te.pack_wide_weight(w, wide_te.parts_of(act, bits), 16)), to_tvm(gemm_te.channel_params(gemm_te.bias_eff(w, zp, bias), 1, 1, n, n, "int64")[0]),
            to_tvm(mult.to(torch.int32)), to_tvm(shift.to(torch.int32)), to_tvm(np.array([zp, -7, -(2**15), 2**15 - 1], np.int32)), out]
    kernel(*args)
    assert "vpdpwssd" in kernel.asm
    return torch.from_numpy(out.numpy()), mult, shift


@pytest.mark.parametrize(("act", "bits"), WIDTHS)
@pytest.mark.parametrize(("m", "n", "k", "extreme"), [(8, 32, 64, False), (5, 48, 1030, False), (3, 16, 4608, True)])
def test_wide_dense_is_bit_exact(act: str, bits: int, m: int, n: int, k: int, extreme: bool) -> None:
    gen = torch.Generator().manual_seed(m + n + k)
    x, w = _codes(gen, (m, k), act, extreme), _weights(gen, (n, k), bits, extreme)
    zp = -300 if act == "int16" else 9
    bias = torch.randint(-(2**40), 2**40, (n,), generator=gen, dtype=torch.int64)
    sch = k16.schedule_qdense(k16.qdense_func(m, n, k, act, bits, "int16"))
    got, mult, shift = _run(sch, x, w, zp, bias, (m, n), act, bits)
    acc = ir.dense_acc(x, zp, w, bias, torch.int64)
    assert torch.equal(got, ir.requantize(acc, mult, shift, -7, -(2**15), 2**15 - 1).to(torch.int16))
    assert extreme or float(got.float().std()) > 100  # not saturated


@pytest.mark.parametrize(("act", "bits"), WIDTHS)
@pytest.mark.parametrize(("shape", "o", "k", "stride", "pad"), [((1, 6, 9, 9), 32, 3, 1, 1), ((2, 512, 5, 5), 16, 3, 2, 1),
                                                               ((1, 64, 7, 7), 48, 1, 1, 0)])
def test_wide_conv2d_is_bit_exact(act: str, bits: int, shape: tuple[int, ...], o: int, k: int, stride: int, pad: int) -> None:
    gen = torch.Generator().manual_seed(o + k + shape[1])
    x, w = _codes(gen, shape, act, False), _weights(gen, (o, shape[1], k, k), bits, False)
    zp = 1234 if act == "int16" else 0
    bias = torch.randint(-(2**36), 2**36, (o,), generator=gen, dtype=torch.int64)
    acc = ir.conv2d_acc(x, zp, w, bias, stride, pad, 1, torch.int64)
    b, _, oh, ow = acc.shape
    sch = k16.schedule_qconv2d(k16.qconv2d_func(tuple(x.permute(0, 2, 3, 1).shape), o, k, stride, pad, act, bits, "int16"), ow)
    got, mult, shift = _run(sch, x, w, zp, bias, (b, oh, ow, o), act, bits)
    want = ir.requantize(acc, mult, shift, -7, -(2**15), 2**15 - 1).to(torch.int16)
    assert torch.equal(got.permute(0, 3, 1, 2), want)
