"""hessian: per-layer sensitivity from Hutchinson estimates of the Hessian trace (HAWQ-V2)."""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from lcpaq.ir.capture import get_attr
from lcpaq.ir.fileio import atomic_write_json, read_json_cache
from lcpaq.ir.layers import QuantLayer, find_layers
from lcpaq.ir.meta import ACT_RANGE, QUANT_SCHEME, SENSITIVITY, QuantScheme, Sensitivity
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.hvp_plan import DOUBLE_BACKWARD
from lcpaq.passes.sensitivity_model import SharedTraces, measure_traces, recombine

_HVP_KEY = "__hvp__"  # in a cache entry: how Hessian-vector products were taken, when not by plain double backward


@register_pass
@dataclass(frozen=True)
class HessianSensitivity(Pass):
    """Sensitivity(layer, b) = tr(H) / n * ||Q_b(X) - X||^2 for its weight X = W and, summed,
    its activation inputs, at every width the target offers for the layer, Q_b being the
    quantizer the graph's ``lcpaq.quant_scheme`` gives a layer at b bits (the one fake-quant
    will insert).

    The loss is cross-entropy on ``ctx.calib_labels`` when given, else output distillation
    (0.5 x squared error against the fp32 graph's own outputs, whose Hessian at the fp32
    weights is the Gauss-Newton matrix). Traces use Rademacher probes on the first ``batches``
    calibration batches, stopping at relative standard error ``tol`` (after ``min_probes``) or
    at ``probes`` probes. With ``shared`` (a :class:`SharedTraces` of this graph, set in code
    by a search), traces are taken from it instead of probing: the same numbers, no probes.
    Results are cached in ``ctx.cache_dir`` keyed by graph, weights, data, scheme and options.
    Graphs with ops that lack double backward (hardsigmoid, fused attention) are probed with
    those ops decomposed, or by finite differences of gradients (``hvp_plan``); a warning
    names each such op and its source line.
    Reads: ``lcpaq.act_range``, ``lcpaq.quant_scheme``. Writes: ``lcpaq.sensitivity`` on every
    layer."""

    name = "hessian"
    reads = (ACT_RANGE, QUANT_SCHEME)
    writes = (SENSITIVITY,)
    probes: int = 64
    min_probes: int = 8
    tol: float = 0.05
    batches: int = 2
    shared: SharedTraces | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.probes < 1 or self.min_probes < 1:
            raise ValueError(f"probes and min_probes must be >= 1, got {self.probes} and {self.min_probes}")
        if self.batches < 1 or self.tol <= 0:
            raise ValueError("batches must be >= 1 and tol > 0")

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = find_layers(gm)
        scheme = QUANT_SCHEME.get(gm)
        batches = ctx.batches()[: self.batches]
        labels = ctx.calib_labels[: self.batches] if ctx.calib_labels else None
        path = None
        if ctx.cache_dir is not None:
            path = ctx.cache_dir / "hessian" / f"{self._key(gm, ctx, scheme, batches, labels, layers)}.json"
            cached = _load(path, layers)
            if cached is not None:
                for layer in layers:
                    SENSITIVITY.set(layer.node, cached[layer.name])
                return PassResult(gm, False)
        if self.shared is not None:
            self.shared.check(self.probes, len(batches), ctx.seed)
            traces = self.shared.traces(self.probes, self.min_probes, self.tol)
            results = self.shared.sensitivities(gm, layers, ctx.target, scheme, traces)
        else:
            traces = measure_traces(gm, layers, batches, labels, self.probes, self.min_probes, self.tol, ctx.seed, ctx.progress)
            results = recombine(gm, layers, ctx.target, scheme, traces)
        for layer in layers:
            SENSITIVITY.set(layer.node, results[layer.name])
        if path is not None:
            data: dict[str, Any] = {name: asdict(s) for name, s in results.items()}
            if traces.hvp != DOUBLE_BACKWARD:
                data[_HVP_KEY] = traces.hvp
            atomic_write_json(path, data)
        return PassResult(gm, False)

    def _key(self, gm: fx.GraphModule, ctx: PassContext, scheme: QuantScheme, batches, labels, layers: list[QuantLayer]) -> str:
        h = hashlib.sha256()
        h.update(gm.code.encode())
        options = {"probes": self.probes, "min_probes": self.min_probes, "tol": self.tol, "batches": self.batches}
        h.update(json.dumps([options, asdict(scheme), ctx.seed, sorted(ctx.target.act_bits)], default=str).encode())
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


def _load(path, layers: list[QuantLayer]) -> dict[str, Sensitivity] | None:
    """Cached sensitivities, or None; a malformed entry is reported with its path."""
    data = read_json_cache(path)
    if data is None:
        return None
    try:
        out = {layer.name: _sens_from_json(data[layer.name]) for layer in layers}
    except (KeyError, TypeError, ValueError) as exc:
        warnings.warn(f"cache entry {path} does not match this model ({type(exc).__name__}: {exc}); recomputing", stacklevel=2)
        return None
    if isinstance(data, dict) and data.get(_HVP_KEY):
        warnings.warn(f"hessian: cached sensitivities {path} were measured with {data[_HVP_KEY]} Hessian-vector "
                      "products: the graph has ops without double backward", stacklevel=2)
    return out


def _sens_from_json(data: dict[str, Any]) -> Sensitivity:
    return Sensitivity(
        weight_trace=data["weight_trace"],
        act_trace=data["act_trace"],
        weight=tuple((int(b), float(v)) for b, v in data["weight"]),
        act=tuple((int(b), float(v)) for b, v in data["act"]),
        probes=int(data["probes"]),
        rel_err=float(data["rel_err"]),
    )
