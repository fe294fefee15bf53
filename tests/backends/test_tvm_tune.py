"""MetaSchedule tuning with the corrected VNNI intrinsic (slow: each test tunes a few trials)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

from lcpaq.backends import integer_ref as ir  # noqa: E402
from lcpaq.backends import tvm_int8 as t8  # noqa: E402
from lcpaq.backends import tvm_tune as tt  # noqa: E402
from lcpaq.backends.tvm_vnni import pack_weight, to_tvm  # noqa: E402


def test_tuning_target_has_num_cores() -> None:
    config = tt.tuning_target().export()
    from tvm.target import codegen

    assert config["mcpu"] == str(codegen.llvm_get_system_cpu()) and config["num-cores"] >= 1


def test_vnni_rules_name_our_intrinsic() -> None:
    rules, postprocs = tt.vnni_rules()
    assert any("MultiLevelTilingWithIntrin" in type(r).__name__ for r in rules)
    assert any("RewriteTensorize" in type(p).__name__ for p in postprocs)


@pytest.mark.slow
def test_tuned_qdense_is_vnni_and_bit_exact() -> None:
    m, n, k = 32, 64, 128
    kernel = tt.tune(t8.qdense_func(m, n, k), trials=8, int8=True)
    assert "vpdpbusd" in kernel.asm
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    b = torch.randint(-5000, 5000, (n,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (n,), generator=gen)
    shift = torch.randint(36, 40, (n,), generator=gen)
    out = to_tvm(np.zeros((m, n), np.uint8))
    params = t8._channel_params(t8._bias_eff(w, 0, b), mult, shift, n, n)
    kernel(to_tvm(x, "uint8"), to_tvm(pack_weight(w)), *params, to_tvm(t8.Requant(10).qp(0)), out)
    assert torch.equal(torch.from_numpy(out.numpy()), ir.dense(x, 0, w, b, mult, shift, 10))


@pytest.mark.slow
def test_tuned_qconv2d_is_vnni_and_bit_exact() -> None:
    shape, o = (1, 8, 8, 16), 32
    kernel = tt.tune(t8.qconv2d_func(shape, o, 3, 1, 1), trials=8, int8=True)
    assert "vpdpbusd" in kernel.asm
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (o, 16, 3, 3), generator=gen).to(torch.int8)
    mult = torch.randint(2**30, 2**31 - 1, (o,), generator=gen)
    shift = torch.randint(38, 42, (o,), generator=gen)
    out = to_tvm(np.zeros((1, 8, 8, o), np.uint8))
    params = t8._channel_params(t8._bias_eff(w, 7, None), mult, shift, o, o)
    kernel(to_tvm(x, "uint8"), to_tvm(t8.pack_conv_weight(w)), *params, to_tvm(t8.Requant(20).qp(7)), out)
    want = ir.conv2d(x.permute(0, 3, 1, 2), 7, w, None, mult, shift, 20, padding=1)
    assert torch.equal(torch.from_numpy(out.numpy()).permute(0, 3, 1, 2), want)


def test_faster_schedule_keeps_the_faster_candidate() -> None:
    func = t8.qconv2d_func((1, 14, 14, 64), 64, 3, 1, 1)
    good, poor = t8.schedule_qconv2d(func, 7), t8.schedule_qconv2d(func, 1)  # 7 output columns per tile vs 1
    best, times = tt.faster_schedule([poor, good], repeat=5)
    assert best is good and times[1] < times[0]
