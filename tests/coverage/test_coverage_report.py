"""The coverage report: its measures against hand-computed values, and a run that records a
failing model and goes on to the next."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lcpaq.backends.common.backend import backend_for
from lcpaq.backends.common.integerize import integerize
from lcpaq.hw_targets import load_target
from lcpaq.tools import coverage_report as cov
from tests.backends._nets import mixed, quantized

CONV_MACS = 8 * 8 * 8 * 3 * 9  # 8x8 output, 8 channels, 3 inputs, 3x3 kernel
FC_MACS = 8 * 4


class _Net(nn.Module):
    """A 3x3 conv (3 -> 8) on 8x8 inputs, ReLU, mean over H, W, a linear 8 -> 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def net_input() -> torch.Tensor:
    return torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("float_layers, fraction", [(0, 1.0), (1, FC_MACS / (CONV_MACS + FC_MACS)), (2, 0.0)])
def test_integer_mac_fraction_counts_layers_on_integer_kernels(net_input, float_layers, fraction) -> None:
    torch.manual_seed(0)
    gm = mixed(_Net(), net_input, float_layers)  # the first `float_layers` layers left in float
    ig = integerize(gm, backend_for(load_target("x86-host")).conventions)
    assert cov.integer_mac_fraction(gm, ig) == pytest.approx(fraction, rel=1e-12)
    expected_float = {0: [], 1: ["conv2d.default", "mean.dim", "relu.default"]}.get(float_layers)
    if expected_float is not None:
        assert cov.float_ops(ig) == expected_float


def test_midpoint_budgets_lie_halfway_between_4_and_8_bit_weights(net_input) -> None:
    torch.manual_seed(0)
    budgets = cov.midpoint_budgets(quantized(_Net(), net_input))
    # size: int8 weights 216 + 32 bytes, int32 biases (8 + 4) * 4 = 296; 4-bit weights: 108 + 16 + 48 = 172
    assert budgets["size"] == ("size=234B", 234.0, 296.0)
    # BOPs: MACs x 8 x 8 = 886784 at W8A8, MACs x 4 x 8 = 443392 at W4A8
    w8 = (CONV_MACS + FC_MACS) * 64
    assert budgets["bops"] == (f"bops={(w8 + w8 // 2) // 2}", float((w8 + w8 // 2) // 2), float(w8))


class _DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


class _Frac(nn.Module):
    """A float op that neither lcpaq nor TVM's frontend lowers (frac), between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.frac(self.c1(x)))


def _broken():
    torch.manual_seed(0)
    return _DataDependent().eval(), (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)),)


def _unlowerable():
    torch.manual_seed(0)
    return _Frac().eval(), (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)),)


def test_report_records_a_failure_and_goes_on(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(cov.COVERAGE_MODELS, "broken", _broken)
    monkeypatch.setitem(cov.COVERAGE_MODELS, "frac", _unlowerable)
    report = cov.run(["broken", "frac", "shared"], load_target("x86-host"), repeats=2)
    broken, frac, shared = report["models"]
    assert broken["steps"]["captured"] is False and broken["failures"]["captured"].startswith("CaptureError: ")
    assert "\n" not in broken["failures"]["captured"]
    assert [s for s, ok in frac["steps"].items() if ok] == ["captured", "uniform", "size", "bops"]
    assert frac["failures"] == {"built": frac["failures"]["built"]} and "no TVM lowering for frac" in frac["failures"]["built"]
    assert shared["failures"] == {} and all(shared["steps"][s] for s in cov.STEPS)
    assert shared["bit_exact"] == "exact" and shared["integer_mac_fraction"] == 1.0
    assert shared["cosine_vs_fp32"] >= cov.COSINE_BOUND
    assert shared["latency_w8a8_ms"] > 0 and shared["latency_fp32_ms"] > 0
    assert report["passing"] == 1
    md, js = cov.write(report, tmp_path)
    assert json.loads(js.read_text())["models"][2]["model"] == "shared"
    text = md.read_text()
    assert f"Device: {cov.cpu_model()}" in text
    assert "| shared | yes | yes | yes | yes | yes | exact | " in text
    assert f"- broken, captured: {broken['failures']['captured']}" in text


def test_cpu_model_is_the_one_proc_cpuinfo_names() -> None:
    with open("/proc/cpuinfo") as f:
        names = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
    assert cov.cpu_model() in names


def test_unknown_model_is_one_line_and_writes_nothing(tmp_path, capsys) -> None:
    assert cov.main(["--models", "alexnet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown coverage model(s) alexnet; choose from resnet" in err
    assert not (tmp_path / "out").exists()
