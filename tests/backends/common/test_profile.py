import pytest
import torch
import tvm
from torch import nn

from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.backends.common import profile as profile_module
from lcpaq.backends.common.profile import fit_model_time, precision_keys, profile_model
from lcpaq.hw_targets import load_target
from lcpaq.ir.capture import capture
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import BitAssignment
from lcpaq.passes import PassContext
from lcpaq.passes.cost_model import assignment_of
from lcpaq.passes.pipeline import Pipeline, prepare_phase

X86 = load_target("x86-host")
X86_TOML = open(X86.source).read()
from tests.conftest import unimplemented_target


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
    assert precision_keys(X86, "conv") == ["fp32", "w16a16", "w16a8", "w8a16", "w8a8"]  # 2-7 bit weights are storage-only
    assert precision_keys(X86, "matmul") == ["fp32", "w16a16", "w8a8"]
    assert precision_keys(X86, "embedding") == ["fp32", "w16a32", "w8a32"]
    sim = load_target("sim")
    assert precision_keys(sim, "matmul") == ["fp32", *sorted(f"w{b}a{b}" for b in (2, 3, 4, 5, 6, 7, 8, 16))]


def test_refuses_targets_that_cannot_run_here(tmp_path) -> None:
    gm = _costed(Tiny(), torch.randn(1, 64, 28, 28))
    with pytest.raises(ConfigError, match="needs backend 'npu-magic', which is not implemented"):
        profile_model(gm, unimplemented_target(tmp_path), progress=False)
    with pytest.raises(ConfigError, match="this machine has no CUDA GPU"):
        profile_model(gm, load_target("nvidia-sm90"), progress=False)
    with pytest.raises(ConfigError, match="target 'arm-a76' runs on a board reached over RPC: give --rpc HOST:PORT"):
        profile_model(gm, load_target("arm-a76"), progress=False)
    odd = tmp_path / "x86-odd.toml"  # an x86 target whose CPU feature no real CPU has
    odd.write_text(X86_TOML.replace('requires = ["avx512f", "avx512_vnni"]', 'requires = ["avx512f", "lcpaq_no_such_flag"]'))
    with pytest.raises(ConfigError, match=r"target 'x86-host' cannot run on this machine: this host lacks lcpaq_no_such_flag"):
        profile_model(gm, load_target(str(odd)), progress=False)


def test_tiny_model_has_every_layer_and_precision(tmp_path) -> None:
    gm = _costed(Tiny(), torch.randn(1, 64, 28, 28))
    table = profile_model(gm, X86, model_name="tiny", repeats=3, number=2, progress=False)
    assert set(table.entries) == {"conv", "dw", "fc"}
    for name, kind in (("conv", "conv"), ("dw", "conv"), ("fc", "linear")):
        row = table.entries[name]
        assert sorted(row) == ["fp32", "w16a16", "w16a8", "w8a16", "w8a8"]
    # The 64->64 3x3 conv: int8 on VNNI does 4x the MACs per instruction of fp32 FMA: faster;
    # int16 pairs do half the int8 work per instruction, and both sides at 16 bits take two passes.
    conv = table.entries["conv"]
    assert conv["w8a8"] < conv["w8a16"] < conv["w16a16"] and conv["w16a8"] < conv["w16a16"]
    assert conv["w8a16"] < conv["fp32"] and conv["w16a8"] < conv["fp32"]
    # The depthwise conv has no 16-bit kernel: its 16-bit entries are its fp32 time, noted.
    assert table.entries["dw"]["w16a16"] == table.entries["dw"]["fp32"]
    assert any(n.startswith("no kernel for w16a16, w16a8, w8a16") for n in table.notes)
    # The depthwise conv: w8a8 on the AVX-512 depthwise kernel, fp32 its torch time; noted.
    assert any("depthwise" in n and "dw" in n for n in table.notes)
    # Storage-only weights are charged the int8 entry.
    assert table.seconds("conv", BitAssignment(4, 8)) == table.entries["conv"]["w8a8"]
    assert (table.target, table.model, table.tvm_version) == ("x86-host", "tiny", tvm.__version__)
    assert table.device.startswith(open("/proc/cpuinfo").read().split("model name")[1].split(":", 1)[1].splitlines()[0].strip())
    path = tmp_path / "t.json"
    table.save(path)
    assert LatencyTable.load(path, X86) == table


