"""cost: parameters, MACs and activation sizes of every quantizable layer, and the parameters
kept in float."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.fx as fx

from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import QuantLayer, find_layers, tensor_names
from lcpaq.ir.meta import COST, MODEL_COST, SHAPE, FloatTensor, LayerCost, ModelCost
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext

aten = torch.ops.aten

#: Ops whose weights no pass quantizes, by kind (for the reason a tensor stays in float).
RECURRENT_OPS = {"gru", "lstm", "rnn_tanh", "rnn_relu", "gru_cell", "lstm_cell", "rnn_tanh_cell", "rnn_relu_cell"}
NORM_OPS = {"layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "batch_norm", "instance_norm", "rms_norm",
            "_native_batch_norm_legit_no_training"}


@register_pass
@dataclass(frozen=True)
class Cost(Pass):
    """Costs each layer from its shapes.

    Reads: ``lcpaq.shape``. Writes: ``lcpaq.cost`` per layer, ``lcpaq.model_cost`` on the graph.
    MACs of a conv are out_elems x (in_channels / groups) x kernel size; of a linear or matmul,
    out_elems x reduction length. With ``per_sample`` (default) every count is divided by the
    batch size of the example inputs, so costs are per inference. BOPs at a bit pair (w, a) are
    MACs x w x a (``LayerCost.bops``). Sizes count every tensor once: a weight (or bias) read
    by several layers is stored by the first of them in graph order; the others' costs say
    they do not store it. Every float parameter that no layer stores as its weight or bias is
    listed, with its fp32 bytes and why it stays in float, in ``lcpaq.model_cost``."""

    name = "cost"
    reads = (SHAPE,)
    writes = (COST, MODEL_COST)
    per_sample: bool = True

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        batch = _batch_size(ctx) if self.per_sample else 1
        layers = find_layers(gm)
        names = tensor_names(gm)
        stored: set[str] = set()
        for layer in layers:
            cost = _layer_cost(gm, layer, batch)
            weight, bias = (None if n is None else names.get(n, n) for n in (layer.weight_name, _bias_name(layer)))
            cost = replace(cost, stores_weight=weight not in stored, stores_bias=bias not in stored)
            stored |= {n for n in (weight, bias) if n is not None}
            COST.set(layer.node, cost)
        tensors = _float_params(gm, names)
        floats = _float_tensors(gm, names, stored)
        params = sum(t.numel() for t in tensors.values())
        MODEL_COST.set(gm, ModelCost(
            params=params,
            quantizable_params=sum(t.numel() for name, t in tensors.items() if name in stored),
            macs=sum(COST.get(layer.node).macs for layer in layers),
            fp32_bytes=params * 4,
            float_tensors=floats,
        ))
        return PassResult(gm, False)


def _batch_size(ctx: PassContext) -> int:
    for x in ctx.example_inputs:
        if isinstance(x, torch.Tensor) and x.dim() >= 1:
            return max(int(x.shape[0]), 1)
    return 1


def _bias_name(layer: QuantLayer) -> str | None:
    bias = layer.node.args[2] if layer.weight is not None and layer.kind != "embedding" and len(layer.node.args) > 2 else None
    return str(bias.target) if isinstance(bias, fx.Node) and bias.op == "get_attr" else None


def _float_params(gm: fx.GraphModule, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every floating-point tensor the graph reads, once, by canonical name."""
    out: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users:
            value = get_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                out.setdefault(names[str(node.target)], value)
    return out


def _float_tensors(gm: fx.GraphModule, names: dict[str, str], stored: set[str]) -> tuple[FloatTensor, ...]:
    """The floating-point tensors no layer stores, with fp32 bytes and the ops that read them."""
    readers: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users and names.get(str(node.target), "") not in stored:
            readers.setdefault(names[str(node.target)], []).extend(node.users)
    tensors = _float_params(gm, names)
    return tuple(
        FloatTensor(name, tensors[name].numel() * 4, _reason(users)) for name, users in readers.items() if name in tensors
    )


def _reason(users: list[fx.Node]) -> str:
    ops = sorted({_op_name(u) for u in users})
    kinds = {op.split(".")[1] if op.startswith("aten.") else op for op in ops}
    listed = ", ".join(ops)
    if kinds & RECURRENT_OPS:
        return f"recurrent layer parameter ({listed}): recurrent layers are not quantized"
    if kinds & NORM_OPS:
        return f"normalization parameter ({listed}): norms run in float"
    return f"read by {listed}, not a quantizable layer's weight or bias"


def _op_name(node: fx.Node) -> str:
    if node.op == "call_function":
        return str(node.target)
    return f"{node.op} {node.target}"


def _layer_cost(gm: fx.GraphModule, layer: QuantLayer, batch: int) -> LayerCost:
    out = SHAPE.get(layer.node)
    acts = [SHAPE.get(a) for a in layer.act_inputs]
    if out is None or any(a is None for a in acts):
        raise ValueError(f"layer {layer.name} has no recorded shape")
    params = bias_elems = 0
    if layer.weight is not None:
        weight = get_attr(gm, layer.weight.target)
        params = weight.numel()
        bias = _bias_name(layer)
        if bias is not None:
            bias_elems = get_attr(gm, bias).numel()
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
