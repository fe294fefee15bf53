"""The board's CPU decides what runs: the sdot instructions really execute (an emulated CPU
without the dot-product extension, Cortex-A53, dies with SIGILL, said in one line), and a second
Arm target written as data only (Neoverse V2: SVE2, i8mm) runs bit-exact on a CPU that has them."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from lcpaq.backends.common.build import build_model
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.remote import RemoteDevice
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.metrics import first_output
from lcpaq.tools import arm_board as board_tool
from tests.backends._nets import TinyResNet, quantized


@contextlib.contextmanager
def _second_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpu: str) -> Iterator[tuple[str, Path]]:
    """A board sharing the set-up board's root, with its own server on an emulated ``cpu``."""
    source, board = board_tool.board_dir(), tmp_path / cpu
    board.mkdir()
    shutil.copytree(source / "bin", board / "bin")
    shutil.copy(source / "board.json", board / "board.json")
    (board / "rootfs").symlink_to(source / "rootfs")
    monkeypatch.setenv("LCPAQ_ARM_BOARD_DIR", str(board))
    try:
        yield board_tool.start(cpu=cpu, say=lambda line: None), board
    finally:
        board_tool.stop(say=lambda line: None)


def _tiny(target: str) -> tuple[torch.fx.GraphModule, torch.Tensor]:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    return quantized(TinyResNet().eval(), x, target=target), x[:1]


def test_a_cpu_without_dotprod_dies_with_sigill(arm_board: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gm, x = _tiny("arm-a76")
    with _second_board(tmp_path, monkeypatch, "cortex-a53") as (address, board):
        built = build_model(gm, (x,), load_target("arm-a76").reached_over(RemoteDevice(rpc=address)))
        assert built.device.emulation == "qemu-aarch64 -cpu cortex-a53" and "sdot\tv" in built.asm
        with pytest.raises(ConfigError, match=r"the board's process died running the model: .*SIGILL"):
            built.run(x)
        assert "Illegal instruction" in (board / "server.log").read_text(errors="replace")


def test_a_target_of_the_family_written_as_data_runs_bit_exact(arm_board: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gm, x = _tiny("arm-neoverse-v2")
    with _second_board(tmp_path, monkeypatch, "max") as (address, _):
        built = build_model(gm, (x,), load_target("arm-neoverse-v2").reached_over(RemoteDevice(rpc=address)))
        assert built.target == "arm-neoverse-v2" and "sdot\tv" in built.asm
        with torch.no_grad():
            assert np.array_equal(built.run(x), first_output(built.integer_graph(x)).numpy())
