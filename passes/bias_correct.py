"""bias-correct: remove the mean output shift that weight quantization causes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import LINEAR_OPS, QuantLayer, find_layers
from lcpaq.ir.meta import QUANTIZED
from lcpaq.ir.surgery import BIAS_ARG, set_layer_bias
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext


@register_pass
@dataclass(frozen=True)
class BiasCorrect(Pass):
    """Empirical bias correction (Nagel et al., 2019): on the calibration batches, each
    quantized conv or linear is run with its float and its quantized weight on the inputs it
    really receives; the mean difference per output channel is subtracted from its bias.

    Reads: ``lcpaq.quantized``. Rewrites: biases (adding one where a layer had none).
    Guarantees: the mean output of each corrected layer over the calibration data equals that
    of the float weights (up to float rounding); idempotent (a second run shifts nothing)."""

    name = "bias-correct"
    reads = (QUANTIZED,)
    writes = (QUANTIZED,)
    rewrites = True

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = [
            layer for layer in find_layers(gm)
            if layer.kind in ("conv", "linear") and QUANTIZED.get(layer.node).w_quantizer and not QUANTIZED.get(layer.node).bias_corrected
        ]
        if not layers:
            return PassResult(gm, False)
        shifts = _mean_shifts(gm, layers, ctx.batches())
        nodes = len(gm.graph.nodes)
        for layer in layers:
            shift = shifts[layer.name]
            old = _bias_value(gm, layer, shift)
            set_layer_bias(gm, layer.node, str(layer.weight.target), old - shift)
            QUANTIZED.set(layer.node, dataclasses.replace(QUANTIZED.get(layer.node), bias_corrected=True))
        if len(gm.graph.nodes) != nodes:  # a layer without bias got one: new code; else only tensors changed
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, True)


def _bias_value(gm: fx.GraphModule, layer: QuantLayer, like: torch.Tensor) -> torch.Tensor:
    bias = layer.node.args[BIAS_ARG] if len(layer.node.args) > BIAS_ARG else None
    return get_attr(gm, bias.target).detach() if isinstance(bias, fx.Node) else torch.zeros_like(like)


class _Shifts(fx.Interpreter):
    """Runs the quantized graph; at each layer also sums its output's change from the float
    weight: the layer is linear in its weight, so that change is the layer applied to the
    weight's quantization error (Q(W) - W) without bias, and for ``aten.linear``, also linear in
    its input, the summed input times that error (one vector-matrix product, in float64)."""

    def __init__(self, gm: fx.GraphModule, layers: list[QuantLayer]) -> None:
        super().__init__(gm)
        self.layers = {layer.node: layer for layer in layers}
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        layer = self.layers.get(n)
        if layer is None:
            return out
        args = list(self.map_nodes_to_values(n.args, n))
        delta = args[1] - self.fetch_attr(str(layer.weight.target))  # Q(W) - W
        x = args[0]
        if n.target in LINEAR_OPS:
            summed = n.target(x.reshape(-1, x.shape[-1]).double().sum(0, keepdim=True), delta.double())[0]
            count = x.numel() // x.shape[-1]
        else:
            args[1] = delta
            if len(args) > BIAS_ARG:
                args[BIAS_ARG] = None
            diff = n.target(*args, **n.kwargs)
            channel = 1 if layer.kind == "conv" else diff.dim() - 1
            summed = diff.sum(dim=[d for d in range(diff.dim()) if d != channel])
            count = diff.numel() // diff.shape[channel]
        self.sums[layer.name] = self.sums.get(layer.name, 0) + summed
        self.counts[layer.name] = self.counts.get(layer.name, 0) + count
        return out


def _mean_shifts(gm: fx.GraphModule, layers: list[QuantLayer], batches) -> dict[str, torch.Tensor]:
    runner = _Shifts(gm, layers)
    with torch.no_grad():
        for batch in batches:
            runner.run(*batch)
    return {name: (runner.sums[name] / runner.counts[name]).float() for name in runner.sums}
