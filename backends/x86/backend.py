"""The x86 backend family (``backend = "x86-vnni"``): int8 on AVX-512 VNNI (u8 x s8 -> s32),
16-bit dense convs and linears on ``vpdpwssd`` (int16 pairs, exact int64 sums),
depthwise convs on AVX-512, fp32 kernels for float layers, TVM's CPU Relax pipeline with
default schedules, MetaSchedule tuning with the corrected VNNI intrinsic, run on this host."""
from __future__ import annotations

from typing import Any, Callable

import torch.fx as fx
import tvm

from lcpaq.backends.common.backend import Backend, Conventions, LayerTimer, register_backend
from lcpaq.backends.common import integer_layers
from lcpaq.backends.common.integer_forms import wide_form
from lcpaq.backends.common.cpu_pipeline import compile_module
from lcpaq.backends.common.relax_lower import LoweringTable
from lcpaq.backends.common.tuning import cached_schedule, faster_schedule, tuning_dir
from lcpaq.backends.x86.lowerings import LOWERINGS
from lcpaq.backends.x86.timing import X86LayerTimer
from lcpaq.backends.x86.tune import kernel_ms, tuning_rules
from lcpaq.backends.x86.vnni import DEPTH, LANES, resolve_tvm_target
from lcpaq.hw_targets.target import Target
from lcpaq.ir.layers import QuantLayer
from lcpaq.ir.meta import BitAssignment


@register_backend
class X86VnniBackend(Backend):
    name = "x86-vnni"
    conventions = Conventions(act_dtype="uint8", integer_bits=8, wide_bits=16, in_multiple=DEPTH, out_multiple=LANES, integer_glue=True)
    integer_kernels = {"conv": (8, 16), "linear": (8, 16), "matmul": (8, 16)}
    tunable = True

    def has_integer_kernel(self, gm: fx.GraphModule, layer: QuantLayer) -> bool:
        return integer_layers.has_integer_kernel(gm, layer)

    def layer_executes(self, gm: fx.GraphModule, layer: QuantLayer, bits: BitAssignment) -> bool:
        """The 16-bit kernels compute linears and convs with groups = 1 only."""
        if max(bits.w_bits, bits.a_bits) > 8 and layer.kind == "conv" and not wide_form(layer.node):
            return False
        return self.executes(layer.kind, bits)

    def tvm_target(self, target: Target) -> tvm.target.Target:
        return resolve_tvm_target(target.tvm_target)

    @property
    def lowerings(self) -> LoweringTable:
        return LOWERINGS

    def compile(self, mod: tvm.IRModule, target: tvm.target.Target) -> Any:
        return compile_module(mod, target)

    def kernel_schedule(self, tag: str, trials: int, tvm_target: tvm.target.Target,
                        choices: dict[str, str]) -> Callable[[Any, Callable[[Any], Any]], Any]:
        """The tuned schedule (from or into the tuning cache) or the hand one, whichever runs
        faster here (cold weights); the choice is recorded in ``choices[tag]``."""

        def schedule(func: Any, hand: Callable[[Any], Any]) -> Any:
            tuned = cached_schedule(func, trials, tvm_target, tuning_rules(int8=True), tuning_dir(tvm_target, tag, trials))
            best, _ = faster_schedule([tuned, hand(func)], lambda sch: kernel_ms(sch, tvm_target))
            choices[tag] = "tuned" if best is tuned else "hand"
            return best

        return schedule

    def layer_timer(self, target: Target, trials: int, repeats: int, number: int, seed: int) -> LayerTimer:
        return X86LayerTimer(self.tvm_target(target), trials, repeats, number, seed)
