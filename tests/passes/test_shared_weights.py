"""A weight tensor read by several layers (a module applied twice, a tied embedding and output
projection) is stored once, costed once, given one width and quantized by one quantizer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lcpaq.ir import capture, find_layers
from lcpaq.ir.capture import get_attr
from lcpaq.ir.errors import ConfigError, PassContractError
from lcpaq.ir.layers import is_quantizer, weight_groups
from lcpaq.ir.meta import ASSIGNMENT, COST, MODEL_COST, QSPEC, QUANTIZED, QUANTIZER, SENSITIVITY, BitAssignment
from lcpaq.ir.qops import FakeQuantize
from lcpaq.passes import PassContext, Pipeline, cost_model
from lcpaq.passes.quant_scheme import assign
from tests.conftest import make_ctx


class Twice(nn.Module):
    """One 3x3 conv, 4 -> 4 channels, applied twice: 144 weights and 4 biases, stored once."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.relu(self.conv(x)))


class Tied(nn.Module):
    """An embedding table (10 x 6) that is also the output projection, with a layer norm between:
    60 shared weights, 12 norm parameters kept in float."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.emb(ids)))


TWICE_W, TWICE_B = 4 * 4 * 3 * 3, 4


def _twice(target, spec: str = "fold-bn,shape-prop,cost,quant-scheme,calibrate,hessian{probes=8}"):
    x = torch.randn(1, 4, 5, 5)
    gm = capture(Twice().eval(), (x,))
    ctx = make_ctx(target, x)
    return Pipeline.from_spec(spec)(gm, ctx).graph_module, ctx


def _tied(target, spec: str = "shape-prop,cost,quant-scheme,calibrate,hessian{probes=8}"):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 10, (1, 7), generator=gen)
    ctx = PassContext(target, (ids,), tuple((torch.randint(0, 10, (4, 7), generator=gen),) for _ in range(3)))
    return Pipeline.from_spec(spec)(capture(Tied().eval(), (ids,)), ctx).graph_module, ctx


def test_a_conv_applied_twice_is_stored_once(x86) -> None:
    gm, _ = _twice(x86, "shape-prop,cost")
    first, second = find_layers(gm)
    assert weight_groups(gm, [first, second]) == [(first.name, second.name)]
    c1, c2 = COST.get(first.node), COST.get(second.node)
    assert (c1.params, c1.bias, c1.stores_weight, c1.stores_bias) == (TWICE_W, TWICE_B, True, True)
    assert (c2.params, c2.bias, c2.stores_weight, c2.stores_bias) == (TWICE_W, TWICE_B, False, False)
    assert c1.macs == c2.macs == 4 * 5 * 5 * 36
    totals = MODEL_COST.get(gm)
    assert (totals.params, totals.quantizable_params, totals.fp32_bytes, totals.float_tensors) == (148, 148, 592, ())
    assert cost_model.fixed_costs(gm) == {"size": 0.0}  # was -592 B when each use counted the tensor
    both4 = {first.name: BitAssignment(4, 8), second.name: BitAssignment(4, 8)}
    assert cost_model.totals(gm, both4)["size"] == TWICE_W * 4 / 8 + TWICE_B * 4  # 88 B
    assert cost_model.totals(gm, {})["size"] == 592.0  # all float: the fp32 model, once
    fp32, int8 = cost_model.reference_totals(gm)
    assert (fp32["size"], int8["size"]) == (592.0, TWICE_W + TWICE_B * 4)


def test_a_tied_embedding_and_head_are_stored_once(sim) -> None:
    gm, _ = _tied(sim, "shape-prop,cost")
    emb, head = find_layers(gm)
    assert (emb.kind, head.kind) == ("embedding", "linear")
    assert weight_groups(gm, [emb, head]) == [(emb.name, head.name)]
    assert COST.get(emb.node).stores_weight and not COST.get(head.node).stores_weight
    totals = MODEL_COST.get(gm)
    assert (totals.params, totals.quantizable_params, totals.fp32_bytes) == (72, 60, 288)
    assert [(t.name, t.bytes) for t in totals.float_tensors] == [("norm.weight", 24), ("norm.bias", 24)]
    assert all("norm" in t.reason for t in totals.float_tensors)
    assert cost_model.fixed_costs(gm) == {"size": 48.0}
    assert cost_model.totals(gm, {emb.name: BitAssignment(6, 32), head.name: BitAssignment(6, 8)})["size"] == 60 * 6 / 8 + 48


def test_ilp_under_a_size_budget_ties_the_uses_and_meets_the_true_size(x86) -> None:
    """size <= 100 B: 144 x w / 8 + 16 <= 100 leaves w <= 4; the least sensitivity is the widest.
    The brute force prices the shared weight once (its Hessian trace is the tensor's, over both
    uses) and both activation inputs."""
    gm, ctx = _twice(x86)
    first, second = find_layers(gm)
    s1, s2 = SENSITIVITY.get(first.node), SENSITIVITY.get(second.node)
    assert s1.weight_trace == s2.weight_trace  # one tensor, one trace
    Pipeline.from_spec("ilp{size=100}")(gm, ctx)
    chosen = {layer.name: QSPEC.get(layer.node).bits for layer in find_layers(gm)}
    assert chosen == {first.name: BitAssignment(4, 8), second.name: BitAssignment(4, 8)}
    result = ASSIGNMENT.get(gm)
    assert dict(result.achieved)["size"] == TWICE_W * 4 / 8 + TWICE_B * 4 <= 100
    fits = [w for w in range(2, 9) if TWICE_W * w / 8 + TWICE_B * 4 <= 100]
    best = min(dict(s1.weight)[w] + dict(s1.act)[8] + dict(s2.act)[8] for w in fits)
    assert result.sensitivity == pytest.approx(best, rel=1e-9)
    with pytest.raises(ConfigError, match="size=50 asks size <= 50 B, the smallest achievable is 52 B$"):
        Pipeline.from_spec("ilp{size=50}")(gm, ctx)  # 144 x 2 / 8 + 16: the tensor once


def test_ilp_gives_the_tied_embedding_and_head_one_width(sim) -> None:
    """size <= 100 B on sim: 60 x w / 8 + 48 (the float norm) <= 100 leaves w <= 6."""
    gm, ctx = _tied(sim)
    Pipeline.from_spec("ilp{size=100}")(gm, ctx)
    emb, head = find_layers(gm)
    assert QSPEC.get(emb.node).bits == BitAssignment(6, 32) and QSPEC.get(head.node).bits == BitAssignment(6, 8)
    assert dict(ASSIGNMENT.get(gm).achieved)["size"] == 60 * 6 / 8 + 48
    with pytest.raises(ConfigError, match=r"the smallest achievable is 63 B, of which 48 B is kept in float "
                                          r"\(2 tensors outside quantizable layers\)$"):
        Pipeline.from_spec("ilp{size=60}")(gm, ctx)  # 60 x 2 / 8 + 48


@pytest.mark.parametrize("model", ["twice", "tied"])
def test_fake_quant_inserts_one_quantizer_for_a_shared_weight(x86, sim, model: str) -> None:
    gm, ctx = _twice(x86, "shape-prop,cost,quant-scheme,calibrate") if model == "twice" else _tied(
        sim, "shape-prop,cost,quant-scheme,calibrate")
    Pipeline.from_spec("uniform{w=4,a=8},fake-quant")(gm, ctx)
    first, second = find_layers(gm)
    weight_q = [n for n in gm.graph.nodes if is_quantizer(n) and QUANTIZER.get(n).role == "weight"]
    assert len(weight_q) == 1
    readers = {u for u in weight_q[0].users}
    assert readers == {first.node, second.node}
    assert QUANTIZED.get(first.node).w_quantizer == QUANTIZED.get(second.node).w_quantizer == str(weight_q[0].target)
    fq = gm.get_submodule(str(weight_q[0].target))
    assert isinstance(fq, FakeQuantize) and fq.spec.bits == 4
    weight = get_attr(gm, first.weight_name)
    scale = weight.detach().reshape(weight.shape[0], -1).abs().amax(1) / 7  # per output channel, symmetric
    assert torch.allclose(fq.scale.flatten(), scale)


def test_fake_quant_refuses_two_widths_for_one_weight(x86) -> None:
    gm, ctx = _twice(x86, "shape-prop,cost,quant-scheme,calibrate")
    first, second = find_layers(gm)
    assign(gm, {first.name: BitAssignment(4, 8), second.name: BitAssignment(8, 8)})
    with pytest.raises(PassContractError, match=f"layers {first.name} and {second.name} read one weight tensor "
                                                r"\(conv.weight\) but their lcpaq.qspec give it int4 .* and int8"):
        Pipeline.from_spec("fake-quant")(gm, ctx)
