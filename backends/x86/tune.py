"""The x86 backend's MetaSchedule rules and targets (the tuning driver is generic:
:mod:`lcpaq.backends.common.tuning`).

TVM's target-derived rules for a VNNI CPU tensorize with its own ``dot_16x4_vnni``, which does not
build in 0.27 (see :mod:`lcpaq.backends.x86.vnni`), so the rules are given explicitly: the generic
llvm rules, with :class:`MultiLevelTilingWithIntrin` on our corrected :data:`VNNI_INTRIN` in place
of plain multi-level tiling (so every candidate of an int8 kernel is tensorized: with both, a
short search could keep an untensorized one), the ``RewriteTensorize`` postproc that lowers
the tensorized blocks, and :class:`RequireTensorized`, which rejects a candidate it left scalar.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.schedule_rule import MultiLevelTiling, MultiLevelTilingWithIntrin, ReuseType
from tvm.ir.utils import derived_object

from lcpaq.backends.common.tuning import TuningRules, tune_schedule
from lcpaq.backends.x86.vnni import VNNI_INTRIN, Kernel, build, register_vnni_intrinsic, to_tvm

#: The LLVM intrinsic a tensorized int8 kernel calls.
_VNNI_CALL = "llvm.x86.avx512.vpdpbusd.512"


@derived_object
class RequireTensorized(ms.postproc.PyPostproc):
    """Rejects a candidate whose int8 core is not tensorized: ``RewriteTensorize`` only warns
    when an annotated block fails to tensorize and leaves it as scalar loops, so a short search
    could otherwise keep such a candidate."""

    def _initialize_with_tune_context(self, context: Any) -> None:
        pass

    def apply(self, sch: s_tir.Schedule) -> bool:
        return _VNNI_CALL in sch.mod.script()

    def clone(self) -> "RequireTensorized":
        return RequireTensorized()


def vnni_rules() -> tuple[list[Any], list[Any]]:
    """(schedule rules, postprocs) for u8 x s8 -> s32 blocks: tensorize with :data:`VNNI_INTRIN`."""
    register_vnni_intrinsic()
    rules: list[Any] = []
    for rule in ms.ScheduleRule.create("llvm"):
        if isinstance(rule, MultiLevelTiling):  # replaced: every candidate is tensorized with VNNI
            rule = MultiLevelTilingWithIntrin(
                VNNI_INTRIN, structure="SSRSRS", max_innermost_factor=64,
                reuse_write=ReuseType(req="may", levels=[1, 2], scope="global"),
            )
        rules.append(rule)
    postprocs = [
        ms.postproc.DisallowDynamicLoop(),
        ms.postproc.RewriteParallelVectorizeUnroll(),
        ms.postproc.RewriteReductionBlock(),
        ms.postproc.RewriteTensorize(vectorize_init_loop=True),
        RequireTensorized(),
    ]
    return rules, postprocs


def _build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> Any:
    """MetaSchedule builder function: TVM's default one minus its ``import tvm.s_tir.tensor_intrin``,
    which takes about 30 s and runs in every fresh builder worker (the pool restarts each batch),
    so candidates time out. Candidates arrive with tensor intrinsics already inlined."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target).mod


def tuning_rules(int8: bool) -> TuningRules:
    """The x86 search space: VNNI tensorization for int8 kernels, TVM's llvm rules for fp32."""
    if int8:
        rules, postprocs = vnni_rules()
    else:
        rules, postprocs = list(ms.ScheduleRule.create("llvm")), list(ms.Postproc.create("llvm"))
    return TuningRules(rules, postprocs, "llvm", _build_candidate)


def tune(func: tvm.tirx.PrimFunc, trials: int, int8: bool, target: tvm.target.Target, work_dir: str | None = None,
         seed: int = 0) -> Kernel:
    """Tune ``func`` for ``target`` (``trials`` candidates) and build the best schedule."""
    return build(tune_schedule(func, trials, target, tuning_rules(int8), work_dir, seed).mod, target)


def random_args(func: tvm.tirx.PrimFunc) -> list[Any]:
    """Arguments for timing ``func``: random codes for 8-bit buffers, ones for int32 parameter
    vectors (any shift >= 1 is valid), zeros for float and for the output."""
    gen = np.random.default_rng(0)
    args = []
    for param in func.params:
        shape, dtype = [int(d) for d in param.ty.shape], str(param.ty.dtype)  # TVM 0.27: the param's BufferType
        if dtype in ("uint8", "int8"):
            lo, hi = (0, 256) if dtype == "uint8" else (-127, 128)
            a = gen.integers(lo, hi, size=shape).astype(dtype)
        elif dtype == "int32":
            a = np.ones(shape, dtype)
        else:
            a = np.zeros(shape, dtype)
        args.append(to_tvm(a))
    return args


def kernel_ms(sch: s_tir.Schedule, target: tvm.target.Target, repeat: int = 10) -> float:
    """Median milliseconds of the built schedule on random arguments, cold weights (as in a model)."""
    kernel = build(sch.mod, target)
    args = random_args(sch.mod["main"])
    kernel(*args)
    return kernel.time_ms(*args, repeat=repeat, number=1, cold=True)
