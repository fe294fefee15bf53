import time

import numpy as np
import pytest
import torch
from torch import nn

from lcpaq.backends.common.build import build_model, load_library
from lcpaq.backends.common.measure import measure_latency
from lcpaq.hw_targets import load_target
from lcpaq.ir.meta import DOMAIN
from lcpaq.ir.metrics import first_output
from lcpaq.ir.errors import ConfigError, CorruptFileError, LoweringError
from tests.conftest import unimplemented_target
from tests.backends._nets import (
    TinyBert, TinyEncoder, TinyMobile, TinyResNet, mixed, mixed_widths, quantized, quantized_bert, sqnr, tiny_bert_inputs,
)

SPECS = {
    "w8a8": "uniform{w=8,a=8},fake-quant",
    "w4a8 symmetric activations": "quant-scheme{act_symmetric=true},uniform{w=4,a=8},fake-quant",
    "w8a6 per-tensor weights": "quant-scheme{weight_granularity=per-tensor},uniform{w=8,a=6},fake-quant",  # quantized for 'sim'
}


@pytest.fixture(scope="module")
def model_and_input():
    torch.manual_seed(0)
    return TinyResNet().eval(), torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("label", list(SPECS))
def test_tvm_build_is_bit_exact_against_integer_reference(model_and_input, label) -> None:
    model, x = model_and_input
    gm = quantized(model, x, SPECS[label], target="sim" if "a6" in label else "x86-host")
    built = build_model(gm, (x[:1],), load_target("x86-host"))
    y = built.run(x[:1])
    with torch.no_grad():
        ref = first_output(built.integer_graph(x[:1])).numpy()
        fp32 = model(x[:1])
    assert np.array_equal(y, ref)
    assert sqnr(fp32, torch.from_numpy(y)) > (20.0 if label == "w8a8" else 10.0)


def test_depthwise_and_plain_residual_are_bit_exact() -> None:
    torch.manual_seed(0)
    model = TinyMobile().eval()
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    built = build_model(quantized(model, x), (x[:1],), load_target("x86-host"))
    with torch.no_grad():
        ref, fp32 = first_output(built.integer_graph(x[:1])).numpy(), model(x[:1])
    y = built.run(x[:1])
    assert np.array_equal(y, ref)
    assert sqnr(fp32, torch.from_numpy(y)) > 20.0


@pytest.mark.parametrize("float_layers", [2, 6])
def test_float_layers_run_on_fp32_kernels(model_and_input, float_layers) -> None:
    model, x = model_and_input
    built = build_model(mixed(model, x, float_layers), (x[:1],), load_target("x86-host"))
    with torch.no_grad():
        ref = first_output(built.integer_graph(x[:1])).numpy()
    y = built.run(x[:1])
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)  # float parts: equal up to float rounding
    if float_layers == 6:  # everything in float: the fp32 model itself
        with torch.no_grad():
            np.testing.assert_allclose(y, model(x[:1]).numpy(), rtol=1e-4, atol=1e-4)


def test_transformer_with_float_glue_from_tvm_frontend() -> None:
    """int8 linears (3-d inputs), float layer norm / softmax / GELU / matmul through TVM's frontend."""
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (4, 8), generator=gen)
    from lcpaq.ir import capture
    from lcpaq.passes import PassContext, Pipeline

    gm = capture(model, (ids[:1],))
    ctx = PassContext(load_target("x86-host"), (ids[:1],), tuple((torch.randint(0, 50, (4, 8), generator=gen),) for _ in range(3)))
    gm = Pipeline.from_spec("fold-bn,shape-prop,cost,quant-scheme,calibrate,uniform{w=8,a=8},fake-quant")(gm, ctx).graph_module
    built = build_model(gm, (ids[:1],), load_target("x86-host"), glue="float")
    assert "layer_norm" in built.float_fallbacks and "softmax" in built.float_fallbacks
    y = built.run(ids[:1])
    with torch.no_grad():
        ref = first_output(built.integer_graph(ids[:1])).numpy()
        fp32 = model(ids[:1])
    assert y.shape == (1, 8, 32)
    # float glue rounds differently from torch, and a code may flip at a requantization: close, not equal
    assert np.abs(y - ref).max() < 0.1 and np.mean(np.abs(y - ref) > 1e-3) < 0.05
    assert sqnr(fp32, torch.from_numpy(y)) > 15.0


