"""The CPU families' Relax compilation pipeline: TVM's CPU pipeline plus default schedules.

TVM's default CPU pipeline legalizes Relax ops (bias adds, ReLUs, layer norms, softmax, layout
changes) into TIR and fuses them, but schedules nothing: each fused function runs as one serial,
scalar loop nest. Here, after fusion, every PrimFunc not already scheduled (our kernels are) gets
a default schedule: dlight's CPU rules for reductions and GEMV, else :class:`SpatialFallback`
(intermediate blocks inlined, the output block's loops fused, 16 lanes vectorized, the rest
parallel). A schedule that cannot be applied leaves the function as it was.
"""
from __future__ import annotations

from typing import Any

import tvm
from tvm import s_tir
from tvm.relax.backend.cpu_generic import pipeline as cpu
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.base import ScheduleRule

from lcpaq.backends.common.code_kernels import schedule_blocks


class SpatialFallback(ScheduleRule):
    """Inline what can be inlined; the remaining spatial blocks: loops fused, the innermost
    ``gcd(extent, 16)`` vectorized, the rest parallel; reduction blocks: leading loop parallel."""

    def apply(self, func: tvm.tirx.PrimFunc, target: Any, tunable: bool) -> s_tir.Schedule | None:  # noqa: ARG002
        if not isinstance(func, tvm.tirx.PrimFunc):
            return None
        try:
            sch = s_tir.Schedule(func)
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
            for block in blocks[:-1]:
                try:
                    sch.compute_inline(block)
                except Exception:  # noqa: BLE001 (not inlinable: scheduled below on its own)
                    pass
            schedule_blocks(sch)
            return sch
        except Exception:  # noqa: BLE001 (leave the function unscheduled rather than fail the build)
            return None


def lcpaq_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CPU pipeline with default schedules applied between fusion and lowering."""

    @tvm.transform.module_pass(opt_level=0, name="LcpaqRelaxPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu.library_dispatch_passes(target)
                + cpu.legalize_passes(target)
                + [dl.ApplyDefaultSchedule(dl.cpu.Reduction(), dl.cpu.GEMV(), SpatialFallback())]
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline


def compile_module(mod: tvm.IRModule, target: tvm.target.Target) -> Any:
    """``tvm.compile`` with :func:`lcpaq_pipeline`."""
    return tvm.compile(mod, target=target, relax_pipeline=lcpaq_pipeline(target))


__all__ = ["SpatialFallback", "compile_module", "lcpaq_pipeline"]
