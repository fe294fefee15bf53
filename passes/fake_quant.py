"""fake-quant: the rewrite pass that turns an assigned graph into its fake-quantized form."""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch.fx as fx

from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import QuantLayer, find_layers
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
    spec gets one shared quantizer. Guarantees: idempotent (quantized layers are left as they
    are)."""

    name = "fake-quant"
    reads = (QSPEC, ACT_RANGE)
    writes = (QUANTIZED,)
    rewrites = True

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        shared: dict[tuple[fx.Node, QuantSpec], fx.Node] = {}
        modified = False
        for layer in find_layers(gm):
            if QUANTIZED.has(layer.node):
                continue
            spec = QSPEC.get(layer.node)
            w_name = self._quantize_weight(gm, layer, spec)
            a_names = self._quantize_acts(gm, layer, spec, shared)
            QUANTIZED.set(layer.node, QuantizedInfo(w_name, a_names))
            modified = True
        if modified:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)

    def _quantize_weight(self, gm: fx.GraphModule, layer: QuantLayer, spec: LayerQuantSpec) -> str | None:
        if layer.weight is None or spec.weight is None:
            return None
        module = FakeQuantize.for_weight(get_attr(gm, layer.weight.target), spec.weight)
        qnode = self._insert(gm, layer, layer.weight, module, f"{layer.name}.w", QuantizerRole("weight", spec.weight.bits))
        return str(qnode.target)

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
