"""Model coverage: every architecture of the coverage zoo is captured, quantized (uniform W8A8,
and under a size and a BOPs budget), built W8A8 for x86-host bit-exactly against its integer
reference, and its W8A8 build stays close to fp32.

Independent expectations: the captured graph computes what the model computes; uniform W8A8
gives every layer the bits the target's rule gives its kind, or leaves it in float with a
recorded reason; a budget halfway between the W8A8 graph and the same with 4-bit weights is binding (W8A8 exceeds it) and the ILP's assignment meets it to the solver's
tolerance; the build equals the integer reference (``np.array_equal``) where every op is integer,
and within float rounding (``coverage_report.agreement``: ``FLOAT_ATOL`` of the output's largest
magnitude, or a code flipped by a float op's rounding on at most 1% of the elements) where float ops
remain; the cosine with the fp32 model's output is at least ``COSINE_BOUND`` (0.99).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lcpaq.backends.common.build import build_model
from lcpaq.hw_targets import load_target
from lcpaq.ir.capture import capture
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import FLOAT_BITS, FLOAT_LAYERS, BitAssignment, FloatLayers
from lcpaq.passes.cost_model import FP32, assignment_of
from lcpaq.tools.api import QuantizeResult, quantize
from lcpaq.tools.coverage_report import COSINE_BOUND, agreement, cosine, float_ops, midpoint_budgets, outputs
from lcpaq.tools.models.coverage import COVERAGE_MODELS
from lcpaq.tools.models.zoo import ModelBundle, load_model

MODELS = list(COVERAGE_MODELS)
PROBES = 8  # Hutchinson probes for the budget runs: enough to rank 1-2 blocks of layers
_bundles: dict[str, ModelBundle] = {}
_uniform: dict[str, QuantizeResult] = {}


def _bundle(name: str) -> ModelBundle:
    if name not in _bundles:
        _bundles[name] = load_model(f"coverage/{name}")
    return _bundles[name]


def _w8a8(name: str) -> QuantizeResult:
    if name not in _uniform:
        _uniform[name] = quantize(_bundle(name), target=load_target("x86-host"), bits="w8a8", build=False)
    return _uniform[name]


def test_zoo_has_every_architecture_and_loads_by_name() -> None:
    assert len(MODELS) >= 12
    bundle = load_model("coverage/vit")
    assert bundle.name == "coverage/vit" and tuple(bundle.example_inputs[0].shape) == (1, 3, 32, 32)
    with pytest.raises(ConfigError, match="unknown coverage model 'alexnet'; choose from resnet, "):
        load_model("coverage/alexnet")


@pytest.mark.parametrize("name", ["resnet", "llama"])
def test_builders_are_seeded(name: str) -> None:
    (m1, x1, d1), (m2, x2, d2) = COVERAGE_MODELS[name](), COVERAGE_MODELS[name]()
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(x1, x2))
    assert len(d1) == 4 and all(torch.equal(a, b) for b1, b2 in zip(d1, d2) for a, b in zip(b1, b2))


@pytest.mark.parametrize("name", MODELS)
def test_captured_graph_computes_the_model(name: str) -> None:
    bundle = _bundle(name)
    gm = capture(bundle.model, bundle.example_inputs, bundle.name)
    assert find_layers(gm), "no quantizable layer found"
    with torch.no_grad():
        got, want = outputs(gm(*bundle.example_inputs)), outputs(bundle.model(*bundle.example_inputs))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


@pytest.mark.parametrize("name", MODELS)
def test_uniform_w8a8_quantizes_every_layer(name: str) -> None:
    """Every layer at W8A8 (an embedding weight-only), or in float with the reason recorded."""
    result = _w8a8(name)
    qgm = result.results[0].graph_module
    left_in_float = dict(FLOAT_LAYERS.get(qgm, FloatLayers()).layers)
    assert all(left_in_float.values())
    expected = {
        layer.name: FP32 if layer.name in left_in_float
        else BitAssignment(8, FLOAT_BITS) if layer.kind == "embedding" else BitAssignment(8, 8)
        for layer in find_layers(qgm)
    }
    assert {n: assignment_of(qgm).get(n, FP32) for n in expected} == expected
    assert len(left_in_float) < len(expected)
    assert result.results[0].metrics["cosine"] >= COSINE_BOUND  # the fake-quantized model against fp32


@pytest.mark.parametrize("quantity", ["size", "bops"])
@pytest.mark.parametrize("name", MODELS)
def test_budget_quantizes_within_the_budget(name: str, quantity: str) -> None:
    text, limit, w8a8_total = midpoint_budgets(_w8a8(name).results[0].graph_module)[quantity]
    assert limit < w8a8_total  # binding: uniform W8A8 does not meet it
    result = quantize(_bundle(name), target=load_target("x86-host"), budget=[text], probes=PROBES, build=False)
    chosen = result.results[0]
    assert chosen.label.startswith("ILP(")
    value = chosen.size_bytes if quantity == "size" else chosen.bops
    assert value <= limit * (1 + 1e-6)
    assert any(bits.w_bits < 8 for bits in assignment_of(chosen.graph_module).values())


@pytest.mark.parametrize("name", MODELS)
def test_w8a8_build_matches_integer_reference_and_fp32(name: str) -> None:
    bundle = _bundle(name)
    x = bundle.example_inputs
    built = build_model(_w8a8(name).results[0].graph_module, x, load_target("x86-host"))
    got = outputs(built.run(*x))
    with torch.no_grad():
        ref, fp32 = outputs(built.integer_graph(*x)), outputs(bundle.model(*x))
    assert [g.shape for g in got] == [r.shape for r in ref] == [f.shape for f in fp32]
    floats = float_ops(built.integer_graph)
    verdict = agreement(got, ref, bool(floats))  # float parts round differently in TVM: equal up to that
    assert verdict != "no", f"float ops {floats}: max |built - integer reference| = {max(np.abs(g - r).max() for g, r in zip(got, ref))}"
    assert floats or verdict == "exact"
    assert cosine(got, fp32) >= COSINE_BOUND
