"""MetaSchedule tuning of the int8 (VNNI) and fp32 kernels for the x86 host.

TVM's target-derived rules for a VNNI CPU tensorize with its own ``dot_16x4_vnni``, which does not
build in 0.27 (see :mod:`lcpaq.backends.tvm_vnni`), so we pass the rules explicitly: the generic
llvm rules, with :class:`MultiLevelTilingWithIntrin` on our corrected :data:`VNNI_INTRIN` ahead of
plain multi-level tiling, and the ``RewriteTensorize`` postproc that lowers the tensorized blocks.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import psutil
import tvm
from tvm import s_tir, te
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.schedule_rule import MultiLevelTiling, MultiLevelTilingWithIntrin, ReuseType

from lcpaq.backends.tuning_db import open_database
from lcpaq.backends.tvm_vnni import VNNI_INTRIN, Kernel, build, register_vnni_intrinsic, x86_target


def tuning_target() -> tvm.target.Target:
    """The x86 host target plus ``num-cores`` (physical cores), which MetaSchedule requires."""
    config = dict(x86_target().export())
    config["num-cores"] = psutil.cpu_count(logical=False) or 1
    return tvm.target.Target(config)


def vnni_rules() -> tuple[list[Any], list[Any]]:
    """(schedule rules, postprocs) for u8 x s8 -> s32 blocks: tensorize with :data:`VNNI_INTRIN`."""
    register_vnni_intrinsic()
    rules: list[Any] = []
    for rule in ms.ScheduleRule.create("llvm"):
        if isinstance(rule, MultiLevelTiling):
            rules.append(
                MultiLevelTilingWithIntrin(
                    VNNI_INTRIN,
                    structure="SSRSRS",
                    max_innermost_factor=64,
                    reuse_write=ReuseType(req="may", levels=[1, 2], scope="global"),
                )
            )
        rules.append(rule)
    postprocs = [
        ms.postproc.DisallowDynamicLoop(),
        ms.postproc.RewriteParallelVectorizeUnroll(),
        ms.postproc.RewriteReductionBlock(),
        ms.postproc.RewriteTensorize(vectorize_init_loop=True),
    ]
    return rules, postprocs


def _build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> Any:
    """MetaSchedule builder function: TVM's default one minus its ``import tvm.s_tir.tensor_intrin``,
    which takes about 30 s and runs in every fresh builder worker (the pool restarts each batch),
    so candidates time out. Candidates arrive with tensor intrinsics already inlined."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target).mod


def _drop_unnamed_handlers() -> None:
    """MetaSchedule's logging setup lists the names of the handlers already on its logger and
    crashes (``'NoneType' object has no attribute 'format'``) on an unnamed one, which is there
    on a second ``tune_tir`` in one process (seen under pytest). Drop those before tuning."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in [h for h in logger.handlers if h.get_name() is None]:
        logger.removeHandler(handler)


def tune(func: tvm.tirx.PrimFunc, trials: int, int8: bool, work_dir: str | None = None, seed: int = 0) -> Kernel:
    """Tune ``func`` with MetaSchedule (``trials`` measured candidates) and build the best schedule.

    ``int8=True`` uses :func:`vnni_rules`; otherwise TVM's generic llvm rules. With ``work_dir``
    the records go to the database there, opened by :func:`lcpaq.backends.tuning_db.open_database`
    (checked first: CorruptFileError if corrupt or foreign; a fresh one gets its ``meta.json``);
    without, to a temporary one. Guarantees a built kernel computing ``func``; raises RuntimeError
    if no candidate was valid."""
    return build(tune_schedule(func, trials, int8, work_dir, seed).mod, tuning_target())


def tune_schedule(func: tvm.tirx.PrimFunc, trials: int, int8: bool, work_dir: str | None = None, seed: int = 0) -> s_tir.Schedule:
    """The best schedule of ``func`` that MetaSchedule finds in ``trials`` candidates (see :func:`tune`)."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    target = tuning_target()
    if int8:
        rules, postprocs = vnni_rules()
    else:
        rules, postprocs = ms.ScheduleRule.create("llvm"), ms.Postproc.create("llvm")
    space = ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs, mutator_probs="llvm")
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    _drop_unnamed_handlers()
    with tempfile.TemporaryDirectory() as tmp:
        database = ms.tune_tir(
            mod,
            target,
            work_dir or tmp,
            database=open_database(Path(work_dir), target) if work_dir else "json",
            max_trials_global=trials,
            num_trials_per_iter=min(trials, 16),
            space=space,
            builder=ms.builder.LocalBuilder(f_build=_build_candidate, timeout_sec=120),
            runner=ms.runner.LocalRunner(timeout_sec=60),
            seed=seed,
        )
        sch = ms.tir_integration.compile_tir(database, mod, target)
    if sch is None:
        raise RuntimeError("MetaSchedule found no valid schedule (every candidate failed to build or run)")
    return sch


