"""The Python API behind ``lcpaq quantize``: every CLI feature is reachable from here."""
from __future__ import annotations

import copy
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.fx as fx

import lcpaq.passes  # noqa: F401  (registers the passes)
from lcpaq.backends.common.backend import backend_for, runs_here
from lcpaq.backends.common.capability import capability_phase
from lcpaq.hw_targets.host import default_target_name
from lcpaq.hw_targets.target import OP_KINDS, Target, load_target
from lcpaq.ir.capture import capture
from lcpaq.ir.errors import ConfigError, LcpaqError, one_line
from lcpaq.ir.fileio import cache_dir
from lcpaq.ir.meta import MODEL_COST, BitAssignment
from lcpaq.passes.context import PassContext
from lcpaq.passes.instruments import DumpGraphs, PassInstrument, Timing
from lcpaq.passes.range_estimators import METHODS as CALIBRATION_METHODS
from lcpaq.passes.budgets import BOPS, SIZE, budget_options
from lcpaq.passes.cost_model import assignment_of, load_table, totals
from lcpaq.passes.ilp import ILPAssign
from lcpaq.passes.pipeline import (
    Pipeline, calibration_phase, ilp_phase, parse_spec, prepare_phase, sensitivity_phase, uniform_phase,
)
from lcpaq.ir.metrics import output_metrics, reference_outputs
from lcpaq.tools.export import export_path, onnx_entry
from lcpaq.tools.report import build_report, check_report_dir, write_report
from lcpaq.passes.distill import Distill
from lcpaq.passes.pareto import ParetoSweep
from lcpaq.tools.models.zoo import ModelBundle, load_model
from lcpaq.tools.search import CONFIRM, MODES, run_search, search_summary
from lcpaq.tools.search_study import check_storage
from lcpaq.tools.search_holdout import held_out_check, selection_split
from lcpaq.tools.search_harness import DEFAULT_PROXY, PROXIES, SearchHarness, calibrate_pass, config_pipeline, scheme_pass
from lcpaq.tools.search_space import SearchSpace



def parse_bits(text: str) -> BitAssignment:
    """``w4a8`` -> BitAssignment(4, 8); a bad or unsupported width is one ConfigError line."""
    match = re.fullmatch(r"[wW](\d+)[aA](\d+)", text.strip())
    if not match:
        raise ConfigError(f"bad precision {text!r}: write it as wNaM, for example w8a8 or w4a8")
    try:
        return BitAssignment(int(match[1]), int(match[2]))
    except ValueError as exc:
        raise ConfigError(f"bad precision {text!r}: {exc}") from exc


@dataclass
class Stopwatch:
    """Seconds per stage of a run. A stage opened inside another is kept apart, in ``nested``
    (named ``outer: inner``), so ``stages`` never overlap and their sum, ``total``, counts no
    second twice."""

    stages: dict[str, float] = field(default_factory=dict)
    nested: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.perf_counter
    _open: list[str] = field(default_factory=list, repr=False)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = self.clock()
        outer = list(self._open)
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            into, key = (self.nested, ": ".join([*outer, name])) if outer else (self.stages, name)
            into[key] = into.get(key, 0.0) + self.clock() - start

    @property
    def total(self) -> float:
        return sum(self.stages.values())


def load_bundle(model: str | ModelBundle, progress: bool = False) -> ModelBundle:
    """The bundle of a model spec (a bundle is returned as it is). Whatever a model's own code
    raises while it loads is one ConfigError line naming the model: ``model file x.py:build
    raised ValueError: ...``."""
    if isinstance(model, ModelBundle):
        return model
    try:
        return load_model(model, progress)
    except LcpaqError:
        raise
    except Exception as exc:  # noqa: BLE001 (a user's model function may raise anything)
        where = f"model file {model}" if ".py:" in model else f"model {model!r}"
        raise ConfigError(f"{where} raised {one_line(exc)}") from exc


@dataclass
class ConfigResult:
    """One quantized variant of the model: its graph, pipeline and measured quality."""

    label: str
    graph_module: fx.GraphModule
    pipeline: str
    metrics: dict[str, float]
    size_bytes: float
    bops: int


@dataclass
class QuantizeResult:
    report: dict[str, Any]
    prepared: fx.GraphModule
    results: list[ConfigResult]


