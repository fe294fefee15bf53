"""Per-layer timing on an Arm board over RPC: every layer gets positive entries at the
precisions the target computes; an emulated board is refused for a latency table unless the
caller asks to check the mechanics, and the table then says it was emulated."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lcpaq.backends.common.profile import profile_model
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.remote import RemoteDevice
from lcpaq.ir import capture
from lcpaq.ir.errors import ConfigError
from lcpaq.passes.pipeline import Pipeline, prepare_phase
from tests.conftest import make_ctx


class _Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.grouped(torch.relu(self.dw(torch.relu(self.conv(x)))))
        return self.fc(y.mean((2, 3)))


def test_layers_are_timed_on_the_board_and_emulation_is_said(arm_board: str) -> None:
    target = load_target("arm-a76").reached_over(RemoteDevice(rpc=arm_board))
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = make_ctx(target, x)
    gm = Pipeline(prepare_phase(target))(capture(_Layers().eval(), (x,)), ctx).graph_module
    with pytest.raises(ConfigError, match="is emulated .*lcpaq writes none into a latency table; profile on a real board"):
        profile_model(gm, target, progress=False)
    table = profile_model(gm, target, progress=False, repeats=2, number=1, allow_emulated=True)
    assert set(table.entries) == {"conv", "dw", "grouped", "fc"}
    assert all(v > 0 for row in table.entries.values() for v in row.values())
    assert {k for k, row in table.entries.items() if "w8a8" in row} == {"conv", "dw", "grouped", "fc"}
    assert table.entries["grouped"]["w8a8"] == table.entries["grouped"]["fp32"]  # no Arm kernel: its fp32 time
    assert table.notes[0].startswith("EMULATED (qemu-aarch64") and any("grouped" in n for n in table.notes)
