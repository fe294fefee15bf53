"""A quantized conv2d lowered through a Relax module (call_tir -> our VNNI PrimFunc), bit-exact vs the oracle."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("tvm")

import tvm  # noqa: E402

from lcpaq.backends import integer_ref as ir  # noqa: E402
from lcpaq.backends import relax_lower as rl  # noqa: E402


@pytest.mark.parametrize(
    "x_shape,out_ch,kernel,stride,padding",
    [((1, 8, 9, 9), 16, 3, 1, 1), ((2, 4, 10, 7), 20, 3, 2, 1)],
)
def test_relax_qconv2d_is_bit_exact(x_shape, out_ch: int, kernel: int, stride: int, padding: int) -> None:
    gen = torch.Generator().manual_seed(sum(x_shape) + out_ch)
    x = torch.randint(0, 256, x_shape, generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (out_ch, x_shape[1], kernel, kernel), generator=gen).to(torch.int8)
    b = torch.randint(-20000, 20000, (out_ch,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (out_ch,), generator=gen)
    shift = torch.randint(37, 43, (out_ch,), generator=gen)
    qmin, qmax = ir.relu_range(90)
    want = ir.conv2d(x, 17, w, b, mult, shift, 90, qmin, qmax, stride, padding)
    got = rl.qconv2d(x, 17, w, b, mult, shift, 90, qmin, qmax, stride, padding)
    assert got.dtype == torch.uint8 and got.shape == want.shape and torch.equal(got, want)
    assert float(want.float().std()) > 10


def test_relax_module_keeps_the_vnni_kernel() -> None:
    """The default pipeline must not fuse our scheduled PrimFunc away: vpdpbusd is in the binary."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (16, 8, 3, 3), generator=gen).to(torch.int8)
    mod = rl.qconv2d_module((1, 8, 8, 8), 3, w, None, 2**30, 38, 128, stride=1, padding=1)
    assert rl.KERNEL_NAME in [gv.name_hint for gv in mod.get_global_vars()]
    ex = tvm.compile(mod, target=rl.x86_target())
    asm = ex.mod.imports[0].inspect_source("asm")  # the llvm host module holding all PrimFuncs
    assert "vpdpbusd" in asm and rl.KERNEL_NAME in asm
