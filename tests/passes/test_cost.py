import pytest
import torch
from torch import nn

from lcpaq.ir import capture, find_layers
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import COST, MODEL_COST, BitAssignment, LayerCost
from lcpaq.passes import Pipeline, cost_model
from lcpaq.tools.models.mobilenetv2 import mobilenetv2
from lcpaq.tools.models.resnet import resnet18
from tests.conftest import make_ctx


def _costed(model: nn.Module, x: torch.Tensor, target):
    gm = capture(model.eval(), (x,))
    return Pipeline.from_spec("fold-bn,shape-prop,cost")(gm, make_ctx(target, x)).graph_module


def test_resnet18_at_224_is_1_82_gmacs(x86) -> None:
    gm = _costed(resnet18(), torch.randn(1, 3, 224, 224), x86)
    totals = MODEL_COST.get(gm)
    assert totals.macs == pytest.approx(1.82e9, rel=0.01)
    assert totals.macs == 1_814_073_344  # torchvision's published 1.814 GMACs, exactly
    assert totals.params == 11_689_512 - 4_800  # BN folded: its 9,600 params become 4,800 conv biases
    first = COST.get(find_layers(gm)[0].node)
    assert first.macs == 64 * 112 * 112 * 3 * 7 * 7


def test_mobilenetv2_macs_and_params(x86) -> None:
    gm = _costed(mobilenetv2(), torch.randn(1, 3, 224, 224), x86)
    totals = MODEL_COST.get(gm)
    assert totals.macs == pytest.approx(300.8e6, rel=0.005)
    depthwise = [COST.get(layer.node) for layer in find_layers(gm)][1]  # 3x3 depthwise, 32 ch, 112x112
    assert depthwise.params == 32 * 9 and depthwise.macs == 32 * 112 * 112 * 9


def test_costs_are_per_sample(block, x86) -> None:
    one = _costed(block, torch.randn(1, 3, 8, 8), x86)
    four = _costed(block, torch.randn(4, 3, 8, 8), x86)
    assert MODEL_COST.get(one) == MODEL_COST.get(four)


def test_linear_and_matmul_costs(x86) -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = nn.Linear(16, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = self.q(x)
            return torch.matmul(q, q.transpose(-1, -2))

    gm = _costed(Attn(), torch.randn(1, 10, 16), x86)
    linear, matmul = (COST.get(layer.node) for layer in find_layers(gm))
    assert linear == LayerCost(params=256, macs=10 * 16 * 16, act_elems=160, out_elems=160, bias=16)
    assert matmul == LayerCost(params=0, macs=10 * 10 * 16, act_elems=320, out_elems=100)


def test_bops_and_bytes_closed_form() -> None:
    cost = LayerCost(params=1000, macs=50_000, act_elems=300, out_elems=200, bias=10)
    assert cost.bops(4, 8) == 50_000 * 32
    assert cost.weight_bytes(4) == 500 + 40
    assert cost.act_bytes(8) == 300
    act_only = LayerCost(params=0, macs=100, act_elems=10, out_elems=10)
    assert act_only.bops(32, 8) == 100 * 64  # both operands are activations


def test_cost_model_prices_the_block_by_hand(block, x86) -> None:
    """The block's layers: c1 216 weights + 8 (folded) biases, 13,824 MACs; c2 24 + 8, 1,536;
    fc and fc2 32 + 4, 32 each; convs read 192 activation elements, the linears 8."""
    gm = Pipeline.from_spec("fold-bn,shape-prop,cost,quant-scheme,uniform{w=4,a=8}")(
        capture(block, (torch.randn(1, 3, 8, 8),)), make_ctx(x86, torch.randn(1, 3, 8, 8))).graph_module
    assignment = cost_model.assignment_of(gm)
    assert assignment == {name: BitAssignment(4, 8) for name in ("c1", "c2", "fc", "fc2")}
    weights, biases, macs = 216 + 24 + 32 + 32, 8 + 8 + 4 + 4, 13_824 + 1_536 + 32 + 32
    assert cost_model.totals(gm, assignment) == {"size": weights * 4 / 8 + biases * 4, "bops": macs * 32.0, "act_memory": 192.0}
    mixed = {"c1": BitAssignment(2, 8), "fc": BitAssignment(32, 32)}  # c2 and fc2 left out: float
    assert cost_model.totals(gm, mixed) == {
        "size": 216 * 2 / 8 + (24 + 32 + 32) * 4 + biases * 4, "bops": 13_824 * 16 + (1_536 + 32 + 32) * 1024.0,
        "act_memory": 192 * 4.0,
    }
    fp32, int8 = cost_model.reference_totals(gm)
    assert fp32 == {"size": (weights + biases) * 4.0, "bops": macs * 1024.0, "act_memory": 768.0}
    assert int8 == {"size": weights + biases * 4.0, "bops": macs * 64.0, "act_memory": 192.0}


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4, bias=False)
        self.gain = nn.Parameter(torch.ones(4))  # 4 parameters outside any quantizable layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.gain


