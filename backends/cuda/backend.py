"""The NVIDIA GPU backend family (``backend = "cuda-tensorcore"``): int8 convs and linears on
tensor cores (WMMA 16 x 16 x 16, s8 x s8 -> s32; ``dp4a`` on GPUs without them) with the
requantization fused into each kernel's epilogue, depthwise convs and integer glue on direct
kernels, float glue scheduled by TVM's dlight GPU rules. Compiled on any machine with ``nvcc`` (no GPU needed): the exported
library carries fatbins (:mod:`lcpaq.backends.cuda.fatbin`), so a GPU machine needs only the
TVM runtime to run it. Targets say ``[device] kind = "cuda"``: a CUDA GPU of this machine.
"""
from __future__ import annotations

from typing import Any

import torch.fx as fx
import tvm

from lcpaq.backends.common import integer_layers
from lcpaq.backends.common.backend import Backend, Conventions, Device, LayerTimer, register_backend
from lcpaq.backends.common.relax_lower import LoweringTable
from lcpaq.backends.cuda import fatbin, wmma
from lcpaq.backends.cuda.lower_gemm import CHANNEL_MULTIPLE
from lcpaq.backends.cuda.dp4a import gemm_schedule_for
from lcpaq.backends.cuda.lowerings import LOWERINGS
from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import QuantLayer

#: How libraries and layer timings get to and from a GPU machine when this one has no GPU.
RUN_ELSEWHERE = ("`python -m lcpaq.tools.gpu_bundle` writes the libraries (and, with --profile, the layer kernels), "
                 "`python tools/gpu_bench.py` runs and times them there (docs/gpu_latency.md)")


def gpu_here() -> bool:
    """Whether this process can run CUDA kernels (TVM's CUDA runtime and a GPU)."""
    try:
        return bool(tvm.runtime.enabled("cuda")) and bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 (no driver: TVM raises while probing)
        return False


@register_backend
class CudaTensorCoreBackend(Backend):
    name = "cuda-tensorcore"
    conventions = Conventions(act_dtype="int8", integer_bits=8, in_multiple=CHANNEL_MULTIPLE, out_multiple=wmma.TILE)
    integer_kernels = {"conv": (8,), "linear": (8,), "matmul": (8,)}

    def has_integer_kernel(self, gm: fx.GraphModule, layer: QuantLayer) -> bool:
        return integer_layers.has_integer_kernel(gm, layer, grouped_convs=False)

    def arch(self, target: Target) -> str:
        arch = target.tvm_target.get("arch")
        if not arch:
            raise ConfigError(f"target {target.name!r} names no CUDA arch ([tvm] arch = \"sm_90\")")
        return str(arch)

    def tvm_target(self, target: Target) -> tvm.target.Target:
        # the host code is plain x86-64: the GPU machine's CPU is not this one
        return tvm.target.Target(dict(target.tvm_target), host={"kind": "llvm"})

    def check_toolchain(self, target: Target) -> None:
        self.arch(target)
        fatbin.nvcc_path()

    def unavailable(self, target: Target) -> str | None:
        if target.device != "cuda":
            return f"target {target.name!r} is reached over {target.device!r}, which backend {self.name!r} does not support"
        if not gpu_here():
            return f"this machine has no CUDA GPU: {RUN_ELSEWHERE}"
        return None

    def device(self, target: Target) -> Device:
        self.check_available(target)
        return Device(tvm.cuda(0))

    @property
    def lowerings(self) -> LoweringTable:
        return LOWERINGS

    def schedule_gemm(self, func: tvm.tirx.PrimFunc, tvm_target: tvm.target.Target) -> Any:
        """A GEMM kernel's schedule for the target's arch: tensor cores, or dp4a without them
        (:func:`~lcpaq.backends.cuda.dp4a.gemm_schedule_for`)."""
        return gemm_schedule_for(str(tvm_target.arch))(func)

    def code_schedule(self) -> None:
        return None  # the CUDA pipeline's dlight rules schedule the code kernels

    def compile(self, mod: tvm.IRModule, target: tvm.target.Target) -> fatbin.CudaExecutable:
        """TVM's CUDA pipeline (dlight schedules what lcpaq did not), then nvcc for the arch."""
        return fatbin.CudaExecutable.compile(tvm.compile(mod, target=target), str(target.arch))

    def layer_timer(self, target: Target, trials: int, repeats: int, number: int, seed: int) -> LayerTimer:
        self.check_available(target)
        from lcpaq.backends.cuda.timing import CudaLayerTimer

        return CudaLayerTimer(self, target, repeats, number, seed)

    def device_name(self, target: Target) -> str:
        if gpu_here():
            return f"{tvm.cuda(0).device_name} ({target.tvm_target.get('arch')})"
        return target.description
