"""The fallback of the CUDA GEMM kernels on GPUs without int8 tensor cores (sm_61 to sm_70:
Pascal's P4 and P40, Volta): the same computations (:mod:`lcpaq.backends.cuda.gemm`) on the
``dp4a`` instruction (4 int8 products summed into an int32, ``IDP.4A`` in SASS).

A thread block computes a ``BM x BN`` tile, each thread 4 x 4 outputs held in registers; the
reduction advances 16 at a time through shared memory, each thread issuing 4 ``dp4a`` per
output and stage; the requantization runs on the registers before the one write of the codes.
"""
from __future__ import annotations

import re
from typing import Callable

import tvm
from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from lcpaq.backends.cuda.gemm_schedule import schedule_gemm, stage_activations

DP4A_INTRIN = "lcpaq_dp4a_s8s8s32"
#: Reduction elements per shared-memory stage.
STAGE = 16
#: Outputs a thread computes along each of M and N.
PER_THREAD = 4


@T.prim_func(s_tir=True)
def _dp4a_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1, scope="shared")
    B = T.match_buffer(b, (4,), "int8", offset_factor=1, scope="shared")
    C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        for k in range(4):
            with T.sblock("update"):
                vk = T.axis.remap("R", [k])
                C[0] = C[0] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vk])


@T.prim_func(s_tir=True)
def _dp4a_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (4,), "int8", offset_factor=1, scope="shared")
    B = T.match_buffer(b, (4,), "int8", offset_factor=1, scope="shared")
    C = T.match_buffer(c, (1,), "int32", offset_factor=1, scope="local")
    with T.sblock("root"):
        T.reads(C[0], A[0:4], B[0:4])
        T.writes(C[0])
        C[0] = T.call_pure_extern("int32", "__dp4a", T.reinterpret("int32", A.vload([0], "int8x4")),
                                  T.reinterpret("int32", B.vload([0], "int8x4")), C[0])


if TensorIntrin.get(DP4A_INTRIN, allow_missing=True) is None:
    TensorIntrin.register(DP4A_INTRIN, _dp4a_desc, _dp4a_impl)


def has_tensor_cores(arch: str) -> bool:
    """Whether ``sm_XX`` has int8 tensor cores (sm_72 and later: Xavier, Turing, Ampere, Hopper...)."""
    match = re.fullmatch(r"sm_(\d+)[a-z]?", arch)
    return bool(match) and int(match.group(1)) >= 72


def gemm_schedule_for(arch: str) -> Callable[[tvm.tirx.PrimFunc], s_tir.Schedule]:
    """The GEMM schedule of ``sm_XX``: WMMA tensor cores where it has them, else dp4a."""
    return schedule_gemm if has_tensor_cores(arch) else schedule_gemm_dp4a


def _block(extent: int, cap: int) -> int:
    return next(b for b in (64, 32, 16) if b <= cap and extent % b == 0)


def schedule_gemm_dp4a(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    """Schedule a GEMM kernel (blocks ``gemm``, ``requant`` and, for a conv, ``im2col``) on dp4a."""
    sch = s_tir.Schedule(func)
    gemm = sch.get_sblock("gemm")
    i, j, r = sch.get_loops(gemm)
    m, n, k = (int(sch.get(loop).extent) for loop in (i, j, r))
    if m % 16 or n % 16 or k % STAGE:
        raise ValueError(f"a {m}x{n}x{k} GEMM needs M and N multiples of 16 and K of {STAGE}")
    bm, bn = _block(m, 64), _block(n, 64)
    ty, tx = bm // PER_THREAD, bn // PER_THREAD
    i0, i1, i2 = sch.split(i, [None, ty, PER_THREAD])
    j0, j1, j2 = sch.split(j, [None, tx, PER_THREAD])
    r0, r1, r2 = sch.split(r, [None, STAGE // 4, 4])
    sch.reorder(i0, j0, i1, j1, r0, r1, i2, j2, r2)
    block_xy = sch.fuse(i0, j0)
    sch.bind(block_xy, "blockIdx.x")
    sch.bind(i1, "threadIdx.y")
    sch.bind(j1, "threadIdx.x")
    sch.set_scope(gemm, 0, "local")  # each thread's 4 x 4 accumulators stay in registers
    sch.reverse_compute_at(sch.get_sblock("requant"), j1)
    a_shared, _ = stage_activations(sch, gemm)
    b_shared = sch.cache_read(gemm, 1, "shared")
    for block in (a_shared, b_shared):
        sch.compute_at(block, r0)
        fused = sch.fuse(*sch.get_loops(block)[-2:])
        _, y, x = sch.split(fused, [None, ty, tx])
        sch.bind(y, "threadIdx.y")
        sch.bind(x, "threadIdx.x")
    sch.decompose_reduction(gemm, r0)
    sch.tensorize(r2, DP4A_INTRIN)
    return sch
