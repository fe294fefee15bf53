"""The assignment offers each layer only what the target's backend executes for it: the
``executable`` pass asks the backend, and uniform / ilp / pareto read its answer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lcpaq.backends.common.backend import backend_for
from lcpaq.backends.common.capability import LayerPrecisions, capability_phase
from lcpaq.hw_targets import load_target
from lcpaq.ir import capture, find_layers
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import is_quantizer
from lcpaq.ir.meta import ASSIGNMENT, EXECUTABLE, FLOAT_LAYERS, PARETO, QSPEC, QUANTIZER, BitAssignment
from lcpaq.passes import PassContext, Pipeline
from lcpaq.passes.cost_model import reference_totals
from tests.conftest import make_ctx, unimplemented_target

FP32 = BitAssignment(32, 32)
#: x86-host: weights 2-8 (2-7 unpacked) and 16, activations 8 and 16; depthwise convs 8-bit only
X86_CONV = tuple(BitAssignment(w, a) for w in (*range(2, 9), 16) for a in (8, 16))
X86_DEPTHWISE = tuple(BitAssignment(w, 8) for w in range(2, 9))


class Tagger(nn.Module):
    """An embedding (16 x 8 = 128 weights, 512 B in fp32), then two linears (8 -> 8 -> 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.fc1 = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


class Convs(nn.Module):
    """A dense 3x3 conv, a dilated one (no x86 kernel takes dilation), a depthwise one."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Conv2d(3, 8, 3, padding=1)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(torch.relu(self.dilated(torch.relu(self.dense(x)))))


def _tagger(target_name: str, spec: str):
    target = load_target(target_name)
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 16, (1, 5), generator=gen)
    ctx = PassContext(target, (ids,), tuple((torch.randint(0, 16, (4, 5), generator=gen),) for _ in range(3)))
    return Pipeline.from_spec(spec)(capture(Tagger().eval(), (ids,)), ctx).graph_module, ctx


def test_x86_answers_per_layer(x86) -> None:
    x = torch.randn(1, 3, 8, 8)
    gm = Pipeline.from_spec("shape-prop,cost,executable")(capture(Convs().eval(), (x,)), make_ctx(x86, x)).graph_module
    answers = {layer.name: EXECUTABLE.get(layer.node) for layer in find_layers(gm)}
    assert answers["dense"].bits == (*X86_CONV, FP32) and answers["dw"].bits == (*X86_DEPTHWISE, FP32)
    assert answers["dilated"].bits == (FP32,) and not answers["dilated"].integer
    assert answers["dilated"].reason == ("backend 'x86-vnni' has no integer kernel for conv dilated "
                                         "(aten.conv2d.default, groups=1, dilation=2, kernel 3x3)")


def test_uniform_leaves_what_the_backend_cannot_run_in_float(x86) -> None:
    gm, ctx = _tagger("x86-host", "shape-prop,cost,executable,quant-scheme,calibrate,uniform{w=8,a=8},fake-quant")
    bits = {layer.name: QSPEC.get(layer.node).bits for layer in find_layers(gm)}
    assert bits == {"emb": FP32, "fc1": BitAssignment(8, 8), "fc2": BitAssignment(8, 8)}
    assert FLOAT_LAYERS.get(gm).layers == (("emb", "backend 'x86-vnni' has no integer kernel for embedding emb (aten.embedding.default)"),)
    weights = [n for n in gm.graph.nodes if is_quantizer(n) and QUANTIZER.get(n).role == "weight"]
    assert len(weights) == 2  # fc1 and fc2; the table is read in float
    # without the backend's answer (sim, or no executable pass) the table is quantized as before
    sim, _ = _tagger("sim", "shape-prop,cost,quant-scheme,calibrate,uniform{w=8,a=8}")
    assert QSPEC.get(find_layers(sim)[0].node).bits == BitAssignment(8, 32) and FLOAT_LAYERS.get(sim).layers == ()


def test_ilp_costs_a_layer_without_a_kernel_as_float(x86) -> None:
    """Stored: the table in fp32 (512 B); fc1 64 weights + 8 int32 biases, fc2 32 + 4. Under
    550 B: 512 + 48 + (64 w1 + 32 w2) / 8 <= 550 has no solution; under 600 B, w1 = w2 = 2 only
    fits 40 B of weights... (64 w1 + 32 w2) / 8 <= 40."""
    gm, ctx = _tagger("x86-host", "shape-prop,cost,executable,quant-scheme,calibrate,hessian{probes=4}")
    fp32, int8 = reference_totals(gm)
    assert int8["size"] == 512 + (64 + 32) + 12 * 4  # uniform INT8 as the backend builds it: the table in float
    with pytest.raises(ConfigError, match=r"smallest achievable is 584 B, of which 512 B is kept in float "
                                          r"\(1 layer without an integer kernel\)$"):
        Pipeline.from_spec("ilp{size=550}")(gm, ctx)  # 512 + 48 + (64 + 32) x 2 / 8
    Pipeline.from_spec("ilp{size=600}")(gm, ctx)
    bits = {layer.name: QSPEC.get(layer.node).bits for layer in find_layers(gm)}
    assert bits["emb"] == FP32
    w1, w2 = bits["fc1"].w_bits, bits["fc2"].w_bits
    size = 512 + 48 + (64 * w1 + 32 * w2) / 8
    assert dict(ASSIGNMENT.get(gm).achieved)["size"] == size <= 600
    assert FLOAT_LAYERS.get(gm).layers[0][0] == "emb"
    Pipeline.from_spec("pareto{points=4}")(gm, ctx)
    assert all(("emb", 32, 32) in p.assignment for p in PARETO.get(gm).front("size"))


def test_a_tied_table_keeps_its_head_in_float_too(x86) -> None:
    """One tensor, one width: the embedding runs only in float, so its tied output projection does."""
    from tests.passes.test_shared_weights import Tied

    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 10, (1, 7), generator=gen)
    ctx = PassContext(x86, (ids,), tuple((torch.randint(0, 10, (4, 7), generator=gen),) for _ in range(3)))
    gm = Pipeline.from_spec("shape-prop,cost,executable,quant-scheme,calibrate,uniform{w=8,a=8},fake-quant")(
        capture(Tied().eval(), (ids,)), ctx).graph_module
    emb, head = find_layers(gm)
    assert QSPEC.get(emb.node).bits == FP32 and QSPEC.get(head.node).bits == FP32
    assert dict(FLOAT_LAYERS.get(gm).layers)[head.name] == f"it shares weight {emb.weight_name} with {emb.name}, which runs only in float"
    assert not any(is_quantizer(n) for n in gm.graph.nodes)


def test_the_pass_runs_where_a_backend_is_implemented() -> None:
    assert capability_phase(load_target("x86-host")) == [LayerPrecisions()] == capability_phase(load_target("arm-a76"))
    assert capability_phase(load_target("nvidia-sm90")) == [LayerPrecisions()]
    assert capability_phase(load_target("sim")) == [] and capability_phase(unimplemented_target()) == []
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ConfigError, match="pass 'executable': target 'sim' is simulation only"):
        Pipeline.from_spec("shape-prop,executable")(capture(Convs().eval(), (x,)), make_ctx(load_target("sim"), x))
    assert backend_for(load_target("x86-host")).layer_precisions  # the interface generic code asks
