import copy

import pytest
import torch

from lcpaq.ir import capture, find_layers
from lcpaq.ir.errors import ConfigError, PassContractError
from lcpaq.ir.layers import is_quantizer
from lcpaq.ir.capture import get_attr
from lcpaq.ir.meta import QSPEC, QUANTIZED, SENSITIVITY, LayerQuantSpec, QuantSpec
from lcpaq.ir.qops import FakeQuantize
from lcpaq.passes import Pipeline
from lcpaq.tools.models import digits
from tests.conftest import make_ctx

PREPARE = "fold-bn,shape-prop,cost,quant-scheme,calibrate{method=minmax}"


def _prepared(model, x, target):
    gm = capture(model, (x[:1],))
    ctx = make_ctx(target, x[:1])
    return Pipeline.from_spec(PREPARE)(gm, ctx).graph_module, ctx


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


def test_16_bit_graph_matches_fp32(block, sim) -> None:
    x = torch.randn(8, 3, 8, 8)
    gm, ctx = _prepared(block, x, sim)
    Pipeline.from_spec("uniform{w=16,a=16},fake-quant")(gm, ctx)
    calibrated = torch.cat([b[0] for b in ctx.calib_batches])  # inside the ranges: no clipping
    with torch.no_grad():
        assert _sqnr(block(calibrated), gm(calibrated)) > 80.0


def test_quality_falls_with_bits(block, sim) -> None:
    x = torch.randn(8, 3, 8, 8)
    base, ctx = _prepared(block, x, sim)
    sqnr = {}
    for w in (8, 4, 2):
        gm = copy.deepcopy(base)
        Pipeline.from_spec(f"uniform{{w={w},a=8}},fake-quant")(gm, ctx)
        with torch.no_grad():
            sqnr[w] = _sqnr(block(x), gm(x))
    assert sqnr[8] > sqnr[4] > sqnr[2]


def test_quantizers_inserted_and_shared(block, x86) -> None:
    x = torch.randn(4, 3, 8, 8)
    gm, ctx = _prepared(block, x, x86)
    result = Pipeline.from_spec("uniform,fake-quant")(gm, ctx)
    assert result.modified
    quantizers = [n for n in gm.graph.nodes if is_quantizer(n)]
    # 4 weights + 2 distinct activations (x read by c1, c2; pooled vector read by fc, fc2)
    assert len(quantizers) == 6
    layers = find_layers(gm)
    assert [layer.name for layer in layers] == ["c1", "c2", "fc", "fc2"]  # view sees through quantizers
    infos = [QUANTIZED.get(layer.node) for layer in layers]
    assert infos[0].a_quantizers == infos[1].a_quantizers


def test_fake_quant_is_idempotent(block, x86) -> None:
    x = torch.randn(4, 3, 8, 8)
    gm, ctx = _prepared(block, x, x86)
    Pipeline.from_spec("uniform,fake-quant")(gm, ctx)
    code = gm.code
    assert not Pipeline.from_spec("fake-quant")(gm, ctx).modified
    assert gm.code == code


def test_float_layers_left_alone(block, x86) -> None:
    x = torch.randn(4, 3, 8, 8)
    gm, ctx = _prepared(block, x, x86)
    Pipeline.from_spec("uniform")(gm, ctx)
    for layer in find_layers(gm):
        QSPEC.set(layer.node, LayerQuantSpec(None, None))
    Pipeline.from_spec("fake-quant")(gm, ctx)
    assert not any(is_quantizer(n) for n in gm.graph.nodes)
    with torch.no_grad():
        assert torch.allclose(gm(x), block(x), atol=1e-5)


def test_target_refuses_precision_it_lacks(block, x86) -> None:
    x = torch.randn(4, 3, 8, 8)
    gm, ctx = _prepared(block, x, x86)
    with pytest.raises(ConfigError, match=r"target 'x86-host' has no 4-bit activations; it offers 8, 16 \(or 32 = float\)"):
        Pipeline.from_spec("uniform{w=8,a=4}")(gm, ctx)


def test_w8a8_keeps_digits_accuracy(x86) -> None:
    model = digits.trained_model()
    data = digits.load_data()
    gm, ctx = _prepared(model, data.x_train[:256], x86)
    fp32 = digits.accuracy(model, data.x_test, data.y_test)
    assert fp32 > 0.97
    Pipeline.from_spec("uniform{w=8,a=8},fake-quant")(gm, ctx)
    assert digits.accuracy(gm, data.x_test, data.y_test) >= fp32 - 0.01


def _quantizers(gm) -> dict[str, FakeQuantize]:
    return {name.removeprefix("lcpaq_quant."): m for name, m in gm.named_modules() if isinstance(m, FakeQuantize)}


