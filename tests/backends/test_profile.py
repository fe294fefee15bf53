import pytest
import torch
from torch import nn

from lcpaq.backends.latency_table import LatencyTable
from lcpaq.backends.profile import precision_keys, profile_model
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.host import host_support
from lcpaq.ir.capture import capture
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import BitAssignment
from lcpaq.passes import PassContext
from lcpaq.passes.pipeline import Pipeline, prepare_phase

X86 = load_target("x86-host")
needs_vnni = pytest.mark.skipif(not host_support(X86).ok, reason="this host lacks AVX-512 VNNI")


class Tiny(nn.Module):
    """One 64->64 3x3 conv at 28x28, a depthwise conv (torch fallback) and a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 3, padding=1)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dw(torch.relu(self.conv(x))).mean((2, 3)))


def _costed(model: nn.Module, example: torch.Tensor):
    gm = capture(model.eval(), (example,))
    return Pipeline(prepare_phase(X86))(gm, PassContext(X86, (example,))).graph_module


def test_precision_keys_of_x86_host() -> None:
    assert precision_keys(X86, "conv") == ["fp32", "w16a16", "w16a8", "w8a16", "w8a8"]
    assert precision_keys(X86, "matmul") == ["fp32", "w16a16", "w8a8"]
    assert precision_keys(X86, "embedding") == ["fp32", "w16a32", "w8a32"]


def test_refuses_targets_that_are_not_this_host() -> None:
    gm = _costed(Tiny(), torch.randn(1, 64, 28, 28))
    with pytest.raises(ConfigError, match="not this machine"):
        profile_model(gm, load_target("arm-a76"), progress=False)


@needs_vnni
def test_tiny_model_has_every_layer_and_precision(tmp_path) -> None:
    gm = _costed(Tiny(), torch.randn(1, 64, 28, 28))
    table = profile_model(gm, X86, model_name="tiny", repeats=3, number=2, progress=False)
    assert set(table.entries) == {"conv", "dw", "fc"}
    for name, kind in (("conv", "conv"), ("dw", "conv"), ("fc", "linear")):
        row = table.entries[name]
        assert sorted(row) == sorted(precision_keys(X86, kind))
        assert all(s > 0 for s in row.values())
    # The depthwise conv: w8a8 on the AVX-512 depthwise kernel, fp32 (and int16) its torch time; noted.
    dw = table.entries["dw"]
    assert dw["w16a16"] == dw["fp32"] and dw["w8a8"] != dw["fp32"]
    assert any("depthwise" in n and "dw" in n for n in table.notes)
    # Storage-only weights are charged the int8 entry; int16 reuses fp32 (no kernel), as noted.
    assert table.seconds("conv", BitAssignment(4, 8)) == table.entries["conv"]["w8a8"]
    assert table.seconds("conv", BitAssignment(16, 16)) == table.entries["conv"]["fp32"]
    assert table.target == "x86-host" and table.tvm_version and table.device
    path = tmp_path / "t.json"
    table.save(path)
    assert LatencyTable.load(path, X86) == table


@pytest.mark.slow
@needs_vnni
def test_tuned_profile_records_and_reuses_tuning_database(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LCPAQ_CACHE_DIR", str(tmp_path / "cache"))
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 16))
    gm = _costed(model, torch.randn(1, 16, 8, 8))
    first = profile_model(gm, X86, "tuned", trials=4, repeats=3, progress=False)
    databases = sorted((tmp_path / "cache" / "tuning").glob("*/database_tuning_record.json"))
    assert len(databases) == 4  # conv and dense, int8 and fp32
    stamps = [p.stat().st_mtime_ns for p in databases]
    second = profile_model(gm, X86, "tuned", trials=4, repeats=3, progress=False)
    assert [p.stat().st_mtime_ns for p in databases] == stamps  # reused, not tuned again
    assert set(first.entries) == set(second.entries) == {"0", "3"}
    assert first.trials == 4 and all(s > 0 for row in second.entries.values() for s in row.values())