@pytest.mark.slow
def test_tuned_profile_records_and_reuses_tuning_database(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LCPAQ_CACHE_DIR", str(tmp_path / "cache"))
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 16))
    gm = _costed(model, torch.randn(1, 16, 8, 8))
    first = profile_model(gm, X86, "tuned", trials=4, repeats=3, progress=False)
    databases = sorted((tmp_path / "cache" / "tuning").glob("*/*/database_tuning_record.json"))
    assert len(databases) == 4  # conv and dense, int8 and fp32
    stamps = [p.stat().st_mtime_ns for p in databases]
    second = profile_model(gm, X86, "tuned", trials=4, repeats=3, progress=False)
    assert [p.stat().st_mtime_ns for p in databases] == stamps  # reused, not tuned again
    assert set(first.entries) == set(second.entries) == {"0", "3"}
    assert first.trials == 4 and sorted(second.entries["0"]) == ["fp32", "w8a8"]


def test_grouped_conv_is_timed_on_its_int8_kernel() -> None:
    """A ResNeXt-style grouped conv (32 groups of 4 channels) gets a w8a8 time of its own kernel."""
    model = nn.Sequential(nn.Conv2d(128, 128, 3, padding=1, groups=32), nn.ReLU(), nn.Conv2d(128, 128, 1))
    gm = _costed(model, torch.randn(1, 128, 14, 14))
    table = profile_model(gm, X86, model_name="grouped", repeats=3, number=2, progress=False)
    row = table.entries["0"]
    assert sorted(row) == ["fp32", "w16a16", "w16a8", "w8a16", "w8a8"] and row["w8a8"] > 0
    assert row["w16a16"] == row["fp32"]  # no 16-bit grouped kernel: the build runs it in float
    assert any(n.startswith("grouped convs: w8a8 on the windowed VNNI conv") and n.endswith(": 0") for n in table.notes)


def test_model_time_fit_reproduces_both_whole_builds(monkeypatch) -> None:
    """Two whole builds (W8A8, fp32) fit fixed_seconds and layer_scale exactly, whatever their sign."""
    example = torch.randn(1, 64, 28, 28)
    gm = _costed(Tiny(), example)
    ctx = PassContext(X86, (example,))
    table = profile_model(gm, X86, model_name="tiny", repeats=3, number=2, progress=False)
    whole: dict[int, float] = {}
    graphs: dict[int, object] = {}

    def recorded(gm, c, trials):
        bits = 32 if all(b.w_bits == 32 for b in assignment_of(gm).values()) else 8
        graphs[bits] = gm
        whole[bits] = {8: 0.5, 32: 0.8}[bits] * table.total(assignment_of(gm))  # layers faster in the model
        return whole[bits]

    monkeypatch.setattr(profile_module, "_whole_seconds", recorded)
    fitted = fit_model_time(table, gm, ctx, 0)
    assert set(whole) == {8, 32}
    for bits in (8, 32):
        assert fitted.total(assignment_of(graphs[bits])) == pytest.approx(whole[bits], rel=1e-3)
    assert fitted.layer_scale > 0.8 and fitted.fixed_seconds < 0  # no clamping
    assert "both configurations reproduced by construction" in fitted.notes[-1]
    one_point = fit_model_time(table, gm, ctx, 0, whole=2e-3)
    assert one_point.layer_scale == 1.0
    assert one_point.total(assignment_of(graphs[8])) == pytest.approx(2e-3, rel=1e-3)