def test_transformer_with_integer_glue_is_bit_exact() -> None:
    """A BERT-style layer: embeddings, layer norms, masked softmax and GELU on integer codes."""
    torch.manual_seed(0)
    model = TinyBert().eval()
    gm = quantized_bert(model)
    x = tiny_bert_inputs(4, seed=9)
    built = build_model(gm, x, load_target("x86-host"), batch=None)
    # float only where the mask and the position rows are made, before they become codes
    mask_and_positions = {"slice_1", "slice_2", "unsqueeze", "unsqueeze_1", "_assert_tensor_metadata_default", "to", "rsub", "mul"}
    assert set(built.float_fallbacks) == mask_and_positions, built.float_fallbacks
    with torch.no_grad():
        ref, fp32 = first_output(built.integer_graph(*x)).numpy(), model(*x)
    y = built.run(*x)
    np.testing.assert_array_equal(y, ref)
    assert sqnr(fp32, torch.from_numpy(y)) > 25.0


#: Layer widths a mixed-precision assignment on x86-host can give: every 8 / 16-bit pair, and
#: 4-bit weights with 16-bit activations (stored narrow, computed on the wide kernel).
WIDTH_CYCLE = [(8, 8), (8, 16), (16, 8), (16, 16), (4, 16)]


@pytest.mark.parametrize("net", [TinyResNet, TinyMobile])
def test_mixed_8_and_16_bit_layers_are_bit_exact(net) -> None:
    """Layers cycling through 8 and 16 bits: int16 and uint8 codes meet in requantizations and
    residual adds; 16-bit layers run on vpdpwssd, depthwise convs at 16 bits in float."""
    torch.manual_seed(0)
    model = net().eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    built = build_model(mixed_widths(model, x, WIDTH_CYCLE), (x[:1],), load_target("x86-host"))
    with torch.no_grad():
        ref, fp32 = first_output(built.integer_graph(x[:1])).numpy(), model(x[:1])
    y = built.run(x[:1])
    np.testing.assert_array_equal(y, ref)
    assert sqnr(fp32, torch.from_numpy(y)) > 20.0
    assert set(built.float_fallbacks) <= {"conv2d_2", "relu6_2", "conv2d_4", "relu6_3", "mean"}  # TinyMobile's 16-bit depthwise
    assert "vpdpwssd" in built.asm and "vpdpbusd" in built.asm


def test_transformer_with_16_bit_layers_and_integer_glue_is_bit_exact() -> None:
    torch.manual_seed(0)
    model = TinyBert().eval()
    x = tiny_bert_inputs(4, seed=9)
    built = build_model(quantized_bert(model, WIDTH_CYCLE), x, load_target("x86-host"), batch=None)
    with torch.no_grad():
        ref, fp32 = first_output(built.integer_graph(*x)).numpy(), model(*x)
    np.testing.assert_array_equal(built.run(*x), ref)
    assert sqnr(fp32, torch.from_numpy(ref)) > 30.0  # W8A8 gives 25 dB


def test_sixteen_bit_attention_matmuls_sum_in_int64_and_are_bit_exact() -> None:
    """Every layer at W16A16, attention's activation x activation matmuls too (int16 codes)."""
    from lcpaq.backends.common import integer_ops as iops
    from lcpaq.ir import capture
    from lcpaq.passes import PassContext, Pipeline
    from tests.backends._nets import PREPARE

    torch.manual_seed(0)
    model = TinyBert().eval()
    example = tiny_bert_inputs(1)
    ctx = PassContext(load_target("x86-host"), example, tuple(tiny_bert_inputs(4, seed=s) for s in range(3)))
    gm = Pipeline.from_spec(PREPARE + ",uniform{w=16,a=16},fake-quant")(capture(model, example), ctx).graph_module
    x = tiny_bert_inputs(4, seed=9)
    built = build_model(gm, x, load_target("x86-host"), batch=None)
    matmuls = [n for n in built.integer_graph.graph.nodes if n.target is iops.qmatmul]
    assert len(matmuls) == 2 and all(DOMAIN.get(n.args[0]).dtype == "int16" for n in matmuls)
    with torch.no_grad():
        ref, fp32 = first_output(built.integer_graph(*x)).numpy(), model(*x)
    np.testing.assert_array_equal(built.run(*x), ref)
    assert sqnr(fp32, torch.from_numpy(ref)) > 35.0


