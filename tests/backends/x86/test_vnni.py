"""The corrected VNNI intrinsic: it builds, emits vpdpbusd, and is bit-exact against the oracle."""
from __future__ import annotations

import pytest
import torch


from tvm import s_tir, te
from tvm.s_tir import TensorIntrin

from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.x86 import vnni as v


@pytest.mark.parametrize("m,n,k", [(1, 16, 4), (8, 32, 64), (5, 48, 36), (17, 64, 132)])
def test_vnni_dense_is_bit_exact(m: int, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    assert torch.equal(v.dense_u8s8s32(x, w), ir.dense_acc(x, 0, w))


def test_vnni_dense_extreme_codes() -> None:
    """255 x -127 everywhere: vpdpbusd's u8 x s8 products and int32 sums must not saturate."""
    x = torch.full((4, 256), 255, dtype=torch.int32)
    w = torch.cat([torch.full((16, 256), -127), torch.full((16, 256), 127)]).to(torch.int8)
    y = v.dense_u8s8s32(x, w)
    assert torch.equal(y, ir.dense_acc(x, 0, w))
    assert int(y.min()) == -255 * 127 * 256


def test_vnni_kernel_assembly_uses_vpdpbusd() -> None:
    asm = v.build_dense_u8s8s32(8, 32, 64).asm
    assert "vpdpbusd" in asm and "zmm" in asm


def test_intrinsic_registration_is_idempotent_and_separate_from_tvms() -> None:
    assert v.register_vnni_intrinsic() == v.VNNI_INTRIN
    assert TensorIntrin.get(v.VNNI_INTRIN) is not None
    assert v.VNNI_INTRIN != "dot_16x4_vnni"


@pytest.mark.slow
def test_stock_tvm_vnni_intrinsic_is_still_broken() -> None:
    """Documents the upstream bug this module works around. If this starts failing, TVM's
    ``dot_16x4_vnni`` builds again and our intrinsic may be retired. Slow: importing
    ``tvm.s_tir.tensor_intrin`` (every target's intrinsics) takes about 30 s."""
    import tvm.s_tir.tensor_intrin.x86  # noqa: F401  (registers TVM's intrinsics)

    x, w, c = v.dense_compute(4, 16, 8)
    sch = s_tir.Schedule(te.create_prim_func([x, w, c]))
    i, j, k = sch.get_loops(sch.get_sblock("dense"))
    jo, ji = sch.split(j, [None, 16])
    ko, ki = sch.split(k, [None, 4])
    sch.reorder(i, jo, ko, ji, ki)
    sch.decompose_reduction(sch.get_sblock("dense"), ko)
    sch.tensorize(ji, "dot_16x4_vnni")
    with pytest.raises(Exception, match="does not match function signature"):
        v.build(sch.mod)


def test_pack_weight_layout_and_errors() -> None:
    w = torch.arange(32 * 8).reshape(32, 8).remainder(251).sub(125).to(torch.int8)
    p = v.pack_weight(w)
    assert p.shape == (2, 2, 16, 4)
    assert p[1, 1, 3, 2] == int(w[16 + 3, 4 + 2])
    with pytest.raises(ValueError, match="N % 16"):
        v.pack_weight(torch.zeros(20, 8, dtype=torch.int8))
