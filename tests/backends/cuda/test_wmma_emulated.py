"""The tensor-core GEMM kernels as nvcc gets them, run on this CPU by the emulator of
``cuda_emulator.py`` (threads, barriers, shared memory, WMMA fragments as the CUDA guide defines
them), bit-exact against the same computation compiled unscheduled for LLVM: the schedule's
tiling, staging, synchronization, fragment indexing and fused epilogue, checked without a GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from lcpaq.backends.cuda import fatbin, gemm, gemm_schedule
from tests.backends.cuda.cuda_emulator import EmulatedKernel

SM90 = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})


def _arrays(x_shape: tuple[int, ...], n: int, k: int, out_shape: tuple[int, int], out_dtype: str, seed: int) -> dict[str, np.ndarray]:
    """Seeded arguments in the kernels' order: codes, weights [n, k], per-channel requantization
    (multipliers near 2^30, shifts near 38), qp, and the output."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "X": torch.randint(-128, 128, x_shape, generator=gen).numpy().astype(np.int8),
        "W": torch.randint(-128, 128, (n, k), generator=gen).numpy().astype(np.int8),
        "bias": torch.randint(-20000, 20000, (n,), generator=gen).numpy().astype(np.int32),
        "multiplier": torch.randint(2**29, 2**30, (n,), generator=gen).numpy().astype(np.int32),
        "shift": torch.randint(36, 40, (n,), generator=gen).numpy().astype(np.int32),
        "qp": np.array([3, -2, -128, 127], np.int32),
        "requant": np.zeros(out_shape, out_dtype),
    }


def _reference(func: tvm.tirx.PrimFunc, arrays: dict[str, np.ndarray]) -> np.ndarray:
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    tensors = [tvm.runtime.tensor(a.copy()) for a in arrays.values()]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _emulated(func: tvm.tirx.PrimFunc, arrays: dict[str, np.ndarray], tmp_path) -> np.ndarray:
    sch = gemm_schedule.schedule_gemm(func)
    ex = tvm.compile(sch.mod, target=SM90)
    (cuda,) = fatbin.cuda_modules(ex.mod)
    out = {k: v.copy() for k, v in arrays.items()}
    m, n = out["requant"].shape
    k = out["W"].shape[1]
    t = gemm_schedule.tiles_for(m, n, k)
    EmulatedKernel(cuda.inspect_source(), tmp_path)((m // t.block_m) * (n // t.block_n), (32, t.warps_m * t.warps_n), out)
    return out["requant"]


@pytest.mark.parametrize("m, n, k, out_dtype", [(64, 64, 64, "int8"), (128, 64, 192, "int8"), (16, 48, 80, "int32")])
def test_dense_kernel_is_bit_exact(m: int, n: int, k: int, out_dtype: str, tmp_path) -> None:
    func = gemm.qdense_func(m, n, k, out_dtype)
    arrays = _arrays((m, k), n, k, (m, n), out_dtype, m + n + k)
    ref = _reference(func, arrays)
    got = _emulated(func, arrays, tmp_path)
    assert np.array_equal(got, ref) and len(np.unique(ref)) > 10


@pytest.mark.parametrize("shape, n, kernel, stride, pad", [((1, 14, 14, 64), 64, 3, 1, 1), ((2, 9, 9, 4), 16, 3, 2, 1),
                                                          ((1, 7, 7, 32), 32, 1, 1, 0)])
def test_conv_kernel_is_bit_exact(shape, n: int, kernel: int, stride: int, pad: int, tmp_path) -> None:
    b, h, w, c = shape
    oh = (h + 2 * pad - kernel) // stride + 1
    rows = b * oh * oh
    m_p = -(-rows // gemm_schedule.block_rows(rows)) * gemm_schedule.block_rows(rows)
    k_p = -(-(kernel * kernel * c) // 16) * 16
    func = gemm.qconv2d_func(shape, n, (kernel, kernel), stride, pad, m_p, k_p, "int8")
    arrays = _arrays(shape, n, k_p, (m_p, n), "int8", rows + n)
    ref = _reference(func, arrays)
    got = _emulated(func, arrays, tmp_path)
    assert np.array_equal(got[:rows], ref[:rows]) and len(np.unique(ref[:rows])) > 10


def test_the_emulator_catches_a_broken_schedule(tmp_path) -> None:
    """The same dense kernel with its fragments always loaded from the first 16 columns of the
    shared tile (a fragment-indexing bug) no longer matches: the check has teeth."""
    func = gemm.qdense_func(128, 64, 192, "int8")
    arrays = _arrays((128, 192), 64, 192, (128, 64), "int8", 7)
    ref = _reference(func, arrays)
    ex = tvm.compile(gemm_schedule.schedule_gemm(func).mod, target=SM90)
    source = fatbin.cuda_modules(ex.mod)[0].inspect_source()
    broken = source.replace("(k_1 * 16)", "(k_1 * 0)")
    assert broken != source
    t = gemm_schedule.tiles_for(128, 64, 192)
    EmulatedKernel(broken, tmp_path)((128 // t.block_m) * (64 // t.block_n), (32, t.warps_m * t.warps_n), arrays)
    assert not np.array_equal(arrays["requant"], ref)
