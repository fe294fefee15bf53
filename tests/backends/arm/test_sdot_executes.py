"""The sdot instructions really execute on the board: the same library on an emulated CPU
without the dot-product extension (Cortex-A53) dies with SIGILL, said in one line."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lcpaq.backends.common.build import build_model
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.remote import RemoteDevice
from lcpaq.ir.errors import ConfigError
from lcpaq.tools import arm_board as board_tool
from tests.backends._nets import TinyResNet, quantized


def test_a_cpu_without_dotprod_dies_with_sigill(arm_board: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second board (the set-up one's root, its own server) on an emulated Cortex-A53 (Armv8.0)."""
    source, board = board_tool.board_dir(), tmp_path / "a53"
    board.mkdir()
    shutil.copytree(source / "bin", board / "bin")
    shutil.copy(source / "board.json", board / "board.json")
    (board / "rootfs").symlink_to(source / "rootfs")
    monkeypatch.setenv("LCPAQ_ARM_BOARD_DIR", str(board))
    address = board_tool.start(cpu="cortex-a53", say=lambda line: None)
    try:
        x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        gm = quantized(TinyResNet().eval(), x, target="arm-a76")
        built = build_model(gm, (x[:1],), load_target("arm-a76").reached_over(RemoteDevice(rpc=address)))
        assert built.device.emulation == "qemu-aarch64 -cpu cortex-a53" and "sdot\tv" in built.asm
        with pytest.raises(ConfigError, match=r"the board's process died running the model: .*SIGILL"):
            built.run(x[:1])
        assert "Illegal instruction" in (board / "server.log").read_text(errors="replace")
    finally:
        board_tool.stop(say=lambda line: None)
