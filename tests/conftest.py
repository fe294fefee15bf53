"""Shared fixtures. Every random generator is seeded.

The test session has its own cache directory (``LCPAQ_CACHE_DIR``, set in ``pytest_configure``,
before any test module is imported): tests never read or write the user's cache. Nothing is
copied into it, so the digits model (``lcpaq.tools.models.digits``, about 5 s) trains once per
session and later tests load it from there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from lcpaq.hw_targets import load_target  # noqa: E402
from lcpaq.passes import PassContext  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


_CACHE_ENV = "LCPAQ_CACHE_DIR"
_saved_cache_env: list[str | None] = []
_session_cache: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    """Point ``LCPAQ_CACHE_DIR`` at a fresh directory for the whole session (whatever it was)."""
    _saved_cache_env.append(os.environ.get(_CACHE_ENV))
    path = Path(tempfile.mkdtemp(prefix="lcpaq-test-cache-"))
    _session_cache.append(path)
    os.environ[_CACHE_ENV] = str(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_cache:
        shutil.rmtree(_session_cache.pop(), ignore_errors=True)
    if _saved_cache_env:
        before = _saved_cache_env.pop()
        if before is None:
            os.environ.pop(_CACHE_ENV, None)
        else:
            os.environ[_CACHE_ENV] = before


@pytest.fixture(autouse=True, scope="session")
def session_cache_dir() -> Path:
    """The session's cache directory; fails the session if lcpaq would use another one."""
    from lcpaq.ir.fileio import cache_dir

    path = _session_cache[-1]
    assert cache_dir() == path, f"lcpaq's cache is {cache_dir()}, not the session's {path}"
    return path


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


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in which nothing can be created: a read-only tmpfs mounted there as root (root
    ignores permissions), a mode-0555 directory otherwise; /sys (where only the kernel creates
    entries) if root cannot mount."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], capture_output=True).returncode == 0
    yield path if mounted else Path("/sys")
    if mounted:
        subprocess.run(["umount", str(path)], check=True)


NO_BOARD = "no emulated ARM board: run `make arm-board`"


@pytest.fixture(scope="session")
def arm_board() -> Iterator[str]:
    """``127.0.0.1:PORT`` of the emulated AArch64 board's TVM RPC server (``make arm-board``):
    started if it is set up but not running (and then stopped at the end of the session).
    Without a board the test is skipped with the command that sets it up, or fails where
    ``LCPAQ_REQUIRE_ARM_BOARD=1`` (CI)."""
    from lcpaq.tools.arm_board import board_for_session

    with board_for_session() as address:
        if address is None:
            if os.environ.get("LCPAQ_REQUIRE_ARM_BOARD") == "1":
                pytest.fail(f"{NO_BOARD} (LCPAQ_REQUIRE_ARM_BOARD=1)")
            pytest.skip(NO_BOARD)
        yield address


#: A target file of a family no backend implements (every built-in target's family is).
UNIMPLEMENTED_TOML = """name = "npu-x"
backend = "npu-magic"
description = "an accelerator no lcpaq backend builds for"
[precisions]
native_weight_bits = { conv = [8], linear = [8], matmul = [8] }
act_bits = [8]
"""


def unimplemented_target(tmp_dir: Path | None = None) -> "object":
    """The target of :data:`UNIMPLEMENTED_TOML` (written into ``tmp_dir``, or a new temporary folder)."""
    path = Path(tmp_dir or tempfile.mkdtemp()) / "npu-x.toml"
    path.write_text(UNIMPLEMENTED_TOML)
    return load_target(str(path))
