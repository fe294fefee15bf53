"""Forms of layers written outside the project (ViT, RMSNorm, MobileNetV3, ResNeXt, ConvNeXt,
dilated and grouped float convs) build for x86-host: all-integer builds are bit-exact against the
integer reference, float parts equal it up to float rounding, and every node that runs in float
is recorded with its reason."""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch import nn

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.build import build_model
from lcpaq.hw_targets import load_target
from lcpaq.ir.metrics import first_output
from tests.backends._nets import TinyResNet, mixed, quantized, sqnr


def _build(gm, x: torch.Tensor):
    built = build_model(gm, (x[:1],), load_target("x86-host"))
    with torch.no_grad():
        ref = first_output(built.integer_graph(x[:1])).numpy()
    return built, built.run(x[:1]), ref


def _ops(built) -> list:
    return [n.target for n in built.integer_graph.graph.nodes if n.op == "call_function"]


def _float_compute(built) -> list:
    """Integer-graph ops computed in float (integerize marks each with its reason)."""
    return [n.target for n in built.integer_graph.graph.nodes if iops.FLOAT_REASON in n.meta]


def _close_to_reference(y: np.ndarray, ref: np.ndarray) -> None:
    """Float glue (TVM's rsqrt, GELU...) rounds differently from torch and may flip a code at the
    next requantization: almost every element equal, none off by more than a few codes."""
    assert np.mean(np.abs(y - ref) > 1e-5) < 0.05 and np.abs(y - ref).max() < 0.05 * np.abs(ref).max()


class _PosEmbed(nn.Module):
    """ViT tokens: a linear embedding plus a learned position embedding (an nn.Parameter used as
    an operand), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Linear(16, 32), nn.Linear(32, 10)
        self.pos = nn.Parameter(torch.randn(1, 8, 32) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x) + self.pos)


def test_parameter_used_as_an_operand_is_a_constant() -> None:
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(1))
    model = _PosEmbed().eval()
    built, y, ref = _build(quantized(model, x), x)
    assert _float_compute(built) == [torch.ops.aten.add.Tensor]  # the add of a float constant
    assert np.array_equal(y, ref)  # a float32 add rounds alike in TVM and torch
    with torch.no_grad():
        assert sqnr(model(x[:1]), torch.from_numpy(y)) > 25.0
    assert "float operand" in built.float_fallbacks["add"]


class _RMSNorm(nn.Module):
    """linear, RMSNorm (mean over the last dim), linear: the norm in float between int8 layers."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)
        self.g = nn.Parameter(torch.rand(32) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * self.g
        return self.b(y)


def test_mean_over_the_last_dim_falls_back_to_the_frontend() -> None:
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(2))
    model = _RMSNorm().eval()
    built, y, ref = _build(quantized(model, x), x)
    _close_to_reference(y, ref)
    with torch.no_grad():
        assert sqnr(model(x[:1]), torch.from_numpy(y)) > 20.0
    assert built.float_fallbacks["mean"].endswith("TVM frontend converter (x86 lowers means over H, W of 4-d values only (dims [-1]))")


