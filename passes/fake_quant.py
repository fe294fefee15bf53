"""fake-quant: the rewrite pass that turns an assigned graph into its fake-quantized form."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch.fx as fx

from lcpaq.ir.capture import get_attr
from lcpaq.ir.errors import PassContractError
from lcpaq.ir.layers import QuantLayer, find_layers, weight_tensors
from lcpaq.ir.meta import ACT_RANGE, QSPEC, QUANTIZED, QUANTIZER, LayerQuantSpec, QuantizedInfo, QuantizerRole, QuantSpec
from lcpaq.ir.qops import FakeQuantize
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext

QUANT_ROOT = "lcpaq_quant"


@register_pass
@dataclass(frozen=True)
class FakeQuant(Pass):
    """Inserts a ``FakeQuantize`` before each weight and each activation input of every layer,
    set to exactly the layer's ``lcpaq.qspec`` (its weight spec on the weight, its activation
    spec on every activation input; a side whose spec is None stays in float). Activation
    quantizers take the range calibrated at their width.

    Reads: ``lcpaq.qspec``, ``lcpaq.act_range``. Writes: ``lcpaq.quantized`` on every layer and
    ``lcpaq.quantizer`` on every inserted node. An activation read by several layers with one
    spec gets one shared quantizer, and so does a weight tensor read by several layers (a tied
    embedding and output projection, a module applied twice), whose layers must have one weight
    spec (a PassContractError otherwise). Guarantees: idempotent (quantized layers are left as
    they are)."""

    name = "fake-quant"
    reads = (QSPEC, ACT_RANGE)
    writes = (QUANTIZED,)
    rewrites = True

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        shared: dict[tuple[fx.Node, QuantSpec], fx.Node] = {}
        layers = find_layers(gm)
        tensors = weight_tensors(gm, layers)
        weights: dict[str, tuple[str, QuantSpec | None, fx.Node | None]] = {}
        for layer in layers:  # weights already quantized (a rerun) keep their quantizer
            if QUANTIZED.has(layer.node) and layer.name in tensors:
                qnode = layer.node.args[0 if layer.kind == "embedding" else 1]
                weights.setdefault(tensors[layer.name], (layer.name, QSPEC.get(layer.node).weight, qnode if qnode is not layer.weight else None))
        modified = False
        for layer in layers:
            if QUANTIZED.has(layer.node):
                continue
            spec = QSPEC.get(layer.node)
            w_name = self._shared_weight(gm, layer, spec, tensors, weights)
            a_names = self._quantize_acts(gm, layer, spec, shared)
            QUANTIZED.set(layer.node, QuantizedInfo(w_name, a_names))
            modified = True
        if modified:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)

    def _shared_weight(
        self, gm: fx.GraphModule, layer: QuantLayer, spec: LayerQuantSpec, tensors: dict[str, str],
        weights: dict[str, tuple[str, QuantSpec | None, fx.Node | None]],
    ) -> str | None:
        """Quantize the layer's weight, once per tensor: a later reader of the same tensor reads
        the first one's quantizer, and must want the same spec."""
        if layer.weight is None:
            return None
        tensor = tensors[layer.name]
        if tensor not in weights:
            qnode = self._quantize_weight(gm, layer, spec)
            weights[tensor] = (layer.name, spec.weight, qnode)
            return None if qnode is None else str(qnode.target)
        first, first_spec, qnode = weights[tensor]
        if spec.weight != first_spec:
            raise PassContractError(
                f"layers {first} and {layer.name} read one weight tensor ({tensor}) but their lcpaq.qspec give it "
                f"{_spec(first_spec)} and {_spec(spec.weight)}; a shared weight takes one spec"
            )
        if qnode is None:
            return None
        layer.node.replace_input_with(layer.weight, qnode)
        return str(qnode.target)

    def _quantize_weight(self, gm: fx.GraphModule, layer: QuantLayer, spec: LayerQuantSpec) -> fx.Node | None:
        if layer.weight is None or spec.weight is None:
            return None
        module = FakeQuantize.for_weight(get_attr(gm, layer.weight.target), spec.weight)
        return self._insert(gm, layer, layer.weight, module, f"{layer.name}.w", QuantizerRole("weight", spec.weight.bits))

    def _quantize_acts(
        self, gm: fx.GraphModule, layer: QuantLayer, spec: LayerQuantSpec, shared: dict[tuple[fx.Node, QuantSpec], fx.Node]
    ) -> tuple[str, ...]:
        names: list[str] = []
        if spec.act is None:
            return ()
        ranges = ACT_RANGE.get(layer.node)
        for index, act in enumerate(layer.act_inputs):
            key = (act, spec.act)
            if key in shared:
                layer.node.replace_input_with(act, shared[key])
                names.append(str(shared[key].target))
                continue
            r = ranges.get(index, spec.act.bits)
            module = FakeQuantize.for_range(r.lo, r.hi, spec.act)
            role = QuantizerRole("act", spec.act.bits)
            shared[key] = self._insert(gm, layer, act, module, f"{layer.name}.a{index}", role)
            names.append(str(shared[key].target))
        return tuple(names)

    def _insert(
        self, gm: fx.GraphModule, layer: QuantLayer, value: fx.Node, module: FakeQuantize, label: str, role: QuantizerRole
    ) -> fx.Node:
        target = f"{QUANT_ROOT}.{_safe(label)}"
        gm.add_submodule(target, module)
        with gm.graph.inserting_before(layer.node):
            qnode = gm.graph.call_module(target, (value,))
        QUANTIZER.set(qnode, role)
        layer.node.replace_input_with(value, qnode)
        return qnode


def _safe(label: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", label)


def _spec(spec: QuantSpec | None) -> str:
    return "float" if spec is None else f"{spec.dtype} ({spec.granularity})"
