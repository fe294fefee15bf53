"""The CUDA int8 tensor-core intrinsics: WMMA 16 x 16 x 16, s8 x s8 -> s32.

Five tensor intrinsics a GEMM schedule tensorizes with (:mod:`lcpaq.backends.cuda.gemm_schedule`):
zero an accumulator fragment, load a 16 x 16 activation tile (row major) and a 16 x 16 weight
tile (stored ``[N, K]``, read column major as the ``K x N`` operand) from shared memory into
fragments, multiply-accumulate (``wmma::mma_sync``, ``IMMA`` in SASS), and store the int32
accumulator to dynamic shared memory for the requantization epilogue (an allocation of its
own: TVM's storage rewrite would otherwise merge it with an int8 operand tile of equal size).

They are registered here, not imported from ``tvm.s_tir.tensor_intrin.cuda``: importing that
module registers every CUDA intrinsic TVM has (hundreds of TVMScript functions) and took 14 s
on this machine; these five take a fraction of a second. Every tensor-core GPU since sm_72
executes them (a T4's sm_75, an L4's sm_89, an H100's sm_90).
"""
from __future__ import annotations

from typing import Any

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

#: The fragment shape: M x N x K.
TILE = 16
_ACC, _A, _B = "wmma.accumulator", "wmma.matrix_a", "wmma.matrix_b"

FILL_INTRIN = "lcpaq_wmma_fill_16x16x16_s32"
LOAD_A_INTRIN = "lcpaq_wmma_load_16x16x16_s8_a"
LOAD_B_INTRIN = "lcpaq_wmma_load_16x16x16_s8_b_col"
SYNC_INTRIN = "lcpaq_wmma_sync_16x16x16_s8s8s32_trans"
STORE_INTRIN = "lcpaq_wmma_store_16x16x16_s32_shared_dyn"


def _fragment(buffer: Any, stride: Any) -> Any:
    """The fragment a 16 x 16 tile at ``buffer.elem_offset`` is, in a buffer of row ``stride``."""
    return buffer.elem_offset // stride // TILE * (stride // TILE) + buffer.elem_offset % stride // TILE


@T.prim_func(s_tir=True)
def _fill_desc(c: T.handle) -> None:
    C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope=_ACC)
    with T.sblock("root"):
        T.reads()
        T.writes(C[0:16, 0:16])
        for i, j in T.grid(16, 16):
            with T.sblock("init"):
                vi, vj = T.axis.remap("SS", [i, j])
                C[vi, vj] = T.int32(0)


@T.prim_func(s_tir=True)
def _fill_impl(c: T.handle) -> None:
    d1, d0 = T.int32(), T.int32()
    C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope=_ACC, strides=[d1, d0])
    with T.sblock("root"):
        T.reads()
        T.writes(C[0:16, 0:16])
        T.evaluate(T.tvm_fill_fragment(C.data, 16, 16, 16, _fragment(C, d1), T.float32(0), dtype="void"))


def _copy_desc(dtype: str, src: str, dst: str) -> Any:
    """Description of a 16 x 16 ``dtype`` tile copied from scope ``src`` to scope ``dst``."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (16, 16), dtype, align=64, offset_factor=16, scope=src)
        C = T.match_buffer(c, (16, 16), dtype, align=64, offset_factor=16, scope=dst)
        with T.sblock("root"):
            T.reads(A[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock("copy"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    C[vi, vj] = A[vi, vj]

    return desc


def _load(scope: str, layout: str) -> tuple[Any, Any]:
    """Load intrinsic of a 16 x 16 int8 shared tile into a fragment of ``scope``, read ``layout``."""

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s1, s0, d1, d0 = T.int32(), T.int32(), T.int32(), T.int32()
        A = T.match_buffer(a, (16, 16), "int8", align=64, offset_factor=16, scope="shared", strides=[s1, s0])
        C = T.match_buffer(c, (16, 16), "int8", align=64, offset_factor=16, scope=scope, strides=[d1, d0])
        with T.sblock("root"):
            T.reads(A[0:16, 0:16])
            T.writes(C[0:16, 0:16])
            T.evaluate(T.tvm_load_matrix_sync(C.data, 16, 16, 16, _fragment(C, d1), A.access_ptr("r", ptr_type="int8"), s1,
                                              layout, dtype="void"))

    return _copy_desc("int8", "shared", scope), impl


@T.prim_func(s_tir=True)
def _sync_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
    A = T.match_buffer(a, (16, 16), "int8", align=64, offset_factor=16, scope=_A)
    B = T.match_buffer(b, (16, 16), "int8", align=64, offset_factor=16, scope=_B)
    C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope=_ACC)
    with T.sblock("root"):
        T.reads(C[0:16, 0:16], A[0:16, 0:16], B[0:16, 0:16])
        T.writes(C[0:16, 0:16])
        for i, j, k in T.grid(16, 16, 16):
            with T.sblock(""):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                C[vi, vj] = C[vi, vj] + T.Cast("int32", A[vi, vk]) * T.Cast("int32", B[vj, vk])


@T.prim_func(s_tir=True)
def _sync_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
    a1, a0, b1, b0, c1, c0 = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
    A = T.match_buffer(a, (16, 16), "int8", align=64, offset_factor=16, scope=_A, strides=[a1, a0])
    B = T.match_buffer(b, (16, 16), "int8", align=64, offset_factor=16, scope=_B, strides=[b1, b0])
    C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope=_ACC, strides=[c1, c0])
    with T.sblock("root"):
        T.reads(C[0:16, 0:16], A[0:16, 0:16], B[0:16, 0:16])
        T.writes(C[0:16, 0:16])
        T.evaluate(T.tvm_mma_sync(C.data, _fragment(C, c1), A.data, _fragment(A, a1), B.data, _fragment(B, b1),
                                  C.data, _fragment(C, c1), dtype="void"))


@T.prim_func(s_tir=True)
def _store_impl(a: T.handle, c: T.handle) -> None:
    s1, s0, d1, d0 = T.int32(), T.int32(), T.int32(), T.int32()
    A = T.match_buffer(a, (16, 16), "int32", align=64, offset_factor=16, scope=_ACC, strides=[d1, d0])
    C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope="shared.dyn", strides=[s1, s0])
    with T.sblock("root"):
        T.reads(A[0:16, 0:16])
        T.writes(C[0:16, 0:16])
        T.evaluate(T.tvm_store_matrix_sync(A.data, 16, 16, 16, _fragment(A, d1), C.access_ptr("w", ptr_type="int32"), s1,
                                           "row_major", dtype="void"))


def _register() -> None:
    for name, pair in ((FILL_INTRIN, (_fill_desc, _fill_impl)), (LOAD_A_INTRIN, _load(_A, "row_major")),
                       (LOAD_B_INTRIN, _load(_B, "col_major")), (SYNC_INTRIN, (_sync_desc, _sync_impl)),
                       (STORE_INTRIN, (_copy_desc("int32", _ACC, "shared.dyn"), _store_impl))):
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, *pair)


_register()
