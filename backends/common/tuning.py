"""MetaSchedule tuning of one TIR kernel, for any backend: the backend supplies its TVM target
and its search rules (:class:`TuningRules`); records go to a checked database on disk
(:mod:`lcpaq.backends.common.tuning_db`) under :func:`tuning_dir`, one directory per target and
kernel, so a second build or profile reuses them.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from lcpaq.backends.common.tuning_db import open_database, target_json
from lcpaq.ir.fileio import cache_dir


@dataclass(frozen=True)
class TuningRules:
    """A backend's MetaSchedule search space: schedule rules, postprocessors, mutator
    probabilities (a TVM target kind name or a dict), and the candidate builder function
    (None: MetaSchedule's default)."""

    rules: list[Any] = field(default_factory=list)
    postprocs: list[Any] = field(default_factory=list)
    mutator_probs: Any = "llvm"
    build_candidate: Callable[..., Any] | None = None


def tuning_dir(target: tvm.target.Target, tag: str, trials: int) -> Path:
    """Where the records of kernel ``tag`` tuned with ``trials`` for ``target`` are kept:
    ``cache_dir()/tuning/<kind>-<hash of the target's JSON>/<tag>-t<trials>``."""
    digest = hashlib.sha256(target_json(target).encode()).hexdigest()[:12]
    return cache_dir() / "tuning" / f"{target.kind.name}-{digest}" / f"{tag}-t{trials}"


def _drop_unnamed_handlers() -> None:
    """MetaSchedule's logging setup lists the names of the handlers already on its logger and
    crashes (``'NoneType' object has no attribute 'format'``) on an unnamed one, which is there
    on a second ``tune_tir`` in one process (seen under pytest). Drop those before tuning."""
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in [h for h in logger.handlers if h.get_name() is None]:
        logger.removeHandler(handler)


def _module(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def tune_schedule(func: tvm.tirx.PrimFunc, trials: int, target: tvm.target.Target, rules: TuningRules,
                  work_dir: str | Path | None = None, seed: int = 0) -> s_tir.Schedule:
    """The best schedule of ``func`` MetaSchedule finds in ``trials`` measured candidates. With
    ``work_dir`` the records go to the database there (checked first: CorruptFileError if corrupt
    or foreign; a fresh one gets its ``meta.json``); without, to a temporary one. Raises
    RuntimeError if no candidate was valid."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    space = ms.space_generator.PostOrderApply(sch_rules=rules.rules, postprocs=rules.postprocs, mutator_probs=rules.mutator_probs)
    builder = ms.builder.LocalBuilder(f_build=rules.build_candidate, timeout_sec=120) if rules.build_candidate else "local"
    mod = _module(func)
    _drop_unnamed_handlers()
    with tempfile.TemporaryDirectory() as tmp:
        database = ms.tune_tir(
            mod, target, str(work_dir or tmp),
            database=open_database(Path(work_dir), target) if work_dir else "json",
            max_trials_global=trials, num_trials_per_iter=min(trials, 16), space=space, builder=builder,
            runner=ms.runner.LocalRunner(timeout_sec=60), seed=seed,
        )
        sch = ms.tir_integration.compile_tir(database, mod, target)
        if sch is None:
            raise RuntimeError("MetaSchedule found no valid schedule (every candidate failed to build or run)"
                               + _first_error(Path(work_dir or tmp) / "logs"))
    return sch


def _first_error(logs: Path) -> str:
    """``: <the first error>`` of MetaSchedule's task logs under ``logs`` ('' if none): its
    header line and the last line of the traceback that follows it, which names the exception."""
    for log in sorted(logs.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if "Error" in line and "Build errors" not in line:
                detail = [ln.strip() for ln in lines[i + 1: i + 60] if ln.strip() and not ln.startswith("20")]
                return f": {line.strip()[:200]}" + (f" ... {detail[-1][:300]}" if detail else "")
    return ""


def schedule_from_database(func: tvm.tirx.PrimFunc, work_dir: Path, target: tvm.target.Target) -> s_tir.Schedule | None:
    """The tuned schedule of ``func`` recorded in the database in ``work_dir``, or None (no
    database there, or no record of this workload). A corrupt or foreign database is
    CorruptFileError naming its path, never used."""
    if not work_dir.is_dir():
        return None
    return ms.tir_integration.compile_tir(open_database(work_dir, target), _module(func), target)


def cached_schedule(func: tvm.tirx.PrimFunc, trials: int, target: tvm.target.Target, rules: TuningRules,
                    work_dir: Path) -> s_tir.Schedule:
    """From the database in ``work_dir`` when it has ``func``; else tuned (``trials`` candidates)
    with the records kept in ``work_dir``, so the next call costs no tuning."""
    sch = schedule_from_database(func, work_dir, target)
    if sch is not None:
        return sch
    work_dir.mkdir(parents=True, exist_ok=True)
    return tune_schedule(func, trials, target, rules, work_dir)


def faster_schedule(candidates: list[s_tir.Schedule], time_ms: Callable[[s_tir.Schedule], float]) -> tuple[s_tir.Schedule, list[float]]:
    """The candidate schedule (of one PrimFunc) that ``time_ms`` finds fastest, and each one's
    time. Tuning with few trials can lose to a good hand schedule: a build never gets slower by
    tuning when it keeps the faster of the two."""
    times = [time_ms(sch) for sch in candidates]
    best = min(range(len(candidates)), key=times.__getitem__)
    return candidates[best], times
