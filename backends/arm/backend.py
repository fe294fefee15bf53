"""The Arm backend family (``backend = "arm-dotprod"``): int8 on the Armv8.2 dot-product
instructions (s8 x s8 -> s32 ``sdot``), depthwise convs on NEON vectors, float glue on TVM's CPU
pipeline; cross-compiled on this machine (TVM's LLVM for the target triple, linked by
:mod:`lcpaq.backends.arm.toolchain`) and run on a board over TVM RPC (``--rpc`` or
``--tracker``/``--key``; an emulated board: `make arm-board`)."""
from __future__ import annotations

from typing import Any

import torch.fx as fx
import tvm

from lcpaq.backends.arm.dotprod import SDOT_BLOCKING
from lcpaq.backends.arm.lowerings import LOWERINGS
from lcpaq.backends.arm.timing import ArmLayerTimer
from lcpaq.backends.arm.toolchain import aarch64_linker, cross_compiler
from lcpaq.backends.common import integer_layers
from lcpaq.backends.common.backend import Backend, Conventions, LayerTimer, register_backend
from lcpaq.backends.common.cpu_pipeline import compile_module
from lcpaq.backends.common.relax_lower import LoweringTable
from lcpaq.hw_targets.target import Target
from lcpaq.ir.layers import QuantLayer

#: Cores of the boards this family targets (MetaSchedule asks; the runtime uses what it finds).
DEFAULT_CORES = 4


@register_backend
class ArmDotprodBackend(Backend):
    name = "arm-dotprod"
    conventions = Conventions(act_dtype="int8", integer_bits=8, in_multiple=SDOT_BLOCKING.depth, out_multiple=SDOT_BLOCKING.lanes,
                              integer_glue=True)
    integer_kernels = {"conv": (8,), "linear": (8,), "matmul": (8,)}

    def has_integer_kernel(self, gm: fx.GraphModule, layer: QuantLayer) -> bool:
        return integer_layers.has_integer_kernel(gm, layer, grouped_convs=False)

    def tvm_target(self, target: Target) -> tvm.target.Target:
        config = dict(target.tvm_target)
        config.setdefault("num-cores", DEFAULT_CORES)
        return tvm.target.Target(config)

    @property
    def lowerings(self) -> LoweringTable:
        return LOWERINGS

    def compile(self, mod: tvm.IRModule, target: tvm.target.Target) -> Any:
        return compile_module(mod, target)

    def check_toolchain(self, target: Target) -> None:
        aarch64_linker()

    def export(self, executable: Any, path: str) -> None:
        executable.export_library(path, fcompile=cross_compiler())

    def layer_timer(self, target: Target, trials: int, repeats: int, number: int, seed: int) -> LayerTimer:
        return ArmLayerTimer(self, target, repeats, number, seed)
