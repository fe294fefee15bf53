"""hessian: per-layer sensitivity from Hutchinson estimates of the Hessian trace (HAWQ-V2)."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from lcpaq.ir.capture import get_attr
from lcpaq.ir.fileio import atomic_write_json, read_json_cache
from lcpaq.ir.layers import QuantLayer, find_layers, weight_channel_axis
from lcpaq.ir.meta import ACT_RANGE, FLOAT_BITS, SENSITIVITY, Sensitivity
from lcpaq.ir.quantizer import QuantSpec, fake_quantize, qparams_from_range, quantization_error
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.hutchinson import hessian_traces


@register_pass
@dataclass(frozen=True)
class HessianSensitivity(Pass):
    """Sensitivity(layer, b) = tr(H) / n * ||Q_b(X) - X||^2 for its weight X = W and, summed,
    its activation inputs, at every width the target offers for the layer.

    The loss is cross-entropy on ``ctx.calib_labels`` when given, else output distillation
    (0.5 x squared error against the fp32 graph's own outputs, whose Hessian at the fp32
    weights is the Gauss-Newton matrix). Traces use Rademacher probes on the first ``batches``
    calibration batches, stopping at relative standard error ``tol`` (after ``min_probes``) or
    at ``probes`` probes.
    Quantizer settings must match those given to fake-quant. Results are cached in
    ``ctx.cache_dir`` keyed by graph, weights, data and options.
    Reads: ``lcpaq.act_range``. Writes: ``lcpaq.sensitivity`` on every layer."""

    name = "hessian"
    reads = (ACT_RANGE,)
    writes = (SENSITIVITY,)
    probes: int = 64
    min_probes: int = 8
    tol: float = 0.05
    batches: int = 2
    weight_granularity: Literal["per-channel", "per-tensor"] = "per-channel"
    act_symmetric: bool = False

    def __post_init__(self) -> None:
        if self.probes < 1 or self.min_probes < 1:
            raise ValueError(f"probes and min_probes must be >= 1, got {self.probes} and {self.min_probes}")
        if self.batches < 1 or self.tol <= 0:
            raise ValueError("batches must be >= 1 and tol > 0")

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = find_layers(gm)
        batches = ctx.batches()[: self.batches]
        labels = ctx.calib_labels[: self.batches] if ctx.calib_labels else None
        path = None
        if ctx.cache_dir is not None:
            path = ctx.cache_dir / "hessian" / f"{self._key(gm, ctx, batches, labels, layers)}.json"
            cached = _load(path, layers)
            if cached is not None:
                for layer in layers:
                    SENSITIVITY.set(layer.node, cached[layer.name])
                return PassResult(gm, False)
        results = self._compute(gm, ctx, layers, batches, labels)
        for layer in layers:
            SENSITIVITY.set(layer.node, results[layer.name])
        if path is not None:
            atomic_write_json(path, {name: asdict(s) for name, s in results.items()})
        return PassResult(gm, False)

    def _compute(self, gm, ctx: PassContext, layers: list[QuantLayer], batches, labels) -> dict[str, Sensitivity]:
        weight_names = list(dict.fromkeys(str(layer.weight.target) for layer in layers if layer.weight is not None))
        act_nodes = list(dict.fromkeys(a for layer in layers for a in layer.act_inputs))
        loss_fn = _loss(gm, batches, labels)
        w_tr, a_tr = hessian_traces(
            gm, weight_names, act_nodes, batches, loss_fn, self.probes, min(self.min_probes, self.probes), self.tol, ctx.seed, ctx.progress
        )
        act_values = _activations(gm, act_nodes, batches)
        out = {}
        for layer in layers:
            kind_bits = [b for b in ctx.target.weight_bits(layer.kind) if b != FLOAT_BITS] if layer.weight is not None else []
            weight_sens: list[tuple[int, float]] = []
            w_trace, rel_err, probes = 0.0, 0.0, 0
            if layer.weight is not None:
                est = w_tr[str(layer.weight.target)]
                w_trace, rel_err, probes = max(est.mean, 0.0), est.rel_err, est.probes
                weight = get_attr(gm, layer.weight.target).detach()
                axis = weight_channel_axis(layer) if self.weight_granularity == "per-channel" else None
                for b in kind_bits:
                    err = quantization_error(weight, QuantSpec(b, symmetric=True, ch_axis=axis))
                    weight_sens.append((b, w_trace / weight.numel() * err))
            act_sens: dict[int, float] = {}
            a_trace = 0.0
            ranges = ACT_RANGE.get(layer.node)
            for index, node in enumerate(layer.act_inputs):
                est = a_tr[node]
                trace = max(est.mean, 0.0)
                a_trace += trace
                probes = max(probes, est.probes)
                for b in (b for b in ctx.target.act_bits if b != FLOAT_BITS):
                    r = ranges.get(index, b)
                    err = _act_error(act_values[node], r.lo, r.hi, QuantSpec(b, symmetric=self.act_symmetric))
                    act_sens[b] = act_sens.get(b, 0.0) + trace / est.numel * err
            out[layer.name] = Sensitivity(w_trace, a_trace, tuple(weight_sens), tuple(sorted(act_sens.items())), probes, rel_err)
        return out

    def _key(self, gm: fx.GraphModule, ctx: PassContext, batches, labels, layers: list[QuantLayer]) -> str:
        h = hashlib.sha256()
        h.update(gm.code.encode())
        h.update(json.dumps([asdict(self), ctx.seed, sorted(ctx.target.act_bits)], default=str).encode())
        for layer in layers:
            h.update(layer.name.encode())
            h.update(str(ctx.target.weight_bits(layer.kind)).encode())
            h.update(str(ACT_RANGE.get(layer.node)).encode())
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                value = get_attr(gm, node.target)
                if isinstance(value, torch.Tensor):
                    h.update(node.target.encode())
                    h.update(value.detach().contiguous().cpu().numpy().tobytes())
        for leaf in tree_leaves((batches, labels)):
            if isinstance(leaf, torch.Tensor):
                h.update(leaf.detach().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:24]


def _loss(gm: fx.GraphModule, batches, labels):
    if labels is not None:
        return lambda out, b: torch.nn.functional.cross_entropy(_first_tensor(out), labels[b])
    with torch.no_grad():
        targets = [[t.detach() for t in _float_leaves(gm(*batch))] for batch in batches]

    def distill(out: Any, b: int) -> torch.Tensor:
        leaves = _float_leaves(out)
        n = max(leaves[0].shape[0], 1) if leaves[0].dim() else 1
        return sum(0.5 * ((o - t) ** 2).sum() for o, t in zip(leaves, targets[b])) / n

    return distill


def _float_leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _first_tensor(out: Any) -> torch.Tensor:
    return _float_leaves(out)[0]


class _Collect(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, nodes: set[fx.Node]) -> None:
        super().__init__(gm)
        self.nodes, self.values = nodes, {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.nodes:
            self.values[n] = out.detach()
        return out


def _activations(gm: fx.GraphModule, nodes: list[fx.Node], batches) -> dict[fx.Node, list[torch.Tensor]]:
    values: dict[fx.Node, list[torch.Tensor]] = {n: [] for n in nodes}
    with torch.no_grad():
        for batch in batches:
            runner = _Collect(gm, set(nodes))
            runner.run(*batch)
            for n, v in runner.values.items():
                values[n].append(v)
    return values


def _act_error(values: list[torch.Tensor], lo: float, hi: float, spec: QuantSpec) -> float:
    """Squared quantization error of the activation, averaged over the batches."""
    scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), spec)
    total = sum(float(((fake_quantize(v.float(), scale, zp, spec) - v.float()) ** 2).sum()) for v in values)
    return total / max(len(values), 1)


def _load(path, layers: list[QuantLayer]) -> dict[str, Sensitivity] | None:
    """Cached sensitivities, or None; a malformed entry is reported with its path."""
    data = read_json_cache(path)
    if data is None:
        return None
    try:
        return {layer.name: _sens_from_json(data[layer.name]) for layer in layers}
    except (KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"cache entry {path} does not match this model ({type(exc).__name__}: {exc}); recomputing", stacklevel=2)
        return None


def _sens_from_json(data: dict[str, Any]) -> Sensitivity:
    return Sensitivity(
        weight_trace=data["weight_trace"],
        act_trace=data["act_trace"],
        weight=tuple((int(b), float(v)) for b, v in data["weight"]),
        act=tuple((int(b), float(v)) for b, v in data["act"]),
        probes=int(data["probes"]),
        rel_err=float(data["rel_err"]),
    )