@pytest.mark.parametrize(("scheme", "w_axis", "a_symmetric"), [
    ("quant-scheme", 0, False),
    ("quant-scheme{weight_granularity=per-tensor,act_symmetric=true}", None, True),
])
def test_golden_quantizers_follow_the_scheme(block, sim, scheme: str, w_axis, a_symmetric: bool) -> None:
    """Every inserted quantizer, by hand: W4 on the four weights (one scale per output channel,
    amax / 7, or one for the whole tensor), A8 on the two distinct activations."""
    x = torch.randn(4, 3, 8, 8)
    gm = capture(block, (x[:1],))
    ctx = make_ctx(sim, x[:1])
    spec = f"fold-bn,shape-prop,cost,{scheme},calibrate,uniform{{w=4,a=8}},fake-quant"
    gm = Pipeline.from_spec(spec)(gm, ctx).graph_module
    quantizers = _quantizers(gm)
    assert sorted(quantizers) == ["c1_a0", "c1_w", "c2_w", "fc2_w", "fc_a0", "fc_w"]
    for layer in find_layers(gm):
        fq = quantizers[f"{layer.name}_w"]
        assert fq.spec == QuantSpec(4, symmetric=True, ch_axis=w_axis)
        assert fq.spec.dtype == "int4"
        weight = get_attr(gm, str(layer.weight.target))
        flat = weight.detach().reshape(weight.shape[0], -1)
        amax = flat.abs().amax(1) if w_axis == 0 else flat.abs().max()
        assert torch.allclose(fq.scale, amax / 7) and torch.all(fq.zero_point == 0)
    for name, layer in (("c1_a0", "c1"), ("fc_a0", "fc")):
        fq = quantizers[name]
        assert fq.spec == QuantSpec(8, symmetric=a_symmetric) and fq.spec.dtype == ("int8" if a_symmetric else "uint8")
        node = next(n for n in find_layers(gm) if n.name == layer).node
        assert QSPEC.get(node).act == fq.spec  # exactly the layer's spec, nothing else
    specs = {layer.name: QSPEC.get(layer.node) for layer in find_layers(gm)}
    assert {str(s) for s in specs.values()} == {"W4A8"}


def test_a_spec_without_the_scheme_names_the_pass_to_run(block, sim) -> None:
    x = torch.randn(4, 3, 8, 8)
    gm = capture(block, (x[:1],))
    with pytest.raises(PassContractError, match=r"pass 'uniform' needs 'lcpaq.quant_scheme'.*\(quant-scheme\)$"):
        Pipeline.from_spec("fold-bn,shape-prop,cost,calibrate,uniform,fake-quant")(gm, make_ctx(sim, x[:1]))


@pytest.mark.parametrize("scheme", ["quant-scheme", "quant-scheme{weight_granularity=per-tensor,act_symmetric=true}"])
def test_hessian_prices_the_quantizers_fake_quant_inserts(sim, scheme: str) -> None:
    """sensitivity = tr(H) / n x ||Q(X) - X||^2: recovering ||Q(X) - X||^2 from the hessian's
    annotation must give the error of the very quantizer inserted, for weights and activations
    (it would not if the two used different granularity or symmetry)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    x = torch.randn(32, 6)
    ctx = make_ctx(sim, x[:1], n_batches=2, batch=16)
    gm = capture(model, (x[:1],))
    spec = f"shape-prop,cost,{scheme},calibrate,hessian{{probes=8}},uniform{{w=3,a=4}}"
    gm = Pipeline.from_spec(spec)(gm, ctx).graph_module
    sens = {layer.name: SENSITIVITY.get(layer.node) for layer in find_layers(gm)}
    inputs = {layer.name: layer.act_inputs[0].name for layer in find_layers(gm)}
    from lcpaq.passes.sensitivity_terms import collect_activations

    values = collect_activations(gm, list(inputs.values()), ctx.batches()[:2])
    Pipeline.from_spec("fake-quant")(gm, ctx)
    quantizers = _quantizers(gm)
    for layer in find_layers(gm):
        s, label = sens[layer.name], layer.name.replace(".", "_")
        weight = get_attr(gm, str(layer.weight.target)).detach()
        fq = quantizers[f"{label}_w"]
        inserted = float(((fq(weight) - weight) ** 2).sum())
        assert dict(s.weight)[3] * weight.numel() / s.weight_trace == pytest.approx(inserted, rel=1e-5)
        fa = quantizers[f"{label}_a0"]
        vs = values[inputs[layer.name]]
        inserted = sum(float(((fa(v) - v) ** 2).sum()) for v in vs) / len(vs)
        numel = vs[0].numel()
        assert dict(s.act)[4] * numel / s.act_trace == pytest.approx(inserted, rel=1e-5)
