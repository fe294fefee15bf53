import copy

import pytest
import torch

from lcpaq.ir import capture, find_layers
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import is_quantizer
from lcpaq.ir.meta import BITS, QUANTIZED, BitAssignment
from lcpaq.passes import Pipeline
from lcpaq.tools.models import digits
from tests.conftest import make_ctx

PREPARE = "fold-bn,shape-prop,cost,calibrate{method=minmax}"


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
        BITS.set(layer.node, BitAssignment(32, 32))
    Pipeline.from_spec("fake-quant")(gm, ctx)
    assert not any(is_quantizer(n) for n in gm.graph.nodes)
    with torch.no_grad():
        assert torch.allclose(gm(x), block(x), atol=1e-5)


def test_target_refuses_precision_it_lacks(block, x86) -> None:
    x = torch.randn(4, 3, 8, 8)
    gm, ctx = _prepared(block, x, x86)
    with pytest.raises(ConfigError, match="target 'x86-host' has no 4-bit activations; it offers 8, 16"):
        Pipeline.from_spec("uniform{w=8,a=4}")(gm, ctx)


def test_w8a8_keeps_digits_accuracy(x86) -> None:
    model = digits.trained_model()
    data = digits.load_data()
    gm, ctx = _prepared(model, data.x_train[:256], x86)
    fp32 = digits.accuracy(model, data.x_test, data.y_test)
    assert fp32 > 0.97
    Pipeline.from_spec("uniform{w=8,a=8},fake-quant")(gm, ctx)
    assert digits.accuracy(gm, data.x_test, data.y_test) >= fp32 - 0.01