def schedule_from_database(func: tvm.tirx.PrimFunc, work_dir: Path, int8: bool) -> s_tir.Schedule | None:
    """The tuned schedule of ``func`` recorded in the MetaSchedule database in ``work_dir``, or None
    (no database there, or no record of this workload). The database is checked first: a corrupt
    or foreign one is CorruptFileError naming its path, never used."""
    if not work_dir.is_dir():
        return None
    if int8:
        register_vnni_intrinsic()
    target = tuning_target()
    db = open_database(work_dir, target)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return ms.tir_integration.compile_tir(db, mod, target)


def cached_schedule(func: tvm.tirx.PrimFunc, trials: int, int8: bool, work_dir: Path) -> s_tir.Schedule:
    """From the database in ``work_dir`` when it has ``func``; else tuned (``trials`` candidates)
    with the records kept in ``work_dir``, so the next call costs no tuning."""
    sch = schedule_from_database(func, work_dir, int8)
    if sch is not None:
        return sch
    work_dir.mkdir(parents=True, exist_ok=True)
    return tune_schedule(func, trials, int8, str(work_dir))


def _random_args(func: tvm.tirx.PrimFunc) -> list[Any]:
    """Arguments for timing ``func``: random codes for 8-bit buffers, ones for int32 parameter
    vectors (any shift >= 1 is valid), zeros for float and for the output."""
    import numpy as np

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
        args.append(tvm.runtime.tensor(a, tvm.cpu()))
    return args


def faster_schedule(candidates: list[s_tir.Schedule], repeat: int = 10) -> tuple[s_tir.Schedule, list[float]]:
    """The candidate schedule (of one PrimFunc) whose build runs fastest here, and each one's
    median milliseconds (cold weights, as in a model). Tuning with few trials can lose to a good
    hand schedule: a build never gets slower by tuning when it keeps the faster of the two."""
    target = tuning_target()
    times = []
    for sch in candidates:
        kernel = build(sch.mod, target)
        args = _random_args(sch.mod["main"])
        kernel(*args)
        times.append(kernel.time_ms(*args, repeat=repeat, number=1, cold=True))
    best = min(range(len(candidates)), key=times.__getitem__)
    return candidates[best], times


def fp32_dense_func(m: int, n: int, k: int) -> tvm.tirx.PrimFunc:
    """``Y[m, n] = X[m, k] @ W[n, k]^T`` in float32."""
    x = te.placeholder((m, k), "float32", name="X")
    w = te.placeholder((n, k), "float32", name="W")
    r = te.reduce_axis((0, k), name="k")
    y = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="dense")
    return te.create_prim_func([x, w, y])


def fp32_conv2d_func(shape: tuple[int, int, int, int], out_channels: int, kernel: int, padding: int) -> tvm.tirx.PrimFunc:
    """NHWC float32 conv2d (stride 1) with OHWI weights, zero padding."""
    b, h, w_, c = shape
    x = te.placeholder(shape, "float32", name="X")
    wt = te.placeholder((out_channels, kernel, kernel, c), "float32", name="W")
    oh, ow = h + 2 * padding - kernel + 1, w_ + 2 * padding - kernel + 1
    xp = te.compute(
        (b, h + 2 * padding, w_ + 2 * padding, c),
        lambda n, i, j, ch: tvm.tirx.if_then_else(
            tvm.tirx.all(i >= padding, i < h + padding, j >= padding, j < w_ + padding),
            x[n, i - padding, j - padding, ch],
            tvm.tirx.const(0.0, "float32"),
        ),
        name="pad",
    )
    rh, rw, rc = te.reduce_axis((0, kernel), "rh"), te.reduce_axis((0, kernel), "rw"), te.reduce_axis((0, c), "rc")
    y = te.compute(
        (b, oh, ow, out_channels),
        lambda n, i, j, o: te.sum(xp[n, i + rh, j + rw, rc] * wt[o, rh, rw, rc], axis=[rh, rw, rc]),
        name="conv",
    )
    return te.create_prim_func([x, wt, y])