class _Scores(nn.Module):
    """Attention scores: two linears on [B, T, D] tokens, then q @ k^T (an activation x activation matmul)."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = nn.Linear(32, 32), nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x) @ self.k(x).transpose(-1, -2)


def test_activation_matmul_is_integer_and_bit_exact() -> None:
    from lcpaq.backends.common import integer_ops as iops

    x = torch.randn(4, 8, 32, generator=torch.Generator().manual_seed(4))
    model = _Scores().eval()
    built = build_model(quantized(model, x), (x[:1],), load_target("x86-host"))
    assert any(n.target is iops.qmatmul for n in built.integer_graph.graph.nodes)
    with torch.no_grad():
        ref, fp32 = first_output(built.integer_graph(x[:1])).numpy(), model(x[:1])
    y = built.run(x[:1])
    assert np.array_equal(y, ref)
    assert sqnr(fp32, torch.from_numpy(y)) > 25.0


def test_kernels_are_shared_and_conv_uses_vnni(model_and_input) -> None:
    model, x = model_and_input
    built = build_model(quantized(model, x), (x[:1],), load_target("x86-host"))
    # quantize, 5 convs (no two alike), max pool, add, global pool, requantize, dense, dequantize
    assert built.kernels == 12
    assert "vpdpbusd" in built.asm


def test_exported_library_loads_and_runs(model_and_input, tmp_path) -> None:
    model, x = model_and_input
    built = build_model(quantized(model, x), (x[:1],), load_target("x86-host"))
    path = built.export(tmp_path / "model.so")
    assert path.exists() and not list(tmp_path.glob(".model.so.*"))  # written atomically
    loaded = load_library(path, load_target("x86-host"), built.input_shapes)
    assert np.array_equal(loaded.run(x[:1]), built.run(x[:1]))
    lat = measure_latency(loaded, (x[:1],), repeats=3, number=2)
    assert (lat.repeats, lat.number) == (3, 2)
    args = loaded.inputs(x[:1])
    start = time.perf_counter()
    for _ in range(20):
        loaded.vm["main"](*args)
    per_call = (time.perf_counter() - start) / 20
    # TVM's evaluator times the same call without Python around it: not slower, same order
    assert per_call / 10 < lat.median < per_call * 1.5


def test_bad_library_and_input_shape_are_one_line_errors(model_and_input, tmp_path) -> None:
    model, x = model_and_input
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"not a library")
    with pytest.raises(CorruptFileError, match=str(bad)):
        load_library(bad, load_target("x86-host"), [(1, 3, 16, 16)])
    built = build_model(quantized(model, x), (x[:1],), load_target("x86-host"))
    with pytest.raises(ConfigError, match="built for input shape"):
        built.run(x[:2])


class _Frac(nn.Module):
    """A float op that neither lcpaq nor TVM's PyTorch frontend lowers (frac), between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 16, 3, padding=1), nn.Conv2d(16, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.frac(self.c1(x)))


class _Sigmoid(_Frac):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.sigmoid(self.c1(x)))


def test_op_without_lowering_is_named() -> None:
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(LoweringError, match="no TVM lowering for frac"):
        build_model(quantized(_Frac(), x), (x[:1],), load_target("x86-host"))


def test_float_op_between_int8_layers_goes_through_tvm_frontend() -> None:
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    model = _Sigmoid().eval()
    built = build_model(quantized(model, x), (x[:1],), load_target("x86-host"))
    with torch.no_grad():
        ref = first_output(built.integer_graph(x[:1])).numpy()
    assert np.abs(built.run(x[:1]) - ref).max() < 0.05


def test_targets_without_a_backend_here_are_refused(model_and_input) -> None:
    model, x = model_and_input
    gm = quantized(model, x)
    with pytest.raises(ConfigError, match="target 'npu-x' needs backend 'npu-magic', which is not implemented"):
        build_model(gm, (x[:1],), unimplemented_target())
    with pytest.raises(ConfigError, match="target 'sim' is simulation only"):
        build_model(gm, (x[:1],), load_target("sim"))
