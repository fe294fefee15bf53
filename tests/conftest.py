"""Shared fixtures. Every random generator is seeded."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lcpaq.hw_targets import load_target  # noqa: E402
from lcpaq.passes import PassContext  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests share one cache (so the digits model trains once) apart from the user's."""
    if "LCPAQ_CACHE_DIR" not in os.environ:
        os.environ["LCPAQ_CACHE_DIR"] = str(tmp_path_factory.mktemp("lcpaq-cache"))


class ResidualBlock(nn.Module):
    """conv-bn-relu on one branch, a 1x1 conv on the other, summed; then two linears that
    read the same pooled vector. Small, and it has every structure the IR groups by."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)
        self.fc2 = nn.Linear(8, 4)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 2)
            self.bn.bias.uniform_(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.c1(x))) + self.c2(x)
        z = y.mean((2, 3))
        return self.fc(z) + self.fc2(z)


@pytest.fixture
def block() -> ResidualBlock:
    return ResidualBlock().eval()


@pytest.fixture
def x86():
    return load_target("x86-host")


@pytest.fixture
def sim():
    return load_target("sim")


def make_ctx(target, example: torch.Tensor, n_batches: int = 3, batch: int = 4) -> PassContext:
    gen = torch.Generator().manual_seed(1)
    batches = tuple((torch.randn(batch, *example.shape[1:], generator=gen),) for _ in range(n_batches))
    return PassContext(target, (example,), batches)
