"""A corrected AVX-512 VNNI tensor intrinsic for TVM 0.27, and a u8 x s8 -> s32 dense built with it.

TVM 0.27 registers ``dot_16x4_vnni`` (``tvm.s_tir.tensor_intrin.x86``) whose implementation
passes ``<16 x i32>`` operands to ``llvm.x86.avx512.vpdpbusd.512``; the LLVM it ships declares
that intrinsic on ``<64 x i8>`` operands, so every tensorized build fails LLVM verification
("Call parameter type does not match function signature"). We register our own intrinsic,
:data:`VNNI_INTRIN`, with the same description and a corrected implementation: the four
activation bytes broadcast to all 16 lanes reinterpreted as ``uint8x64``, the 16x4 weight block
loaded as ``int8x64``. TVM's own registration is left untouched.

Layout of the weights the kernel reads: ``[N/16, K/4, 16, 4]`` int8, i.e. ``w[n, k]`` at
``[n // 16, k // 4, n % 16, k % 4]`` (see :func:`pack_weight`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import torch
import tvm
from tvm import s_tir, te
from tvm.s_tir import TensorIntrin
from tvm.target import codegen
from tvm.script import tirx as T

from lcpaq.backends.common import gemm_schedule, gemm_te

#: Name under which the corrected intrinsic is registered.
VNNI_INTRIN = "lcpaq_dot_16x4_vnni"
#: Lanes (output channels) and reduction depth of one ``vpdpbusd``.
LANES, DEPTH = 16, 4


@T.prim_func(s_tir=True)
def _dot_16x4_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_16x4_vnni_impl(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_u8x64 = T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64")
        b_i8x64 = B.vload([0, 0], dtype="int8x64")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            C.vload([0], dtype="int32x16"),
            a_u8x64,
            b_i8x64,
            dtype="int32x16",
        )


def register_vnni_intrinsic() -> str:
    """Register :data:`VNNI_INTRIN` once (idempotent) and return its name."""
    if TensorIntrin.get(VNNI_INTRIN, allow_missing=True) is None:
        TensorIntrin.register(VNNI_INTRIN, _dot_16x4_desc, _dot_16x4_vnni_impl)
    return VNNI_INTRIN


register_vnni_intrinsic()


#: ``mcpu = "native"`` in a target file: the CPU of the machine running lcpaq, as LLVM names it.
NATIVE_CPU = "native"


def resolve_tvm_target(config: dict[str, Any]) -> tvm.target.Target:
    """A target file's ``[tvm]`` table as a TVM target for this host: ``mcpu = "native"``
    replaced by this machine's CPU (``znver4``, ``sapphirerapids``...), since code built for
    another CPU of the family can use instructions this one lacks (an AVX-VNNI or AMX
    instruction on an AMD core is SIGILL), and ``num-cores`` (physical cores) set, which
    MetaSchedule requires."""
    config = dict(config)
    if config.get("mcpu") == NATIVE_CPU:
        config["mcpu"] = str(codegen.llvm_get_system_cpu())
    config.setdefault("num-cores", psutil.cpu_count(logical=False) or 1)
    return tvm.target.Target(config)


def host_target() -> tvm.target.Target:
    """LLVM for this machine's CPU: what standalone kernels (tests, kernel benchmarks) compile
    for when no hardware target is given."""
    return resolve_tvm_target({"kind": "llvm", "mcpu": NATIVE_CPU})


#: The VNNI instruction's blocking (16 output lanes x 4 reduction elements, u8 activations)
#: for the generic GEMM kernels of :mod:`lcpaq.backends.common.gemm_te`.
VNNI_BLOCKING = gemm_te.Blocking(LANES, DEPTH, "uint8")


def pack_weight(w_q: torch.Tensor) -> np.ndarray:
    """``[N, K]`` int8 codes to the ``[N/16, K/4, 16, 4]`` layout; N and K must be multiples of 16 and 4."""
    return gemm_te.pack_weight(w_q, VNNI_BLOCKING)


def dense_compute(m: int, n: int, k: int) -> tuple[te.Tensor, te.Tensor, te.Tensor]:
    """TE of ``C[i, j] = sum_k int32(X[i, k]) * int32(W[j, k])`` with W packed; returns (X, W, C)."""
    return gemm_te.dense_compute(m, n, k, VNNI_BLOCKING)


def tensorize_dense_block(sch: s_tir.Schedule, block: Any, row_tile: int = 4, epilogue: Any = None) -> None:
    """:func:`lcpaq.backends.common.gemm_schedule.tensorize_dense_block` with the VNNI blocking
    and :data:`VNNI_INTRIN`: ``(i_o, j_o) parallel, k_o, i_i, [16 x 4 -> vpdpbusd]``."""
    gemm_schedule.tensorize_dense_block(sch, block, VNNI_BLOCKING, VNNI_INTRIN, row_tile, epilogue)


@dataclass
class Kernel:
    """A compiled TVM kernel: call it with TVM tensors; ``asm`` is its x86 assembly."""

    executable: Any
    func_name: str = "main"

    def __call__(self, *args: Any) -> None:
        self.executable[self.func_name](*args)

    @property
    def asm(self) -> str:
        return self.executable.mod.inspect_source("asm")

    def time_ms(self, *args: Any, repeat: int = 10, number: int = 5, cold: bool = False) -> float:
        """Median wall time of one call, in milliseconds. ``cold``: every argument but the first
        (the activation) is flushed from the CPU caches before each call, one call per repeat,
        as inside a whole model, whose weights are read once per inference and do not stay cached."""
        if cold:
            f = self.executable.mod.time_evaluator(
                self.func_name, tvm.cpu(), number=1, repeat=repeat * number, f_preproc="cache_flush_cpu_non_first_arg"
            )
        else:
            f = self.executable.mod.time_evaluator(self.func_name, tvm.cpu(), number=number, repeat=repeat)
        return float(np.median(f(*args).results) * 1e3)


def build(mod: Any, target: tvm.target.Target | None = None) -> Kernel:
    """Compile a scheduled TIR module for ``target`` (default: :func:`host_target`) and wrap it."""
    return Kernel(tvm.compile(mod, target=target or host_target()))


def build_dense_u8s8s32(m: int, n: int, k: int) -> Kernel:
    """VNNI-tensorized ``[m, k] u8 x [n, k] s8 -> [m, n] s32`` dense (weights packed, untuned).

    Arguments at call time: X ``[m, k]`` uint8, W ``[n/16, k/4, 16, 4]`` int8, C ``[m, n]`` int32."""
    x, w, c = dense_compute(m, n, k)
    sch = s_tir.Schedule(te.create_prim_func([x, w, c]))
    tensorize_dense_block(sch, sch.get_sblock("dense"))
    return build(sch.mod)


def to_tvm(t: torch.Tensor | np.ndarray, dtype: str | None = None) -> Any:
    """A host TVM tensor holding a copy of ``t`` (optionally cast to numpy ``dtype``)."""
    a = t.numpy() if isinstance(t, torch.Tensor) else t
    return tvm.runtime.tensor(np.ascontiguousarray(a if dtype is None else a.astype(dtype)), tvm.cpu())


def dense_u8s8s32(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """``x_q[M, K] (u8 codes) @ w_q[N, K]^T (s8 codes)`` as int32 via the VNNI kernel; bit-exact."""
    m, k = x_q.shape
    n = w_q.shape[0]
    kernel = build_dense_u8s8s32(m, n, k)
    out = to_tvm(np.zeros((m, n), np.int32))
    kernel(to_tvm(x_q, "uint8"), to_tvm(pack_weight(w_q)), out)
    return torch.from_numpy(out.numpy())