def quantize(
    model: str | ModelBundle = "resnet-digits",
    target: str | Target | None = None,
    bits: str = "w8a8",
    compare: Sequence[str] = (),
    budget: Sequence[str] = (),
    calibration: str = "minmax",
    probes: int = 64,
    pipeline: str | None = None,
    search: str = "none",
    trials: int = 40,
    proxy: str = DEFAULT_PROXY,
    confirm: int = CONFIRM,
    space: str | Path | None = None,
    space_set: Sequence[str] = (),
    distill: int = 0,
    latency_table: str | Path | None = None,
    out: str | Path | None = None,
    dump_graphs: str | Path | None = None,
    progress: bool = False,
    seed: int = 0,
    build: bool | None = None,
    build_trials: int = 0,
    act_symmetric: bool = False,
    export: str | None = None,
    storage: str | None = None,
    study: str | None = None,
) -> QuantizeResult:
    """Capture, analyse, calibrate and fake-quantize ``model``; evaluate fp32, the primary
    configuration and each uniform ``compare`` configuration. The primary configuration is
    the ILP's mixed assignment when a ``budget`` is given (``["size=0.3x"]``), else uniform
    ``bits``, or a full ``pipeline`` spec. ``search="proxy"`` first searches the quantization
    hyperparameters (``space``) with TPE scored by ``proxy``, confirming its best ``confirm``
    on the validation metric; ``search="full"`` scores every trial on the validation metric (the
    baseline), ``search="haq"`` fine-tunes every trial briefly before scoring it (HAQ's protocol);
    ``storage`` (an optuna RDB URL, e.g. ``sqlite:///study.db``) keeps its trials in the stored
    ``study``, which an interrupted run resumes and other workers share. ``distill`` > 0 adds that
    many steps of distillation of the primary result.
    ``latency_table`` (from ``lcpaq profile``) enables latency budgets and the latency frontier.
    ``build`` (default: when the target is this host) compiles every configuration for the
    target with TVM (``build_trials`` MetaSchedule trials per kernel), checks it against the
    integer reference and reports its measured latency beside the table's prediction.
    ``act_symmetric`` quantizes activations symmetrically (signed codes, zero point 0), as
    TensorRT's explicit quantization wants. ``export="onnx"`` (with ``out``) also writes the
    primary result as ``out``/model.onnx, checked by ONNX Runtime (the report's ``onnx`` entry). With ``out``, report.json, report.md and the Pareto plots are written there as one set, after
    everything succeeded, replacing a previous report there whole (an ``out`` that cannot take
    the report is refused before any work: see :func:`~lcpaq.tools.report.check_report_dir`)."""
    # Validate every option before any heavy work, so a typo costs nothing and writes nothing.
    tgt = target if isinstance(target, Target) else load_target(target or default_target_name())
    if calibration not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {calibration!r}; choose from {', '.join(CALIBRATION_METHODS)}")
    onnx_path = export_path(out, export)  # a bad format or a missing out: before any work
    table = str(latency_table or "")
    table_data = load_table(table, tgt)  # a corrupt or foreign table is reported now; passes reuse this load
    if build_trials < 0:
        raise ConfigError(f"--build-trials must be >= 0, got {build_trials}")
    if build is None:
        build = runs_here(tgt)
    if build:
        backend_for(tgt).check_trials(build_trials)
    if build and tgt.remote is not None:
        backend_for(tgt).device(tgt)  # the board answers now, before any work (ConfigError naming it otherwise)
    budgets = budget_options(budget)
    if budgets.get("latency") and not table:
        board = " --rpc HOST:PORT" if tgt.device == "rpc" else ""
        real = " on a real board (timings under emulation are never written into a table)" if tgt.device == "rpc" else ""
        raise ConfigError(f"a latency budget needs a latency table measured on {tgt.name}'s device: run "
                          f"`lcpaq profile --model M --target {tgt.name}{board} --out table.json`{real} and give it with --latency-table")
    if budgets:
        ILPAssign(**budgets, table=table)  # checks every budget now, before any heavy work
    configs = ([] if budgets else [parse_bits(bits)]) + [parse_bits(b) for b in compare]
    for cfg in configs:
        for kind in OP_KINDS:
            tgt.check(kind, cfg)
    custom = parse_spec(pipeline) if pipeline else None
    search_space = _check_search(search, proxy, trials, confirm, space, space_set, budgets, custom, distill)
    if (storage or study) and search_space is None:
        raise ConfigError("--storage and --study keep a search's trials: they need --search proxy or full")
    if storage:
        check_storage(storage)  # an unusable storage is named now, before any work
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        check_report_dir(out_dir)  # a file, a foreign directory or a read-only place: refused before any work

    torch.manual_seed(seed)
    clock = Stopwatch()
    with clock.stage("load"):
        bundle = load_bundle(model, progress)
    with clock.stage("capture"):
        gm = capture(bundle.model, bundle.example_inputs, bundle.name)
    ctx = PassContext(
        tgt, bundle.example_inputs, bundle.calib_batches, progress, seed, calib_labels=bundle.calib_labels, cache_dir=cache_dir()
    )
    timing = Timing()
    instruments: list[PassInstrument] = [timing] + ([DumpGraphs(Path(dump_graphs))] if dump_graphs else [])

    with clock.stage("fp32 reference"):
        try:
            reference = reference_outputs(bundle.model, bundle.eval_batches)
            fp32_metrics = quality(bundle, reference, bundle.model)
        except LcpaqError:
            raise
        except Exception as exc:  # noqa: BLE001 (the user's model or evaluate function)
            raise ConfigError(f"model {bundle.name} raised {one_line(exc)} on its evaluation data") from exc
    run = _Run(bundle, tgt, ctx, reference, clock, instruments, table)
    extra: dict[str, Any] = {}
    if custom is not None:
        prepared, results = run.custom(gm, custom)
    elif search_space is not None:
        prepared, results, extra["search"] = run.searched(gm, budgets, search_space, configs, search, trials, proxy, seed,
                                                              storage, study, confirm)
    else:
        prepared, results = run.phases(gm, calibration, budgets, probes, configs, act_symmetric)

    if distill:
        first = results[0]
        with clock.stage("distill"):
            dgm = Pipeline([Distill(steps=distill)], instruments)(copy.deepcopy(first.graph_module), ctx).graph_module
        results.insert(1, run.measure(f"{first.label} + distill", dgm, f"{first.pipeline},distill{{steps={distill}}}"))
        extra["distillation"] = {
            "steps": distill, "seconds": round(clock.stages["distill"], 3), "before": first.metrics, "after": results[1].metrics,
        }

    if build:
        from lcpaq.backends.common.deploy import deploy

        with clock.stage("build and measure"):
            extra["deployment"] = {
                r.label: deploy(r.graph_module, bundle.example_inputs, bundle.model, tgt, table_data, build_trials) for r in results
            }
    staged = None
    if onnx_path is not None:  # written beside the folder first: the report replaces the folder whole
        onnx_path.parent.parent.mkdir(parents=True, exist_ok=True)  # as the report's own write does
        staged = Path(tempfile.mkdtemp(prefix=".lcpaq-onnx-", dir=onnx_path.parent.parent)) / onnx_path.name
        with clock.stage("onnx export"):
            extra["onnx"] = onnx_entry(results[0].graph_module, bundle, staged)
    report = build_report(bundle, tgt, prepared, fp32_metrics, results, clock.stages, timing.times)
    report.update(extra)
    if out_dir is not None:
        write_report(out_dir, report)
    if staged is not None:
        os.replace(staged, onnx_path)
        staged.parent.rmdir()
    return QuantizeResult(report, prepared, results)