def test_fixed_size_is_what_no_layer_holds(x86) -> None:
    gm = _costed(Scaled(), torch.randn(1, 4), x86)
    assert cost_model.fixed_costs(gm) == {"size": 16.0}
    assert cost_model.totals(gm, {"fc": BitAssignment(2, 8)})["size"] == 16 * 2 / 8 + 16.0


class Recurrent(nn.Module):
    """A GRU (4 -> 5) and an LSTM (5 -> 3), a layer norm, then the only quantizable layer."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 5, batch_first=True)
        self.lstm = nn.LSTM(5, 3, batch_first=True)
        self.norm = nn.LayerNorm(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x)
        y, _ = self.lstm(y)
        return self.fc(self.norm(y))


#: Every float tensor of Recurrent by hand, in elements: GRU gates 3 x hidden, LSTM gates 4 x hidden.
RECURRENT_FLOATS = {
    "gru.weight_ih_l0": 3 * 5 * 4, "gru.weight_hh_l0": 3 * 5 * 5, "gru.bias_ih_l0": 15, "gru.bias_hh_l0": 15,
    "lstm.weight_ih_l0": 4 * 3 * 5, "lstm.weight_hh_l0": 4 * 3 * 3, "lstm.bias_ih_l0": 12, "lstm.bias_hh_l0": 12,
    "norm.weight": 3, "norm.bias": 3,
}


def test_float_parameters_are_listed_with_size_and_reason(sim) -> None:
    gm = _costed(Recurrent(), torch.randn(1, 6, 4), sim)
    totals = MODEL_COST.get(gm)
    listed = {t.name: t for t in totals.float_tensors}
    assert {name: t.bytes for name, t in listed.items()} == {name: 4 * n for name, n in RECURRENT_FLOATS.items()}
    assert listed["gru.weight_hh_l0"].reason == "recurrent layer parameter (aten.gru.input): recurrent layers are not quantized"
    assert listed["lstm.bias_ih_l0"].reason.startswith("recurrent layer parameter (aten.lstm.input)")
    assert listed["norm.weight"].reason == "normalization parameter (aten.layer_norm.default): norms run in float"
    assert (totals.params, totals.quantizable_params) == (sum(RECURRENT_FLOATS.values()) + 8, 8)  # fc: 6 weights, 2 biases
    assert cost_model.fixed_costs(gm) == {"size": 4.0 * sum(RECURRENT_FLOATS.values())}
    assert totals.float_bytes + 4 * totals.quantizable_params == totals.fp32_bytes


def test_infeasible_size_says_how_much_is_kept_in_float(x86) -> None:
    """fc: 16 weights at 2 bits = 4 B at least; the gain (4 fp32 parameters, 16 B) no width changes."""
    x = torch.randn(1, 4)
    gm = capture(Scaled().eval(), (x,))
    gm = Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate,hessian{probes=4}")(gm, make_ctx(x86, x)).graph_module
    assert [(t.name, t.bytes) for t in MODEL_COST.get(gm).float_tensors] == [("gain", 16)]
    assert MODEL_COST.get(gm).float_tensors[0].reason == "read by aten.mul.Tensor, not a quantizable layer's weight or bias"
    with pytest.raises(ConfigError) as info:
        Pipeline.from_spec("ilp{size=10}")(gm, make_ctx(x86, x))
    assert str(info.value) == ("pass 'ilp': infeasible budget: size=10 asks size <= 10 B, the smallest achievable is 20 B, "
                               "of which 16 B is kept in float (1 tensor outside quantizable layers)")
