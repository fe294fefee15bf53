"""The shared harness of the quantization-hyperparameter search.

Everything that does not depend on a configuration is computed once: the costed graph, the
Hessian traces (``passes.sensitivity_model.SharedTraces``, at the largest probe count; smaller
counts are prefixes of the same probes) and, lazily, one calibrated graph per range estimator.
A configuration is then a pipeline of passes on a calibrated graph: its quantization scheme,
the ``hessian`` pass (recombining the shared traces, no probes), one ILP, and the rewrite. The
"hessian" proxy is the ILP's objective: no forward pass at all. This module only orchestrates
passes; the pipeline it runs for a configuration is the one ``config_pipeline`` reports."""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from lcpaq.backends.common.capability import capability_phase
from lcpaq.hw_targets.target import Target
from lcpaq.ir.capture import capture, copy_sharing_tensors
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import ASSIGNMENT, COST, FLOAT_BITS, QSPEC, QUANT_SCHEME, SENSITIVITY, Sensitivity
from lcpaq.passes.cost_model import layer_sensitivity
from lcpaq.passes.fisher import FisherDiagonals
from lcpaq.passes.bias_correct import BiasCorrect
from lcpaq.passes.calibrate import Calibrate
from lcpaq.passes.finetune import FineTune
from lcpaq.passes.base import Pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.fake_quant import FakeQuant
from lcpaq.passes.hessian import HessianSensitivity
from lcpaq.passes.ilp import ILPAssign
from lcpaq.passes.pipeline import Pipeline, prepare_phase
from lcpaq.passes.quant_scheme import SetQuantScheme
from lcpaq.passes.sensitivity_model import SharedTraces
from lcpaq.passes.sensitivity_terms import float_leaves
from lcpaq.ir.metrics import output_metrics, reference_outputs
from lcpaq.tools.models.zoo import ModelBundle
from lcpaq.tools.search_space import Config, SearchSpace

PROXIES = ("hessian", "fisher", "sqnr", "cosine", "kl")
#: The proxy with the best rank correlation on both benchmark models, and low-cost where the metric is dear
#: (MiniLM: 1/23 of a full evaluation): docs/search_benchmark.md.
DEFAULT_PROXY = "cosine"


#: Sampled-target gradients per batch of the ``fisher`` proxy's diagonals.
FISHER_SAMPLES = 16


def calibrate_pass(config: Config) -> Calibrate:
    return Calibrate(method=config["calibration"], percentile=config["percentile"] or 99.99)


def scheme_pass(config: Config) -> SetQuantScheme:
    return SetQuantScheme(weight_granularity=config["weight_granularity"], act_symmetric=config["act_symmetric"])


def hessian_pass(config: Config, shared: SharedTraces | None = None) -> HessianSensitivity:
    """Exactly ``probes`` probes; with ``shared``, recombined from the shared traces."""
    return HessianSensitivity(probes=config["probes"], min_probes=config["probes"], shared=shared)


def ilp_pass(config: Config, budgets: dict[str, str], table: str = "") -> ILPAssign:
    return ILPAssign(
        **budgets,
        table=table,
        tradeoff=f"bops:{config['tradeoff_bops']}" if config["tradeoff_bops"] else "",
        w_range="" if config["weight_bits"] == "target" else str(config["weight_bits"]),
        a_bits=() if config["act_bits"] == "target" else (int(config["act_bits"]),),
    )


def rewrite_passes(config: Config) -> list[Pass]:
    return [FakeQuant()] + ([BiasCorrect()] if config["bias_correction"] else [])


def config_pipeline(config: Config, budgets: dict[str, str], target: Target, table: str = "") -> Pipeline:
    """The pipeline that reproduces a configuration's result (``lcpaq quantize --pipeline``)."""
    analysis = [scheme_pass(config), calibrate_pass(config), hessian_pass(config), ilp_pass(config, budgets, table)]
    return Pipeline(prepare_phase(target) + capability_phase(target) + analysis + rewrite_passes(config))


