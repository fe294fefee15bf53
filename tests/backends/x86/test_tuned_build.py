"""A MetaSchedule-tuned build in the default suite: one conv tuned for 2 trials, the tuned
schedule forced into the build (the build otherwise keeps whichever of tuned and hand runs
faster), bit-exact against the integer reference; its records land in the tuning cache."""
from __future__ import annotations

import numpy as np
import torch

import lcpaq.backends.x86.backend as x86_backend
from lcpaq.backends.common.build import build_model
from lcpaq.hw_targets import load_target
from lcpaq.ir.metrics import first_output
from tests.backends._nets import quantized


class _OneConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(16, 32, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def test_tuned_build_is_bit_exact(monkeypatch, session_cache_dir) -> None:
    monkeypatch.setattr(x86_backend, "faster_schedule", lambda candidates, time_ms: (candidates[0], []))  # the tuned one
    x = torch.randn(4, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    gm = quantized(_OneConv(), x)
    built = build_model(gm, (x[:1],), load_target("x86-host"), trials=2)
    assert built.schedule_choices == {"conv-16x8x8-o32-k3s1p1-int8-i32": "tuned"}
    assert "vpdpbusd" in built.asm
    with torch.no_grad():
        ref = first_output(built.integer_graph(x[:1])).numpy()
    assert np.array_equal(built.run(x[:1]), ref)
    assert any(session_cache_dir.rglob("*.json"))  # the tuning records are cached for the next build
