"""fake-quant: the rewrite pass that turns an assigned graph into its fake-quantized form."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch.fx as fx

from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import QuantLayer, find_layers, weight_channel_axis
from lcpaq.ir.meta import ACT_RANGE, BITS, BitAssignment, FLOAT_BITS, QUANTIZED, QUANTIZER, QuantizedInfo, QuantizerRole
from lcpaq.ir.qops import FakeQuantize
from lcpaq.ir.quantizer import QuantSpec
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext

QUANT_ROOT = "lcpaq_quant"


@register_pass
@dataclass(frozen=True)
class FakeQuant(Pass):
    """Inserts a ``FakeQuantize`` before each weight and each activation input of every layer,
    at the layer's assigned widths (32 = left in float).

    Reads: ``lcpaq.bits``, ``lcpaq.act_range``. Writes: ``lcpaq.quantized`` on every layer and
    ``lcpaq.quantizer`` on every inserted node. Weights: symmetric, per output channel unless
    ``weight_granularity=per-tensor``. Activations: ranges from calibration at the same width;
    asymmetric unless ``act_symmetric``. An activation read by several layers at one width gets
    one shared quantizer. Guarantees: idempotent (quantized layers are left as they are)."""

    name = "fake-quant"
    reads = (BITS, ACT_RANGE)
    writes = (QUANTIZED,)
    rewrites = True
    weight_granularity: Literal["per-channel", "per-tensor"] = "per-channel"
    act_symmetric: bool = False

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        shared: dict[tuple[fx.Node, int], fx.Node] = {}
        modified = False
        for layer in find_layers(gm):
            if QUANTIZED.has(layer.node):
                continue
            bits = BITS.get(layer.node)
            w_name = self._quantize_weight(gm, layer, bits.w_bits)
            a_names = self._quantize_acts(gm, layer, bits, shared)
            QUANTIZED.set(layer.node, QuantizedInfo(w_name, a_names, bits))
            modified = True
        if modified:
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)

    def _quantize_weight(self, gm: fx.GraphModule, layer: QuantLayer, w_bits: int) -> str | None:
        if layer.weight is None or w_bits == FLOAT_BITS:
            return None
        weight = get_attr(gm, layer.weight.target)
        axis = weight_channel_axis(layer) if self.weight_granularity == "per-channel" else None
        module = FakeQuantize.for_weight(weight, QuantSpec(w_bits, symmetric=True, ch_axis=axis))
        qnode = self._insert(gm, layer, layer.weight, module, f"{layer.name}.w", QuantizerRole("weight", w_bits))
        return str(qnode.target)

    def _quantize_acts(
        self, gm: fx.GraphModule, layer: QuantLayer, bits: BitAssignment, shared: dict[tuple[fx.Node, int], fx.Node]
    ) -> tuple[str, ...]:
        names = []
        ranges = ACT_RANGE.get(layer.node)
        for index, act in enumerate(layer.act_inputs):
            if bits.a_bits == FLOAT_BITS:
                continue
            key = (act, bits.a_bits)
            if key in shared:
                layer.node.replace_input_with(act, shared[key])
                names.append(str(shared[key].target))
                continue
            r = ranges.get(index, bits.a_bits)
            module = FakeQuantize.for_range(r.lo, r.hi, QuantSpec(bits.a_bits, symmetric=self.act_symmetric))
            role = QuantizerRole("act", bits.a_bits)
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
