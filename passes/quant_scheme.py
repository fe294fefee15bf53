"""quant-scheme: the graph-wide quantizer choices, and the per-layer specs built from them.

The scheme (weight granularity, activation symmetry) is written once on the graph. The
sensitivity analysis prices quantization errors with it, and the assignment passes turn each
layer's chosen bits into that layer's :class:`LayerQuantSpec` with it; the fake-quant rewrite
then reads only the per-layer specs. Every spec comes from :func:`layer_spec`, so what the
Hessian priced is what gets inserted."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch.fx as fx

from lcpaq.ir.layers import QuantLayer, find_layers, weight_channel_axis
from lcpaq.ir.meta import FLOAT_BITS, QSPEC, QUANT_SCHEME, BitAssignment, LayerQuantSpec, QuantScheme, QuantSpec
from lcpaq.ir.precision import Granularity
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext


@register_pass
@dataclass(frozen=True)
class SetQuantScheme(Pass):
    """Sets how every quantizer quantizes: weights symmetric, per output channel (or per
    tensor with ``weight_granularity=per-tensor``); activations per tensor, asymmetric unless
    ``act_symmetric``.

    Reads: nothing. Writes: ``lcpaq.quant_scheme`` on the graph (read by hessian, uniform and
    ilp). Guarantees: idempotent; the graph is left as it is."""

    name = "quant-scheme"
    writes = (QUANT_SCHEME,)
    weight_granularity: Granularity = "per-channel"
    act_symmetric: bool = False

    def __post_init__(self) -> None:
        self.scheme()  # validates

    def scheme(self) -> QuantScheme:
        return QuantScheme(self.weight_granularity, self.act_symmetric)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        QUANT_SCHEME.set(gm, self.scheme())
        return PassResult(gm, False)


def weight_spec(layer: QuantLayer, w_bits: int, scheme: QuantScheme) -> QuantSpec | None:
    """The spec of ``layer``'s weight at ``w_bits`` (None: no weight, or kept in float)."""
    if layer.weight is None or w_bits == FLOAT_BITS:
        return None
    return scheme.weight(w_bits, weight_channel_axis(layer))


def act_spec(a_bits: int, scheme: QuantScheme) -> QuantSpec | None:
    """The spec of an activation input at ``a_bits`` (None: kept in float)."""
    return None if a_bits == FLOAT_BITS else scheme.act(a_bits)


def layer_spec(layer: QuantLayer, bits: BitAssignment, scheme: QuantScheme) -> LayerQuantSpec:
    """``layer``'s quantization spec at ``bits`` under ``scheme``; ``spec.bits == bits``."""
    acts = act_spec(bits.a_bits, scheme) if layer.act_inputs else None
    spec = LayerQuantSpec(weight_spec(layer, bits.w_bits, scheme), acts, weightless=layer.weight is None)
    if spec.bits != bits:
        raise ValueError(f"layer {layer.name} ({layer.kind}) cannot take {bits}")
    return spec


def assign(gm: fx.GraphModule, choice: Mapping[str, BitAssignment]) -> None:
    """Write ``lcpaq.qspec`` on every layer from its bits in ``choice`` (layer name -> bits)
    under the graph's ``lcpaq.quant_scheme``; for the assignment passes and benchmarks."""
    scheme = QUANT_SCHEME.get(gm)
    for layer in find_layers(gm):
        QSPEC.set(layer.node, layer_spec(layer, choice[layer.name], scheme))
