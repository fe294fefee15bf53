"""The quantizable-layer view of a captured graph.

A quantizable layer is a conv, linear, matmul or embedding node, with its weight (a ``get_attr`` node, or
None for an activation x activation matmul) and the activation inputs that get quantized.
The view is derived from the graph on demand, so it stays right after any rewrite; it looks
through the quantizers that the fake-quant rewrite inserts.

Groups: layers that read the same activation tensor quantize it once, so they must share an
activation precision (``precision_groups``); layers that read the same weight tensor (a tied
embedding and output projection, a module applied twice) store and quantize it once, so they
must share a weight precision (``weight_groups``); layers whose outputs meet in a residual add
must share an output scale for integer execution (``scale_groups``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import networkx as nx
import torch
import torch.fx as fx

from lcpaq.ir.capture import get_attr
from lcpaq.ir.meta import QUANTIZER

aten = torch.ops.aten

CONV_OPS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default, aten.convolution.default}
LINEAR_OPS = {aten.linear.default}
MATMUL_OPS = {aten.matmul.default, aten.bmm.default, aten.mm.default}
EMBEDDING_OPS = {aten.embedding.default}
ADD_OPS = {aten.add.Tensor, aten.add_.Tensor}
#: Ops a value passes through unchanged in layout-insensitive terms, when tracing residual adds.
PASSTHROUGH_OPS = {
    aten.relu.default, aten.relu_.default, aten.batch_norm.default, aten.dropout.default,
    aten.hardtanh.default, aten.hardtanh_.default, aten.clamp.default, aten.view.default,
    aten.reshape.default, aten.flatten.using_ints, aten.contiguous.default, aten.gelu.default,
}

LayerKind = Literal["conv", "linear", "matmul", "embedding"]


@dataclass(frozen=True)
class QuantLayer:
    """One quantizable layer: its node, weight and activation inputs. An embedding is a
    weight-only layer (its input is indices, nothing to quantize)."""

    name: str
    node: fx.Node
    kind: LayerKind
    weight: fx.Node | None
    act_inputs: tuple[fx.Node, ...]

    @property
    def weight_name(self) -> str | None:
        return None if self.weight is None else str(self.weight.target)


def is_quantizer(node: fx.Node) -> bool:
    """True for a node that calls a quantizer module inserted by the fake-quant rewrite."""
    return node.op == "call_module" and QUANTIZER.has(node)


def through_quantizer(node: fx.Node) -> fx.Node:
    """The value a quantizer node quantizes, or the node itself."""
    while isinstance(node, fx.Node) and is_quantizer(node):
        node = node.args[0]
    return node


def find_layers(gm: fx.GraphModule) -> list[QuantLayer]:
    """Every quantizable layer, in graph order, with unique, stable names."""
    raw: list[tuple[fx.Node, LayerKind, fx.Node | None, tuple[fx.Node, ...]]] = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in CONV_OPS or node.target in LINEAR_OPS:
            weight = through_quantizer(node.args[1])
            if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
                continue  # a weight computed at run time is not a layer we can quantize
            kind: LayerKind = "conv" if node.target in CONV_OPS else "linear"
            raw.append((node, kind, weight, (through_quantizer(node.args[0]),)))
        elif node.target in EMBEDDING_OPS:
            weight = through_quantizer(node.args[0])
            if isinstance(weight, fx.Node) and weight.op == "get_attr":
                raw.append((node, "embedding", weight, ()))
        elif node.target in MATMUL_OPS:
            lhs, rhs = (through_quantizer(a) for a in node.args[:2])
            if isinstance(rhs, fx.Node) and rhs.op == "get_attr":
                raw.append((node, "linear", rhs, (lhs,)))
            else:
                raw.append((node, "matmul", None, (lhs, rhs)))
    return [QuantLayer(name, node, kind, w, acts) for name, (node, kind, w, acts) in zip(_names(raw), raw)]


def _names(raw: list[tuple[fx.Node, LayerKind, fx.Node | None, tuple[fx.Node, ...]]]) -> list[str]:
    """Name a layer after its weight's module path; fall back to the module stack + node name."""
    by_weight: dict[str, int] = {}
    for _, _, weight, _ in raw:
        if weight is not None:
            by_weight[str(weight.target)] = by_weight.get(str(weight.target), 0) + 1
    names = []
    for node, _, weight, _ in raw:
        target = None if weight is None else str(weight.target)
        if target is not None and by_weight[target] == 1:
            names.append(target.removesuffix(".weight"))
        else:
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else ""
            names.append(f"{path}.{node.name}" if path else node.name)
    return names


