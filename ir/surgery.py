"""Small graph edits shared by rewrite passes."""
from __future__ import annotations

import torch
import torch.fx as fx

from lcpaq.ir.capture import get_attr, set_attr


BIAS_ARG = 2  #: conv and linear nodes take their bias third


def set_layer_bias(gm: fx.GraphModule, layer: fx.Node, weight_target: str, bias: torch.Tensor) -> None:
    """Make ``layer`` add ``bias``: overwrite its bias parameter when only this layer reads it,
    else register a new parameter next to the weight and pass it in."""
    index = BIAS_ARG
    current = layer.args[index] if len(layer.args) > index else None
    value = torch.nn.Parameter(bias.detach().clone(), requires_grad=False)
    if isinstance(current, fx.Node) and current.op == "get_attr" and len(current.users) == 1:
        set_attr(gm, current.target, value)
        return
    name = free_attr_name(gm, weight_target.removesuffix("weight") + "bias")
    set_attr(gm, name, value)
    with gm.graph.inserting_before(layer):
        node = gm.graph.get_attr(name)
    args = list(layer.args) + [None] * (index + 1 - len(layer.args))
    args[index] = node
    layer.args = tuple(args)


def free_attr_name(gm: fx.GraphModule, name: str) -> str:
    candidate, i = name, 0
    while _exists(gm, candidate):
        i += 1
        candidate = f"{name}_{i}"
    return candidate


def _exists(gm: fx.GraphModule, qualname: str) -> bool:
    try:
        get_attr(gm, qualname)
        return True
    except AttributeError:
        return False
