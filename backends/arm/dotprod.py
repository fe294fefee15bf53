"""The Arm dot-product kernels: the blocked GEMM kernels of :mod:`lcpaq.backends.common.gemm_te`
tensorized with an ``sdot`` intrinsic (4 int32 lanes x 4 int8 products each,
``sdot v.4s, v.16b, v.16b``).

Both operands of ``sdot`` are signed, so activation codes are int8 (the backend's conventions;
integerize shifts uint8 codes by 128 into int8, the same values). Weights are blocked
``[N/4, K/4, 4, 4]``; depthwise convs run on the vector depthwise kernel, 4 channels a NEON
register. TVM's intrinsic lowers to ``llvm.aarch64.neon.sdot`` and passes LLVM verification
as it is (unlike the stock x86 VNNI one), so it is used unchanged.
"""
from __future__ import annotations

import tvm
from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from lcpaq.backends.common import gemm_schedule
from lcpaq.backends.common.gemm_te import Blocking
from lcpaq.backends.common.lower_blocked import BlockedKernels

#: Name under which the sdot intrinsic (4 x 4, s8 x s8 -> s32) is registered.
SDOT_INTRIN = "lcpaq_dot_4x4_i8i8s32_sdot"


@T.prim_func(s_tir=True)
def _sdot_desc(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        for i in T.serial(0, 4):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _sdot_impl(
    A: T.Buffer((4,), "int8", offset_factor=1),
    B: T.Buffer((4, 4), "int8", offset_factor=1),
    C: T.Buffer((4,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:4], A[0:4], B[0:4, 0:4])
        T.writes(C[0:4])
        a_word = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a_bytes = T.reinterpret(T.broadcast(a_word, 4), dtype="int8x16")
        C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
            C.vload([0], dtype="int32x4"),
            a_bytes,
            B.vload([0, 0], dtype="int8x16"),
            dtype="int32x4",
        )


if TensorIntrin.get(SDOT_INTRIN, allow_missing=True) is None:
    TensorIntrin.register(SDOT_INTRIN, _sdot_desc, _sdot_impl)
#: One sdot: 4 output lanes x 4 reduction elements, int8 activations.
SDOT_BLOCKING = Blocking(lanes=4, depth=4, act_dtype="int8")
#: Output columns a conv tile computes together: one 4-lane int32 accumulator each, out of the
#: 32 NEON registers (the rest hold the weight block and broadcast activations).
MAX_COL_TILE = 8


def schedule_qdense(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    """Hand schedule of the int8 dense: ``(i_o, j_o) parallel, k_o, i_i, [4 x 4 -> sdot]``."""
    return gemm_schedule.schedule_qdense(func, SDOT_BLOCKING, SDOT_INTRIN)


def schedule_qconv2d(func: tvm.tirx.PrimFunc, width: int) -> s_tir.Schedule:
    """Hand schedule of the int8 conv for output width ``width``: ``(n, oh) parallel, ow/tile,
    o/4, kh, kw, c/4, tile of ow, [4 x 4 -> sdot]``."""
    return gemm_schedule.schedule_qconv2d(func, SDOT_BLOCKING, SDOT_INTRIN, gemm_schedule.col_tile(width, MAX_COL_TILE))


#: The family's GEMM kernels for :mod:`lcpaq.backends.common.lower_blocked`.
KERNELS = BlockedKernels(SDOT_BLOCKING, schedule_qdense, schedule_qconv2d, depthwise_lanes=4)
