"""The dp4a fallback of the GEMM kernels (GPUs without int8 tensor cores): chosen by arch, its
SASS holds IDP.4A, it runs bit-exact on the CPU emulator, and an arch this nvcc cannot build
for is one clear line."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm

import lcpaq.backends.common.capability  # noqa: F401 (registers the executable pass)
from lcpaq.backends.common.build import build_model
from lcpaq.backends.cuda import fatbin, gemm, gemm_schedule
from lcpaq.backends.cuda.dp4a import gemm_schedule_for, has_tensor_cores, schedule_gemm_dp4a
from lcpaq.hw_targets import load_target
from lcpaq.ir.errors import ConfigError
from tests.backends._nets import TinyResNet, quantized
from tests.backends.cuda.cuda_emulator import EmulatedKernel
from tests.backends.cuda.test_wmma_emulated import _arrays, _reference

SM75 = tvm.target.Target({"kind": "cuda", "arch": "sm_75"}, host={"kind": "llvm"})


def test_tensor_cores_by_arch() -> None:
    assert [has_tensor_cores(a) for a in ("sm_61", "sm_70", "sm_72", "sm_75", "sm_90a", "hopper")] == [False, False, True, True, True, False]
    assert gemm_schedule_for("sm_61") is schedule_gemm_dp4a and gemm_schedule_for("sm_90") is gemm_schedule.schedule_gemm


def _source(func: tvm.tirx.PrimFunc) -> str:
    ex = tvm.compile(schedule_gemm_dp4a(func).mod, target=SM75)
    return fatbin.cuda_modules(ex.mod)[0].inspect_source()


def test_dp4a_kernel_compiles_to_idp4a() -> None:
    source = _source(gemm.qdense_func(32, 64, 128, "int8"))
    assert "__dp4a(" in source and "wmma" not in source
    assert re.search(r"\bIDP\.4A\.S8\.S8", fatbin.disassemble(fatbin.compile_fatbin(source, "sm_75")))


@pytest.mark.parametrize("case", ["dense", "conv"])
def test_dp4a_kernel_is_bit_exact_on_the_emulator(case: str, tmp_path) -> None:
    if case == "dense":
        m, n, k = 64, 48, 96
        func, x_shape = gemm.qdense_func(m, n, k, "int32"), (m, k)
        arrays = _arrays(x_shape, n, k, (m, n), "int32", 11)
    else:  # a 3x3 conv of 4 -> 32 channels on two 8x8 images: 128 rows, K = 36 padded to 48
        m, n, k = 128, 32, 48
        func = gemm.qconv2d_func((2, 8, 8, 4), n, (3, 3), 1, 1, m, k, "int8")
        arrays = _arrays((2, 8, 8, 4), n, k, (m, n), "int8", 12)
    ref = _reference(func, arrays)
    bm, bn = next(b for b in (64, 32, 16) if m % b == 0), next(b for b in (64, 32, 16) if n % b == 0)
    EmulatedKernel(_source(func), tmp_path)((m // bm) * (n // bn), (bn // 4, bm // 4), arrays)
    assert np.array_equal(arrays["requant"], ref) and len(np.unique(ref)) > 10


def test_an_arch_this_nvcc_cannot_build_is_one_line(tmp_path) -> None:
    toml = tmp_path / "p4.toml"
    text = Path(load_target("nvidia-sm75").source).read_text()
    toml.write_text(text.replace('name = "nvidia-sm75"', 'name = "nvidia-p4"').replace('arch = "sm_75"', 'arch = "sm_61"'))
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    gm = quantized(TinyResNet(), x, "executable,uniform{w=8,a=8},fake-quant", target="nvidia-sm75")
    with pytest.raises(ConfigError, match="cannot compile for sm_61: CUDA 13 dropped GPUs older than Turing"):
        build_model(gm, (x[:1],), load_target(str(toml)))
