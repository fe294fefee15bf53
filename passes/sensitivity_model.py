"""Hessian traces measured once, and sensitivities recombined from them.

The Hutchinson traces are the expensive part of the HAWQ-V2 sensitivity, and they do not
depend on how layers are quantized; the quantization errors are cheap and do. So:

- :func:`measure_traces` probes a graph once (traces per weight and per activation input, and
  the activation values the errors are measured on);
- :func:`recombine` turns traces and a quantization scheme into every layer's sensitivity;
- :class:`SharedTraces` keeps one measurement at the largest probe count a search needs and
  serves the ``hessian`` pass's requests from it: a run of fewer probes, or one that stops
  early at a tolerance, is a prefix of the same seeded probes, so the result is identical to
  probing afresh. Error tables are cached per scheme and calibration. A search gives the
  ``hessian`` pass one of these and runs it for every configuration.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from lcpaq.hw_targets.target import Target
from lcpaq.ir.layers import QuantLayer, find_layers
from lcpaq.ir.meta import ACT_RANGE, QuantScheme, Sensitivity
from lcpaq.passes.context import PassContext
from lcpaq.passes.hutchinson import TraceEstimate, hessian_traces
from lcpaq.passes.hvp_plan import DOUBLE_BACKWARD
from lcpaq.passes.sensitivity_terms import act_errors, collect_activations, combine, hessian_loss, weight_errors


@dataclass(frozen=True)
class Traces:
    """Trace estimates per weight (by its target name) and per activation node (by its name,
    which survives a deep copy of the graph), and the activation values on the probed batches."""

    weights: dict[str, TraceEstimate]
    acts: dict[str, TraceEstimate]
    values: dict[str, list[torch.Tensor]]

    @property
    def hvp(self) -> str:
        """How the Hessian-vector products were taken (``hvp_plan.HvpPlan.method``)."""
        estimates = [*self.weights.values(), *self.acts.values()]
        return estimates[0].hvp if estimates else DOUBLE_BACKWARD


def measure_traces(
    gm: fx.GraphModule, layers: list[QuantLayer], batches: tuple, labels: tuple | None,
    probes: int, min_probes: int, tol: float, seed: int, progress: bool = False,
) -> Traces:
    """Probe ``gm`` on ``batches`` (see :func:`hutchinson.hessian_traces` for the stopping rule)."""
    weight_names = list(dict.fromkeys(str(layer.weight.target) for layer in layers if layer.weight is not None))
    act_nodes = list(dict.fromkeys(a for layer in layers for a in layer.act_inputs))
    w_tr, a_tr = hessian_traces(
        gm, weight_names, act_nodes, batches, hessian_loss(gm, batches, labels),
        probes, min(min_probes, probes), tol, seed, progress,
    )
    values = collect_activations(gm, [n.name for n in act_nodes], batches)
    return Traces(w_tr, {n.name: est for n, est in a_tr.items()}, values)


def recombine(
    gm: fx.GraphModule, layers: list[QuantLayer], target: Target, scheme: QuantScheme, traces: Traces,
) -> dict[str, Sensitivity]:
    """Every layer's sensitivity at each width ``target`` offers, its errors under ``scheme``."""
    w_err = weight_errors(gm, layers, target, scheme)
    a_err = act_errors(layers, traces.values, target, scheme)
    return combine(gm, layers, traces.weights, traces.acts, w_err, a_err)


class SharedTraces:
    """One graph's traces at up to ``probes`` probes, measured with ``seed`` on its first
    ``batches`` calibration batches; bound to that graph's weights (a calibrated copy of it
    is the same graph). Hand it to ``HessianSensitivity(shared=...)``."""

    def __init__(self, traces: Traces, probes: int, batches: int, seed: int) -> None:
        self.all, self.probes, self.batches, self.seed = traces, probes, batches, seed
        self._w_err: dict[tuple[Any, ...], dict[str, dict[int, float]]] = {}
        self._a_err: dict[tuple[Any, ...], dict[str, list[dict[int, float]]]] = {}

    @classmethod
    def measure(cls, gm: fx.GraphModule, ctx: PassContext, probes: int, batches: int = 2) -> "SharedTraces":
        """All ``probes`` probes (no early stop) on ``ctx``'s first ``batches`` batches."""
        data = ctx.batches()[:batches]
        labels = ctx.calib_labels[:batches] if ctx.calib_labels else None
        traces = measure_traces(gm, find_layers(gm), data, labels, probes, probes, 0.0, ctx.seed, ctx.progress)
        return cls(traces, probes, len(data), ctx.seed)

    def check(self, probes: int, batches: int, seed: int) -> None:
        """Raise ValueError unless a run of ``probes`` probes on ``batches`` batches with
        ``seed`` is a prefix of this measurement."""
        if probes > self.probes or batches != self.batches or seed != self.seed:
            raise ValueError(
                f"shared traces were measured with {self.probes} probes on {self.batches} batches (seed {self.seed}); "
                f"they cannot serve {probes} probes on {batches} batches (seed {seed})"
            )

    def traces(self, probes: int, min_probes: int, tol: float) -> Traces:
        """The traces a fresh run would give: stopped at the first probe count from
        ``min_probes`` on where every weight's relative standard error is below ``tol``, or
        at ``probes`` (the rule of :func:`hutchinson.hessian_traces`)."""
        count = probes
        for n in range(max(min(min_probes, probes), 1), probes + 1):
            if max((est.prefix(n).rel_err for est in self.all.weights.values()), default=0.0) < tol:
                count = n
                break
        return Traces(
            {name: est.prefix(count) for name, est in self.all.weights.items()},
            {name: est.prefix(count) for name, est in self.all.acts.items()},
            self.all.values,
        )

    def sensitivities(
        self, gm: fx.GraphModule, layers: list[QuantLayer], target: Target, scheme: QuantScheme, traces: Traces,
    ) -> dict[str, Sensitivity]:
        """:func:`recombine`, with the error tables of each scheme and calibration kept."""
        w_key = (scheme.weight_granularity, target.name, tuple(target.weight_bits(layer.kind) for layer in layers))
        if w_key not in self._w_err:
            self._w_err[w_key] = weight_errors(gm, layers, target, scheme)
        a_key = (scheme.act_symmetric, target.act_bits, tuple(ACT_RANGE.get(layer.node) for layer in layers))
        if a_key not in self._a_err:
            self._a_err[a_key] = act_errors(layers, self.all.values, target, scheme)
        return combine(gm, layers, traces.weights, traces.acts, self._w_err[w_key], self._a_err[a_key])