def weight_channel_axis(layer: QuantLayer) -> int:
    """The weight axis that indexes output channels (rows, for an embedding table); per-channel
    quantization keeps one scale along it. A constant matmul operand [K, N] has them last."""
    return 0 if layer.node.target in CONV_OPS | LINEAR_OPS | EMBEDDING_OPS else -1


def layer_map(gm: fx.GraphModule) -> dict[str, QuantLayer]:
    return {layer.name: layer for layer in find_layers(gm)}


def precision_groups(layers: list[QuantLayer]) -> list[tuple[str, ...]]:
    """Groups (size > 1) of layers that read the same activation tensor."""
    graph = nx.Graph()
    graph.add_nodes_from(layer.name for layer in layers)
    first_reader: dict[fx.Node, str] = {}
    for layer in layers:
        for act in layer.act_inputs:
            if act in first_reader:
                graph.add_edge(first_reader[act], layer.name)
            else:
                first_reader[act] = layer.name
    return _components(graph, layers)


def tensor_names(gm: fx.GraphModule) -> dict[str, str]:
    """The qualified name of every tensor a used ``get_attr`` node reads -> the tensor's
    canonical name: the first name (in graph order) under which the graph uses that tensor
    object, so two names of one tensor (a tied parameter) map to one."""
    first: dict[int, str] = {}
    names: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users:
            value = get_attr(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                names[str(node.target)] = first.setdefault(id(value), str(node.target))
    return names


def weight_tensors(gm: fx.GraphModule, layers: list[QuantLayer]) -> dict[str, str]:
    """Layer name -> the canonical name of the weight tensor it reads (layers with a weight)."""
    names = tensor_names(gm)
    return {layer.name: names.get(layer.weight_name, layer.weight_name) for layer in layers if layer.weight_name is not None}


def weight_groups(gm: fx.GraphModule, layers: list[QuantLayer]) -> list[tuple[str, ...]]:
    """Groups (size > 1) of layers that read one weight tensor, in graph order."""
    by_tensor: dict[str, list[str]] = {}
    for layer, tensor in weight_tensors(gm, layers).items():
        by_tensor.setdefault(tensor, []).append(layer)
    order = {layer.name: i for i, layer in enumerate(layers)}
    return sorted((tuple(g) for g in by_tensor.values() if len(g) > 1), key=lambda g: order[g[0]])


def scale_groups(layers: list[QuantLayer]) -> list[tuple[str, ...]]:
    """Groups (size > 1) of layers whose outputs are summed by a residual add."""
    by_node = {layer.node: layer.name for layer in layers}
    graph = nx.Graph()
    graph.add_nodes_from(layer.name for layer in layers)
    adds = {user for layer in layers for user in _downstream(layer.node) if user.target in ADD_OPS}
    for add in adds:
        sources = [by_node.get(_upstream(a)) for a in add.args[:2] if isinstance(a, fx.Node)]
        sources = [s for s in sources if s is not None]
        for a, b in zip(sources, sources[1:]):
            graph.add_edge(a, b)
    return _components(graph, layers)


def _upstream(node: fx.Node) -> fx.Node:
    while node.op == "call_function" and node.target in PASSTHROUGH_OPS and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _downstream(node: fx.Node) -> list[fx.Node]:
    out, frontier = [], [node]
    while frontier:
        current = frontier.pop()
        for user in current.users:
            if user.op == "call_function" and user.target in PASSTHROUGH_OPS:
                frontier.append(user)
            else:
                out.append(user)
    return out


def _components(graph: nx.Graph, layers: list[QuantLayer]) -> list[tuple[str, ...]]:
    order = {layer.name: i for i, layer in enumerate(layers)}
    groups = [tuple(sorted(c, key=order.__getitem__)) for c in nx.connected_components(graph) if len(c) > 1]
    return sorted(groups, key=lambda g: order[g[0]])
