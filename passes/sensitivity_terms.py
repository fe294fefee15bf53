"""The terms of HAWQ-V2 sensitivity, kept apart so a search can reuse the expensive traces:

    sensitivity(layer, b) = tr(H_W) / n_W * ||Q_b(W) - W||^2 + sum over inputs tr(H_A) / n_A * ||Q_b(A) - A||^2

Traces come from ``hutchinson.hessian_traces``; this module supplies the loss they are taken
of, the quantization errors, and their combination. Activation terms are keyed by node name,
which survives a deep copy of the graph."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from lcpaq.hw_targets.target import Target
from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import QuantLayer
from lcpaq.ir.meta import ACT_RANGE, FLOAT_BITS, QuantScheme, QuantSpec, Sensitivity
from lcpaq.ir.quantizer import fake_quantize, qparams_from_range
from lcpaq.ir.weight_codes import WEIGHT_CODES
from lcpaq.passes.hutchinson import Loss, TraceEstimate
from lcpaq.passes.quant_scheme import act_spec, weight_spec


def hessian_loss(gm: fx.GraphModule, batches: tuple, labels: tuple | None) -> Loss:
    """Cross-entropy on ``labels`` where given, else output distillation: 0.5 x the squared
    error against the graph's own current outputs, per sample (its Hessian at the current
    weights is the Gauss-Newton matrix)."""
    if labels is not None:
        return lambda out, b: torch.nn.functional.cross_entropy(float_leaves(out)[0], labels[b])
    with torch.no_grad():
        targets = [[t.detach() for t in float_leaves(gm(*batch))] for batch in batches]

    def distill(out: Any, b: int) -> torch.Tensor:
        leaves = float_leaves(out)
        n = max(leaves[0].shape[0], 1) if leaves[0].dim() else 1
        return sum(0.5 * ((o - t) ** 2).sum() for o, t in zip(leaves, targets[b])) / n

    return distill


def float_leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


class _Collect(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names, self.values = names, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.names:
            self.values[n.name] = out.detach()
        return out


def collect_activations(gm: fx.GraphModule, names: list[str], batches: tuple) -> dict[str, list[torch.Tensor]]:
    """The values of the named nodes on each batch."""
    values: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for batch in batches:
            runner = _Collect(gm, set(names))
            runner.run(*batch)
            for name, v in runner.values.items():
                values[name].append(v)
    return values


def weight_errors(gm: fx.GraphModule, layers: list[QuantLayer], target: Target, scheme: QuantScheme) -> dict[str, dict[int, float]]:
    """||Q_b(W) - W||^2 per layer and per weight width the target offers for it, Q_b being the
    weight spec the assignment passes give the layer at b bits under ``scheme``."""
    out: dict[str, dict[int, float]] = {}
    for layer in layers:
        if layer.weight is None:
            out[layer.name] = {}
            continue
        weight = get_attr(gm, layer.weight.target)  # the object itself: the shared codes key on it
        out[layer.name] = {
            b: WEIGHT_CODES.get(weight, weight_spec(layer, b, scheme)).error
            for b in target.weight_bits(layer.kind) if b != FLOAT_BITS
        }
    return out


def act_errors(
    layers: list[QuantLayer], values: dict[str, list[torch.Tensor]], target: Target, scheme: QuantScheme
) -> dict[str, list[dict[int, float]]]:
    """||Q_b(A) - A||^2 per layer, per activation input and per activation width (the
    activation spec at b bits under ``scheme``), with the ranges calibrated on the layers'
    nodes, averaged over the batches."""
    out: dict[str, list[dict[int, float]]] = {}
    for layer in layers:
        ranges = ACT_RANGE.get(layer.node)
        per_input = []
        for index, node in enumerate(layer.act_inputs):
            errs = {}
            for b in (b for b in target.act_bits if b != FLOAT_BITS):
                r = ranges.get(index, b)
                errs[b] = act_error(values[node.name], act_spec(b, scheme), r.lo, r.hi)
            per_input.append(errs)
        out[layer.name] = per_input
    return out


def act_error(values: list[torch.Tensor], spec: QuantSpec, lo: float, hi: float,
              weights: list[torch.Tensor] | None = None) -> float:
    """||Q(A) - A||^2 of each batch's activation ``values`` quantized by ``spec`` over [lo, hi],
    each element's square weighted by ``weights`` where given, averaged over the batches."""
    scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), spec)
    total = 0.0
    for i, v in enumerate(values):
        err = (fake_quantize(v.float(), scale, zp, spec) - v.float()) ** 2
        total += float((err if weights is None else weights[i] * err).sum())
    return total / max(len(values), 1)


def combine(
    gm: fx.GraphModule,
    layers: list[QuantLayer],
    w_traces: dict[str, TraceEstimate],
    a_traces: dict[str, TraceEstimate],
    w_err: dict[str, dict[int, float]],
    a_err: dict[str, list[dict[int, float]]],
) -> dict[str, Sensitivity]:
    """Sensitivity of every layer from traces (weights by target name, activations by node
    name) and errors. Negative trace estimates (possible for a non-convex loss) count as 0."""
    out = {}
    for layer in layers:
        w_trace, rel_err, probes = 0.0, 0.0, 0
        weight_sens: list[tuple[int, float]] = []
        if layer.weight is not None:
            est = w_traces[str(layer.weight.target)]
            w_trace, rel_err, probes = max(est.mean, 0.0), est.rel_err, est.probes
            numel = get_attr(gm, layer.weight.target).numel()
            weight_sens = [(b, w_trace / numel * e) for b, e in w_err[layer.name].items()]
        act_sens: dict[int, float] = {}
        a_trace = 0.0
        for node, errs in zip(layer.act_inputs, a_err[layer.name]):
            est = a_traces[node.name]
            trace = max(est.mean, 0.0)
            a_trace += trace
            probes = max(probes, est.probes)
            for b, e in errs.items():
                act_sens[b] = act_sens.get(b, 0.0) + trace / est.numel * e
        out[layer.name] = Sensitivity(w_trace, a_trace, tuple(weight_sens), tuple(sorted(act_sens.items())), probes, rel_err)
    return out
