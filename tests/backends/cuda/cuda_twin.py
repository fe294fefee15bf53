"""The CUDA backend's lowering compiled for this CPU: its Relax module (implicit-GEMM convs with
their im2col view, padded rows, packed weights, depthwise and code kernels) built for LLVM with
the GEMM kernels' computations left unscheduled, to compare with the integer reference where no
GPU is (the tensor-core schedule itself is checked by ``cuda_emulator.py``)."""
from __future__ import annotations

from typing import Any

import torch
import tvm
from tvm import s_tir

from lcpaq.backends.common.backend import Device
from lcpaq.backends.common.build import BuiltModel
from lcpaq.backends.common.code_kernels import schedule_elementwise
from lcpaq.backends.common.cpu_pipeline import compile_module
from lcpaq.backends.common.integerize import integerize
from lcpaq.backends.common.relax_lower import lower_to_relax
from lcpaq.backends.cuda.backend import CudaTensorCoreBackend

CPU = tvm.target.Target({"kind": "llvm"})


class CpuTwin(CudaTensorCoreBackend):
    """The CUDA family's lowerings and kernel computations, compiled for this CPU."""

    def schedule_gemm(self, func: tvm.tirx.PrimFunc, tvm_target: tvm.target.Target) -> Any:
        return s_tir.Schedule(func)

    def code_schedule(self) -> Any:
        return schedule_elementwise

    def compile(self, mod: tvm.IRModule, target: tvm.target.Target) -> Any:
        return compile_module(mod, CPU)


def twin_build(gm: torch.fx.GraphModule, xs: list[torch.Tensor]) -> BuiltModel:
    twin = CpuTwin()
    ig = integerize(gm, twin.conventions)
    shapes, dtypes = [tuple(x.shape) for x in xs], [str(x.dtype).removeprefix("torch.") for x in xs]
    fallbacks: dict[str, str] = {}
    mod = lower_to_relax(ig, shapes, twin, CPU, 0, dtypes, float_fallbacks=fallbacks)
    return BuiltModel(twin.compile(mod, CPU), Device(tvm.cpu(0)), shapes, "nvidia-sm90", 0, ig, dtypes, {}, fallbacks, twin)


