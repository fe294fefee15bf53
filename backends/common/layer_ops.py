"""One quantizable layer alone, as the layer timers of the families build it for a latency table:
which kernel form it has, its batch-1 shapes, and its float op as one Relax op (how a build runs
a float layer: TVM's frontend lowering)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common.integer_layers import conv_kind
from lcpaq.backends.common.op_args import conv_geometry
from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import QuantLayer
from lcpaq.ir.meta import SHAPE

aten = torch.ops.aten
#: Makes a weight array of the given shape (random for a CPU timer, zeros where values do not matter).
WeightFn = Callable[[tuple[int, ...]], np.ndarray]


def batch1_shape(node: fx.Node) -> tuple[int, ...]:
    """The annotated shape of ``node`` at batch 1."""
    return (1, *SHAPE.require(node, "shape-prop").shape[1:])


def timed_form(gm: fx.GraphModule, layer: QuantLayer) -> tuple[str, Any]:
    """``("dense", geometry)``, ``("depthwise", geometry)``, ``("grouped", geometry)`` for a conv
    of those forms (:func:`~lcpaq.backends.common.integer_layers.conv_kind`), ``("linear", None)``
    for an ``aten.linear``, ``("float", None)`` for anything else."""
    form = conv_kind(gm, layer)
    if form is not None:
        return form
    if layer.kind == "linear" and layer.node.target is aten.linear.default:
        return "linear", None
    return "float", None


def float_op(gm: fx.GraphModule, layer: QuantLayer, weight: WeightFn) -> Callable[[relax.Expr], relax.Expr]:
    """The layer in float on its input: a conv of any geometry with its weight's shape, else a
    matmul to its output width."""
    if layer.kind == "conv" and layer.weight is not None and (geo := conv_geometry(layer.node)) is not None:
        wf = relax.const(weight(tuple(get_attr(gm, layer.weight_name).shape)))
        return lambda x: relax.op.nn.conv2d(x, wf, strides=geo["stride"], padding=geo["padding"], dilation=geo["dilation"],
                                            groups=geo["groups"])
    wt = relax.const(weight((batch1_shape(layer.act_inputs[0])[-1], batch1_shape(layer.node)[-1])))
    return lambda x: relax.op.matmul(x, wt)


def by_form(gm: fx.GraphModule, layer: QuantLayer, conv: Callable[[QuantLayer, torch.Tensor, dict[str, int]], Any],
            depthwise: Callable[[QuantLayer, torch.Tensor, dict[str, int]], Any], linear: Callable[[QuantLayer, torch.Tensor], Any],
            other: Callable[[], Any]) -> Any:
    """A layer timer's handler for the layer's :func:`timed_form`, given its weight (and
    geometry); ``other()`` for grouped convs and anything without an integer kernel."""
    form, geo = timed_form(gm, layer)
    if form == "dense":
        return conv(layer, get_attr(gm, layer.weight_name), geo)
    if form == "depthwise":
        return depthwise(layer, get_attr(gm, layer.weight_name), geo)
    if form == "linear":
        return linear(layer, get_attr(gm, layer.weight_name))
    return other()


def one_op_module(op: Callable[[relax.Expr], relax.Expr], x_shape: tuple[int, ...]) -> Any:
    """A Relax module whose ``main(x)`` (float32 ``x_shape``) is ``op(x)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(op(x))
        bb.emit_func_output(out)
    return bb.get()
