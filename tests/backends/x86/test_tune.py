"""MetaSchedule tuning with the corrected VNNI intrinsic (slow: each test tunes a few trials)."""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from lcpaq.backends.common import gemm_te
from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86 import tune as tt
from lcpaq.backends.x86.tiles import tiles_for
from lcpaq.backends.common.tuning import faster_schedule
from lcpaq.backends.x86.vnni import host_target, pack_weight, resolve_tvm_target, to_tvm


def _cpuinfo_facts() -> tuple[str, int]:
    """The CPU vendor and the number of physical cores, read from /proc/cpuinfo with regexes
    (independently of LLVM and psutil, which the code under test uses)."""
    text = open("/proc/cpuinfo").read()
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M).group(1)
    cores = set()
    for block in text.strip().split("\n\n"):
        phys = re.search(r"^physical id\s*:\s*(\d+)", block, re.M)
        core = re.search(r"^core id\s*:\s*(\d+)", block, re.M)
        cores.add((phys.group(1) if phys else "0", core.group(1) if core else block))
    return vendor, len(cores)


#: LLVM's names of the AVX-512 VNNI server cores this project runs on (AMD Zen 4/5, Intel SPR and later).
VNNI_CPUS = {"AuthenticAMD": {"znver4", "znver5"}, "GenuineIntel": {"sapphirerapids", "emeraldrapids", "graniterapids"}}


def test_native_mcpu_resolves_to_this_cpu_with_physical_cores() -> None:
    vendor, cores = _cpuinfo_facts()
    config = resolve_tvm_target({"kind": "llvm", "mcpu": "native"}).export()
    assert config["mcpu"] in VNNI_CPUS[vendor]
    assert config["num-cores"] == cores
    fixed = resolve_tvm_target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 3}).export()
    assert (fixed["mcpu"], fixed["num-cores"]) == ("cascadelake", 3)  # an explicit CPU is kept as written


def test_vnni_rules_name_our_intrinsic() -> None:
    rules, postprocs = tt.vnni_rules()
    assert any("MultiLevelTilingWithIntrin" in type(r).__name__ for r in rules)
    assert any("RewriteTensorize" in type(p).__name__ for p in postprocs)


@pytest.mark.slow
def test_tuned_qdense_is_vnni_and_bit_exact() -> None:
    m, n, k = 32, 64, 128
    kernel = tt.tune(t8.qdense_func(m, n, k), trials=8, int8=True, target=host_target())
    assert "vpdpbusd" in kernel.asm
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    b = torch.randint(-5000, 5000, (n,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (n,), generator=gen)
    shift = torch.randint(36, 40, (n,), generator=gen)
    out = to_tvm(np.zeros((m, n), np.uint8))
    params = [to_tvm(a) for a in gemm_te.channel_params(gemm_te.bias_eff(w, 0, b), mult, shift, n, n)]
    kernel(to_tvm(x, "uint8"), to_tvm(pack_weight(w)), *params, to_tvm(gemm_te.Requant(10).qp(0)), out)
    assert torch.equal(torch.from_numpy(out.numpy()), ir.dense(x, 0, w, b, mult, shift, 10))


@pytest.mark.slow
def test_tuned_qconv2d_is_vnni_and_bit_exact() -> None:
    shape, o = (1, 8, 8, 16), 32
    kernel = tt.tune(t8.qconv2d_func(shape, o, 3, 1, 1), trials=8, int8=True, target=host_target())
    assert "vpdpbusd" in kernel.asm
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (o, 16, 3, 3), generator=gen).to(torch.int8)
    mult = torch.randint(2**30, 2**31 - 1, (o,), generator=gen)
    shift = torch.randint(38, 42, (o,), generator=gen)
    out = to_tvm(np.zeros((1, 8, 8, o), np.uint8))
    params = [to_tvm(a) for a in gemm_te.channel_params(gemm_te.bias_eff(w, 7, None), mult, shift, o, o)]
    kernel(to_tvm(x, "uint8"), to_tvm(t8.pack_conv_weight(w)), *params, to_tvm(gemm_te.Requant(20).qp(7)), out)
    want = ir.conv2d(x.permute(0, 3, 1, 2), 7, w, None, mult, shift, 20, padding=1)
    assert torch.equal(torch.from_numpy(out.numpy()).permute(0, 3, 1, 2), want)


def test_faster_schedule_keeps_the_faster_candidate() -> None:
    func = t8.qconv2d_func((1, 14, 14, 64), 64, 3, 1, 1)
    tiles = tiles_for("default")
    good = t8.schedule_qconv2d(func, 14, replace(tiles, int8_conv=(7, 2)))
    poor = t8.schedule_qconv2d(func, 14, replace(tiles, int8_conv=(1, 1)))  # 7 x 2 accumulators a tile vs 1
    best, times = faster_schedule([poor, good], lambda sch: tt.kernel_ms(sch, host_target(), repeat=5))
    assert best is good and times[1] < times[0]