def _check_search(search: str, proxy: str, trials: int, confirm: int, space: str | Path | None, space_set: Sequence[str],
                  budgets: dict[str, str], custom: list | None, distill: int) -> SearchSpace | None:
    """Validate the search options; the narrowed space, or None without a search."""
    if distill < 0:
        raise ConfigError(f"--distill takes a number of steps >= 0, got {distill}")
    if confirm < 1:
        raise ConfigError(f"--confirm must be >= 1, got {confirm}")
    if search not in ("none", *MODES):
        raise ConfigError(f"unknown search {search!r}; choose none, {', '.join(MODES)}")
    if search == "none":
        return None
    if proxy not in PROXIES:
        raise ConfigError(f"unknown proxy {proxy!r}; choose from {', '.join(PROXIES)}")
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if custom is not None:
        raise ConfigError("--search chooses the pipeline itself; it cannot be combined with --pipeline")
    if not budgets:
        raise ConfigError("--search assigns precisions by ILP: give at least one --budget, for example size=0.3x")
    return (SearchSpace.load(space) if space else SearchSpace.load()).narrowed(list(space_set))


def _budget_label(budgets: dict[str, str]) -> str:
    return "ILP(" + ",".join(f"{k}={v}" for k, v in budgets.items()) + ")"


def quality(bundle: ModelBundle, reference: list[torch.Tensor], model: torch.nn.Module) -> dict[str, float]:
    """The model's own metrics (if it has an evaluate function), then SQNR and cosine vs fp32."""
    metrics = output_metrics(reference, model, bundle.eval_batches)
    if bundle.evaluate is not None:
        with torch.no_grad():
            metrics = {**bundle.evaluate(model), **metrics}
    return metrics


