"""cost: parameters, MACs and activation sizes of every quantizable layer."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from lcpaq.ir.capture import get_attr, used_tensors
from lcpaq.ir.layers import QuantLayer, find_layers
from lcpaq.ir.meta import COST, MODEL_COST, SHAPE, LayerCost, ModelCost
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext


@register_pass
@dataclass(frozen=True)
class Cost(Pass):
    """Costs each layer from its shapes.

    Reads: ``lcpaq.shape``. Writes: ``lcpaq.cost`` per layer, ``lcpaq.model_cost`` on the graph.
    MACs of a conv are out_elems x (in_channels / groups) x kernel size; of a linear or matmul,
    out_elems x reduction length. With ``per_sample`` (default) every count is divided by the
    batch size of the example inputs, so costs are per inference. BOPs at a bit pair (w, a) are
    MACs x w x a (``LayerCost.bops``)."""

    name = "cost"
    reads = (SHAPE,)
    writes = (COST, MODEL_COST)
    per_sample: bool = True

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        batch = _batch_size(ctx) if self.per_sample else 1
        layers = find_layers(gm)
        for layer in layers:
            COST.set(layer.node, _layer_cost(gm, layer, batch))
        used = used_tensors(gm)
        params = sum(t.numel() for t in used.values() if t.is_floating_point())
        MODEL_COST.set(gm, ModelCost(
            params=params,
            quantizable_params=sum(COST.get(layer.node).params + COST.get(layer.node).bias for layer in layers),
            macs=sum(COST.get(layer.node).macs for layer in layers),
            fp32_bytes=params * 4,
        ))
        return PassResult(gm, False)


def _batch_size(ctx: PassContext) -> int:
    for x in ctx.example_inputs:
        if isinstance(x, torch.Tensor) and x.dim() >= 1:
            return max(int(x.shape[0]), 1)
    return 1


def _layer_cost(gm: fx.GraphModule, layer: QuantLayer, batch: int) -> LayerCost:
    out = SHAPE.get(layer.node)
    acts = [SHAPE.get(a) for a in layer.act_inputs]
    if out is None or any(a is None for a in acts):
        raise ValueError(f"layer {layer.name} has no recorded shape")
    params = bias_elems = 0
    if layer.weight is not None:
        weight = get_attr(gm, layer.weight.target)
        params = weight.numel()
        bias = layer.node.args[2] if len(layer.node.args) > 2 else None
        if isinstance(bias, fx.Node) and bias.op == "get_attr":
            bias_elems = get_attr(gm, bias.target).numel()
        if layer.kind == "embedding":
            reduction = 0  # a table lookup: no multiply-accumulates
        elif layer.kind == "conv":
            reduction = math.prod(weight.shape[1:])  # in_channels / groups x kernel
        elif layer.node.target is torch.ops.aten.linear.default:
            reduction = weight.shape[1]
        else:  # matmul by a constant [K, N] weight
            reduction = weight.shape[0]
    else:
        reduction = acts[0].shape[-1]
    return LayerCost(
        params=params,
        macs=out.numel * reduction // batch,
        act_elems=sum(a.numel for a in acts) // batch,
        out_elems=out.numel // batch,
        bias=bias_elems,
    )