class _MobileV3(nn.Module):
    """Expand to 72 channels, hardswish (float), 3x3 depthwise on the 72 channels, project."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(8, 72, 1)
        self.dw = nn.Conv2d(72, 72, 3, padding=1, groups=72)
        self.project = nn.Conv2d(72, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.relu(self.dw(nn.functional.hardswish(self.expand(x)))))


def test_depthwise_after_a_float_op_pads_channels() -> None:
    x = torch.randn(4, 8, 10, 10, generator=torch.Generator().manual_seed(3))
    model = _MobileV3().eval()
    built, y, ref = _build(quantized(model, x), x)
    _close_to_reference(y, ref)
    with torch.no_grad():
        assert sqnr(model(x[:1]), torch.from_numpy(y)) > 25.0


def test_depthwise_on_72_channel_codes_is_bit_exact() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dw1 = nn.Conv2d(72, 72, 3, padding=1, groups=72)
            self.dw2 = nn.Conv2d(72, 72, 3, stride=2, padding=1, groups=72)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # quantize -> depthwise; quantize -> max pool -> depthwise
            return self.dw1(x) + nn.functional.interpolate(self.dw2(nn.functional.max_pool2d(x, 2)), scale_factor=4)

    x = torch.randn(4, 72, 8, 8, generator=torch.Generator().manual_seed(4))
    built, y, ref = _build(quantized(Net().eval(), x), x)
    assert sum(t is iops.qconv2d for t in _ops(built)) == 2
    assert np.array_equal(y, ref)


class _ResNeXt(nn.Module):
    """Stem, then a ResNeXt block: 1x1 reduce, 3x3 grouped conv, 1x1 expand, residual add."""

    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.reduce = nn.Conv2d(64, width, 1)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=groups)
        self.expand = nn.Conv2d(width, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = torch.relu(self.grouped(torch.relu(self.reduce(x))))
        y = torch.relu(self.expand(y) + x)
        return self.fc(y.mean((2, 3)))


def test_grouped_convs_are_integer_and_bit_exact() -> None:
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    for width, groups in ((128, 32), (64, 4), (48, 3)):  # 4, 16 and 16 channels a group
        torch.manual_seed(0)
        model = _ResNeXt(width, groups).eval()
        built, y, ref = _build(quantized(model, x), x)
        assert _float_compute(built) == [] and built.float_fallbacks == {}
        grouped = [n for n in built.integer_graph.graph.nodes if n.target is iops.qconv2d and n.kwargs["groups"] == groups]
        assert len(grouped) == 1
        assert np.array_equal(y, ref)
        with torch.no_grad():
            assert sqnr(model(x[:1]), torch.from_numpy(y)) > 20.0


class _OddConvs(nn.Module):
    """Dilated, non-square (per-axis padding) and grouped convs."""

    def __init__(self) -> None:
        super().__init__()
        self.dilated = nn.Conv2d(3, 8, 3, padding=2, dilation=2)
        self.wide = nn.Conv2d(8, 8, (1, 3), padding=(0, 1))
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grouped(torch.relu(self.wide(torch.relu(self.dilated(x)))))


def test_float_convs_of_other_forms_fall_back_to_the_frontend() -> None:
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    model = _OddConvs().eval()
    built, y, ref = _build(mixed(model, x, float_layers=3), x)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x[:1]).numpy(), rtol=1e-4, atol=1e-5)
    for name in ("conv2d", "conv2d_1", "conv2d_2"):
        assert "TVM frontend converter (x86 fp32 conv kernel takes groups=1, undilated, square convs" in built.float_fallbacks[name]
    assert "dilation=2" in built.float_fallbacks["conv2d"] and "groups=2" in built.float_fallbacks["conv2d_2"]


def test_quantized_conv_without_integer_form_runs_in_float() -> None:
    """w8a8 everywhere: the dilated and per-axis-padded convs run in float on fake-quantized
    weights; the grouped one is int8."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    model = _OddConvs().eval()
    built, y, ref = _build(quantized(model, x), x)
    assert [n.kwargs["groups"] for n in built.integer_graph.graph.nodes if n.target is iops.qconv2d] == [2]
    _close_to_reference(y, ref)
    assert built.float_fallbacks["conv2d"].startswith("dilated conv (dilation=2); TVM frontend converter")
    assert built.float_fallbacks["conv2d_1"].startswith("conv that is not 2-d, is transposed, or has per-axis")


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 24), nn.Linear(24, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_float_linear_on_3d_and_4d_inputs() -> None:
    for shape in ((4, 5, 16), (4, 3, 5, 16)):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
        model = _Tokens().eval()
        built, y, _ = _build(mixed(model, x, float_layers=2), x)
        with torch.no_grad():
            np.testing.assert_allclose(y, model(x[:1]).numpy(), rtol=1e-4, atol=1e-5)
        assert built.float_fallbacks["linear"] == "layer left in float by the assignment (no quantizer on its input or weight); x86-vnni float kernel"


class _ConvNeXtMLP(nn.Module):
    """conv, permute to channels last, linear over C, ReLU, linear, permute back, conv; and a
    linear straight on a conv output (over its last logical dim, W)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 8, 1)
        self.up, self.down, self.act = nn.Linear(12, 48), nn.Linear(48, 12), act
        self.over_w = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        z = self.down(self.act(self.up(y.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
        return self.out(z + y), self.over_w(y)


def test_linear_after_permute_to_channels_last() -> None:
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(8))
    for act in (nn.ReLU(), nn.GELU()):
        torch.manual_seed(0)
        model = _ConvNeXtMLP(act).eval()
        gm = quantized(model, x)
        built = build_model(gm, (x[:1],), load_target("x86-host"))
        assert sum(t is iops.qlinear for t in _ops(built)) == 3
        with torch.no_grad():
            refs, fp32 = built.integer_graph(x[:1]), model(x[:1])
        for y, ref, f in zip(built.run(x[:1]), refs, fp32):
            assert y.shape == tuple(f.shape)
            if isinstance(act, nn.ReLU):  # only permutes in float: exact data movement
                assert np.array_equal(y, ref.numpy())
            else:
                _close_to_reference(y, ref.numpy())
            assert sqnr(f, torch.from_numpy(y)) > 20.0


def test_float_nodes_are_recorded_with_their_reason() -> None:
    torch.manual_seed(0)
    model, x = TinyResNet().eval(), torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert _build(quantized(model, x), x)[0].float_fallbacks == {}  # all integer: nothing in float
    built = _build(mixed(model, x, float_layers=2), x)[0]
    assert built.float_fallbacks == {
        "conv2d": "layer left in float by the assignment (no quantizer on its input or weight); x86-vnni float kernel",
        "relu": "relu of float values (its input is not quantized); x86-vnni float kernel",
        "max_pool2d": "max_pool2d of float values (its input is not quantized); x86-vnni float kernel",
        "conv2d_1": "layer left in float by the assignment (no quantizer on its input or weight); x86-vnni float kernel",
        "relu_1": "relu of float values (its input is not quantized); x86-vnni float kernel",
    }


class _Rows(nn.Module):
    """Tokens folded into rows by a size computed from the batch (``B * T``), as attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.relu(self.a(x.reshape(x.shape[0] * x.shape[1], 16)))
        return self.b(rows).reshape(x.shape[0], x.shape[1], 8)


def test_sizes_computed_from_the_batch_are_static() -> None:
    x = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(10))
    model = _Rows().eval()
    gm = quantized(model, x)
    assert any(n.target is operator.mul for n in gm.graph.nodes)  # the capture keeps B * T symbolic
    built, y, ref = _build(gm, x)
    assert y.shape == (1, 6, 8) and np.array_equal(y, ref)


class _Recurrent(nn.Module):
    """A linear, an LSTM and a head on the last step (``out[:, -1]``: a select at index -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.lstm, self.head = nn.Linear(16, 32), nn.LSTM(32, 32, batch_first=True), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(torch.relu(self.proj(x)))[0][:, -1])


def test_select_at_a_negative_index() -> None:
    x = torch.randn(4, 12, 16, generator=torch.Generator().manual_seed(11))
    model = _Recurrent().eval()
    built, y, ref = _build(quantized(model, x), x)
    _close_to_reference(y, ref)
    with torch.no_grad():
        assert sqnr(model(x[:1]), torch.from_numpy(y)) > 20.0
    built, y, _ = _build(mixed(model, x, float_layers=2), x)  # all float: the model's numbers
    with torch.no_grad():
        np.testing.assert_allclose(y, model(x[:1]).numpy(), rtol=1e-4, atol=1e-5)