@dataclass
class _Run:
    """The three ways a quantize run produces its configurations, sharing the measuring."""

    bundle: ModelBundle
    target: Target
    ctx: PassContext
    reference: list[torch.Tensor]
    clock: Stopwatch
    instruments: list[PassInstrument]
    table: str = ""

    def custom(self, gm: fx.GraphModule, passes: list) -> tuple[fx.GraphModule, list[ConfigResult]]:
        with self.clock.stage("pipeline"):
            result = Pipeline(passes, self.instruments)(copy.deepcopy(gm), self.ctx).graph_module
        if not MODEL_COST.has(result):
            raise ConfigError("--pipeline must include the 'cost' pass (after 'shape-prop') so the model can be sized")
        return result, [self.measure("custom", result, Pipeline(passes).spec())]

    def phases(self, gm: fx.GraphModule, calibration: str, budgets: dict[str, str], probes: int,
               configs: list[BitAssignment], act_symmetric: bool = False) -> tuple[fx.GraphModule, list[ConfigResult]]:
        """Analysis once; then the ILP's assignment (with budgets) and each uniform one."""
        analysis = (prepare_phase(self.target) + capability_phase(self.target)
                    + calibration_phase(self.target, calibration, act_symmetric=act_symmetric))
        if budgets:
            analysis += sensitivity_phase(self.target, probes, table=self.table)
        with self.clock.stage("analysis"):
            prepared = Pipeline(analysis, self.instruments)(gm, self.ctx).graph_module
        variants = [(_budget_label(budgets), ilp_phase(self.target, budgets, self.table))] if budgets else []
        variants += [(str(cfg), uniform_phase(self.target, cfg.w_bits, cfg.a_bits)) for cfg in configs]
        return prepared, [self.variant(prepared, label, analysis, passes) for label, passes in variants]

    def searched(self, gm: fx.GraphModule, budgets: dict[str, str], space: SearchSpace, configs: list[BitAssignment],
                 mode: str, trials: int, proxy: str, seed: int, storage: str | None = None,
                 study: str | None = None, confirm: int = CONFIRM) -> tuple[fx.GraphModule, list[ConfigResult], dict[str, Any]]:
        """Search the hyperparameters, build the winner; uniform baselines use its calibration."""
        selection, held, reason = selection_split(self.bundle)
        with self.clock.stage("search"):
            harness = SearchHarness(selection, self.target, budgets, space, seed, self.ctx.progress, captured=gm, table=self.table)
            outcome = run_search(harness, mode, trials, proxy, confirm, seed, self.ctx.progress, storage, study)
        # the search's own stages (its analysis, trials, confirmation) lie inside "search": kept apart, in
        # the report's search section, so the stages still add up to the run
        self.clock.nested.update({f"search: {k}": v for k, v in {**harness.stages, **outcome.seconds}.items()})
        with self.clock.stage("pareto"):
            prepared = Pipeline([ParetoSweep(table=self.table)])(harness.assign(outcome.best), self.ctx).graph_module
        label = f"searched {_budget_label(budgets)}"
        with self.clock.stage(f"quantize {label}"):
            qgm = harness.build(outcome.best)
        results = [self.measure(label, qgm, config_pipeline(outcome.best, budgets, self.target, self.table).spec())]
        analysis = prepare_phase(self.target) + [scheme_pass(outcome.best), calibrate_pass(outcome.best)]
        for cfg in configs:
            results.append(self.variant(prepared, str(cfg), analysis, uniform_phase(self.target, cfg.w_bits, cfg.a_bits)))
        summary = search_summary(outcome, harness, space)
        with self.clock.stage("held-out check"):
            summary["held_out"] = held_out_check(self.bundle, selection, held, reason, qgm)
        return prepared, results, summary

    def variant(self, prepared: fx.GraphModule, label: str, analysis: list, passes: list) -> ConfigResult:
        with self.clock.stage(f"quantize {label}"):
            qgm = Pipeline(passes, self.instruments)(copy.deepcopy(prepared), self.ctx).graph_module
        return self.measure(label, qgm, Pipeline(analysis + passes).spec())

    def measure(self, label: str, gm: fx.GraphModule, spec: str) -> ConfigResult:
        with self.clock.stage(f"evaluate {label}"):
            metrics = quality(self.bundle, self.reference, gm)
        cost = totals(gm, assignment_of(gm))
        return ConfigResult(label, gm, spec, metrics, cost[SIZE], int(cost[BOPS]))
