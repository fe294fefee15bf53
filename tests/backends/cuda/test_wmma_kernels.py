"""The tensor-core GEMM kernels, compiled here by nvcc without a GPU: each is one kernel with the
requantization in its epilogue, its PTX multiplies on WMMA s8 tiles and its SASS holds IMMA
instructions, for sm_90 (H100) and sm_75 (T4); the tile choice in closed form."""
from __future__ import annotations

import re

import pytest
import tvm

from lcpaq.backends.cuda import fatbin, gemm, gemm_schedule
from lcpaq.backends.cuda.gemm_schedule import Tiles, block_rows, tiles_for

WMMA_PTX = "wmma.mma.sync.aligned.row.col.m16n16k16.s32.s8.s8.s32"


def _compile(func: tvm.tirx.PrimFunc, arch: str) -> tuple[str, bytes]:
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    ex = tvm.compile(gemm_schedule.schedule_gemm(func).mod, target=target)
    (cuda,) = fatbin.cuda_modules(ex.mod)
    source = cuda.inspect_source()
    return source, fatbin.compile_fatbin(source, arch)


def _kernels(source: str) -> set[str]:
    return set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(", source))


def test_tiles_in_closed_form() -> None:
    assert [block_rows(m) for m in (1, 16, 17, 49, 64, 65, 3136, 100000)] == [16, 16, 32, 64, 64, 128, 128, 128]
    assert tiles_for(16, 1008, 512) == Tiles(1, 1, 1, 1, 4)  # a classifier at batch 1: one warp a block
    t = tiles_for(3200, 64, 576)  # a 3x3 conv of 64 channels at 56x56
    assert (t.block_m, t.block_n, t.threads, t.k_frags) == (128, 64, 256, 4)
    assert tiles_for(64, 48, 48) == Tiles(2, 1, 2, 1, 1)  # 48 channels: 16-wide blocks


@pytest.mark.parametrize("arch", ["sm_90", "sm_75"])
def test_conv_kernel_is_one_tensor_core_kernel_with_the_epilogue(arch: str) -> None:
    func = gemm.qconv2d_func((1, 14, 14, 64), 64, (3, 3), 1, 1, 256, 576, "int8")
    source, binary = _compile(func, arch)
    assert len(_kernels(source)) == 1  # im2col, GEMM and requantization: one kernel
    assert "wmma::mma_sync" in source and "signed char" in source
    assert WMMA_PTX in fatbin.disassemble(binary, "ptx")
    sass = fatbin.disassemble(binary)
    assert f"arch = {arch}" in sass
    assert re.search(r"\bIMMA\.\w+\.S8\.S8", sass)


def test_dense_kernel_reads_tiles_with_vector_loads_and_uses_imma() -> None:
    source, binary = _compile(gemm.qdense_func(64, 128, 256, "int32"), "sm_90")
    assert "int4*" in source  # 16-byte global -> shared copies
    assert len(_kernels(source)) == 1 and "int* __restrict__ requant" in source  # int32 codes out
    assert re.search(r"\bIMMA\.\w+\.S8\.S8", fatbin.disassemble(binary))


def test_a_gemm_that_is_not_whole_tiles_is_refused() -> None:
    with pytest.raises(ValueError, match="not a whole number"):
        gemm_schedule.schedule_gemm(gemm.qdense_func(16, 64, 64, "int8"), Tiles(2, 2, 2, 2, 1))