@dataclass
class SearchHarness:
    bundle: ModelBundle
    target: Target
    budgets: dict[str, str]
    space: SearchSpace
    seed: int = 0
    progress: bool = False
    proxy_batches: int = 1
    hessian_batches: int = 2
    captured: fx.GraphModule | None = None
    table: str = ""
    stages: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ConfigError("the search assigns precisions by ILP: give at least one --budget")
        ILPAssign(**self.budgets, table=self.table)  # checks every budget before any work
        start = time.perf_counter()
        b = self.bundle
        self.ctx = PassContext(self.target, b.example_inputs, b.calib_batches, self.progress, self.seed, b.calib_labels)
        gm = self.captured if self.captured is not None else capture(b.model, b.example_inputs, b.name)
        self.base = Pipeline(prepare_phase(self.target) + capability_phase(self.target))(gm, self.ctx).graph_module
        self.reference = reference_outputs(b.model, b.eval_batches)
        self.proxy_reference = reference_outputs(b.model, b.calib_batches[: self.proxy_batches])
        self.stages["prepare"] = time.perf_counter() - start
        self._check_feasible()
        start = time.perf_counter()
        self.shared = SharedTraces.measure(self.base, self.ctx, max(self.space.choices["probes"]), self.hessian_batches)
        self.stages["sensitivity"] = time.perf_counter() - start
        self._calibrated: dict[tuple, fx.GraphModule] = {}
        self._train_ctx: PassContext | None = None
        self._fisher: FisherDiagonals | None = None

    def _check_feasible(self) -> None:
        """Before the Hessian analysis: whether any assignment of the target's precisions meets
        the budgets. Feasibility depends on costs alone, so the ILP runs with every sensitivity
        zero; an infeasible budget is its one-line message, saying what is achievable."""
        gm = Pipeline([SetQuantScheme()])(copy_sharing_tensors(self.base), self.ctx).graph_module
        bits = lambda widths: tuple((b, 0.0) for b in widths if b != FLOAT_BITS)  # noqa: E731
        for layer in find_layers(gm):
            SENSITIVITY.set(layer.node, Sensitivity(0.0, 0.0, bits(self.target.weight_bits(layer.kind)), bits(self.target.act_bits), 0, 0.0))
        try:
            Pipeline([ILPAssign(**self.budgets, table=self.table)])(gm, self.ctx)
        except ConfigError as exc:
            raise ConfigError(_no_configuration(exc)) from exc

    # --- configuration-dependent, cached pieces ---------------------------------------------
    def calibrated(self, config: Config) -> fx.GraphModule:
        """The costed graph calibrated as ``config`` says (kept per range estimator), with
        ``config``'s quantization scheme set."""
        key = (config["calibration"], config["percentile"])
        if key not in self._calibrated:
            gm = copy_sharing_tensors(self.base)
            self._calibrated[key] = Pipeline([calibrate_pass(config)])(gm, self.ctx).graph_module
        return Pipeline([scheme_pass(config)])(self._calibrated[key], self.ctx).graph_module

    def assign(self, config: Config) -> fx.GraphModule | None:
        """The calibrated graph annotated with this configuration's sensitivities and ILP
        assignment, or None if the budgets cannot be met with its precisions."""
        gm = Pipeline([hessian_pass(config, self.shared)])(self.calibrated(config), self.ctx).graph_module
        try:
            Pipeline([ilp_pass(config, self.budgets, self.table)])(gm, self.ctx)
        except ConfigError:
            return None
        return gm

    def infeasible_message(self, config: Config) -> str:
        """Why no trial met the budgets: the ILP's own message for ``config`` with the target's
        every precision, or, if those suffice, that the space's width choices do not."""
        widest = {**config, "weight_bits": "target", "act_bits": "target"}
        try:
            passes = [hessian_pass(widest, self.shared), ilp_pass(widest, self.budgets, self.table)]
            Pipeline(passes)(self.calibrated(widest), self.ctx)
        except ConfigError as exc:
            return _no_configuration(exc)
        choices = {d: self.space.choices[d] for d in ("weight_bits", "act_bits")}
        return (f"no configuration meets the budgets with the search space's precisions ({choices}); "
                "the target's full range would: add 'target' to weight_bits and act_bits")

    def build(self, config: Config) -> fx.GraphModule | None:
        """The fake-quantized graph of a configuration (None if infeasible)."""
        gm = self.assign(config)
        if gm is None:
            return None
        return Pipeline(rewrite_passes(config))(copy_sharing_tensors(gm), self.ctx).graph_module

    # --- scores (higher is better; -inf for an infeasible configuration) ---------------------
    def proxy(self, config: Config, name: str) -> float:
        if name == "hessian":
            gm = self.assign(config)
            return -math.inf if gm is None else -ASSIGNMENT.get(gm).sensitivity
        if name == "fisher":
            gm = self.assign(config)
            return -math.inf if gm is None else -self.fisher_sensitivity(gm)
        qgm = self.build(config)
        if qgm is None:
            return -math.inf
        batches = self.bundle.calib_batches[: self.proxy_batches]
        if name in ("sqnr", "cosine"):
            metrics = output_metrics(self.proxy_reference, qgm, batches)
            return metrics["sqnr_db" if name == "sqnr" else "cosine"]
        if name == "kl":
            return -_kl(self.proxy_reference, qgm, batches)
        raise ConfigError(f"unknown proxy {name!r}; choose from {', '.join(PROXIES)}")

    def true_metric(self, config: Config) -> float:
        qgm = self.build(config)
        return -math.inf if qgm is None else self.metric_of(qgm)

    def finetuned_metric(self, config: Config, epochs: int) -> float:
        """HAQ's per-candidate reward: the configuration built, retrained ``epochs`` epochs on
        the training data (the ``finetune`` pass, :meth:`train_context`), then scored on the
        validation metric."""
        qgm = self.build(config)
        if qgm is None:
            return -math.inf
        return self.metric_of(Pipeline([FineTune(epochs=epochs)])(qgm, self.train_context()).graph_module)

    def train_context(self) -> PassContext:
        """What fine-tuning trains on: the bundle's training batches (its calibration batches
        if it has none) with their labels, or, for a model without labels, the fp32 model's own
        outputs on them as targets (computed once, timed as the stage "fine-tuning targets")."""
        if self._train_ctx is None:
            start = time.perf_counter()
            b = self.bundle
            batches = b.train_batches or b.calib_batches
            labels = b.train_labels if b.train_batches else b.calib_labels
            if labels is None:
                with torch.no_grad():
                    labels = tuple([t.detach() for t in float_leaves(b.model(*batch))] for batch in batches)
            self._train_ctx = dataclasses.replace(self.ctx, calib_batches=batches, calib_labels=labels)
            self.stages["fine-tuning targets"] = time.perf_counter() - start
        return self._train_ctx

    def fisher_sensitivity(self, gm: fx.GraphModule) -> float:
        """The assigned graph's total sensitivity under the Fisher diagonals (``passes.fisher``,
        measured once on the Hessian's batches with ``FISHER_SAMPLES`` samples, timed as the
        stage "fisher (once)"), instead of the Hessian traces its ILP minimised."""
        if self._fisher is None:
            start = time.perf_counter()
            batches = self.ctx.batches()[: self.hessian_batches]
            self._fisher = FisherDiagonals.measure(self.base, batches, self.ctx.calib_labels is not None, FISHER_SAMPLES,
                                                   self.seed, self.progress)
            self.stages["fisher (once)"] = time.perf_counter() - start
        layers = find_layers(gm)
        sens = self._fisher.sensitivities(gm, layers, self.target, QUANT_SCHEME.get(gm))
        return sum(layer_sensitivity(COST.get(layer.node), sens[layer.name], QSPEC.get(layer.node).bits) for layer in layers)

    def metric_of(self, gm: torch.nn.Module) -> float:
        """The validation metric: the model's own (its first), else output cosine vs fp32."""
        if self.bundle.evaluate is not None:
            with torch.no_grad():
                return float(next(iter(self.bundle.evaluate(gm).values())))
        return output_metrics(self.reference, gm, self.bundle.eval_batches)["cosine"]

    @property
    def metric_name(self) -> str:
        if self.bundle.evaluate is not None:
            with torch.no_grad():
                return next(iter(self.bundle.evaluate(self.bundle.model)))
        return "cosine"


def _no_configuration(exc: ConfigError) -> str:
    """The ILP's infeasibility message as the search's (without the pass's own prefix)."""
    reason = str(exc).removeprefix(f"pass '{ILPAssign.name}': ")
    return f"no configuration meets the budgets: {reason}"


def _kl(reference: list[torch.Tensor], model: torch.nn.Module, batches) -> float:
    """Mean KL(softmax(fp32) || softmax(quantized)) over the outputs' last dimension."""
    outs = reference_outputs(model, batches)
    total, n = 0.0, 0
    for ref, out in zip(reference, outs):
        p = torch.log_softmax(ref.double(), dim=-1)
        q = torch.log_softmax(out.double(), dim=-1)
        total += float(torch.sum(p.exp() * (p - q)))
        n += ref.shape[0]
    return total / max(n, 1)
