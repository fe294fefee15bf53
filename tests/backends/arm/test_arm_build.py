"""Whole models on the Arm backend: cross-compiled here (AArch64 ELF, sdot in the assembly) in
the default suite without a board, and run on the emulated board bit-exact against the integer
reference (MiniLM: integer glue bit-exact, its float mean pooling within float rounding)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lcpaq.backends.common.build import BuiltModel, build_model, load_library
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.remote import RemoteDevice
from lcpaq.ir.metrics import first_output
from lcpaq.tools.api import load_bundle, quantize
from tests.backends._nets import quantized

ARM = load_target("arm-a76")
EM_AARCH64 = 183  # ELF e_machine of AArch64


def _w8a8(name: str) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    bundle = load_bundle(name)
    result = quantize(model=bundle, target=ARM, bits="w8a8", build=False)
    return result.results[0].graph_module, [x[:1] for x in bundle.example_inputs]


@pytest.fixture(scope="module")
def resnet18() -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    return _w8a8("resnet18")


@pytest.fixture(scope="module")
def minilm() -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    return _w8a8("minilm")


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


@pytest.mark.parametrize("model", ["resnet18", "minilm"])
def test_models_cross_compile_to_aarch64_with_sdot(model: str, request, tmp_path: Path) -> None:
    gm, x = request.getfixturevalue(model)
    built = build_model(gm, x, ARM)
    assert built.device is None and "--rpc HOST:PORT" in built.not_run  # no board given: built only
    assert built.asm.count("sdot\tv") >= 8 and "vpdpbusd" not in built.asm
    assert _elf_machine(built.export(tmp_path / "model.so")) == EM_AARCH64
    with pytest.raises(Exception, match="not run: target 'arm-a76' runs on a board"):
        built.run(*x)


def _on_board(gm: torch.fx.GraphModule, x: list[torch.Tensor], address: str) -> tuple[BuiltModel, np.ndarray, np.ndarray]:
    built = build_model(gm, x, ARM.reached_over(RemoteDevice(rpc=address)))
    y = np.asarray(built.run(*x))
    with torch.no_grad():
        ref = first_output(built.integer_graph(*x)).numpy()
    return built, y, ref


def test_resnet18_is_bit_exact_on_the_board(resnet18, arm_board: str, tmp_path: Path) -> None:
    gm, x = resnet18
    built, y, ref = _on_board(gm, x, arm_board)
    assert built.device.emulation and built.device.emulation.startswith("qemu-aarch64")
    assert not built.float_fallbacks and np.array_equal(y, ref)
    # the exported library, uploaded as it is, computes the same
    loaded = load_library(built.export(tmp_path / "r18.so"), ARM.reached_over(RemoteDevice(rpc=arm_board)), [t.shape for t in x])
    assert np.array_equal(loaded.run(*x), y)


def test_mobilenetv2_depthwise_convs_are_bit_exact_on_the_board(arm_board: str) -> None:
    gm, x = _w8a8("mobilenetv2")
    built, y, ref = _on_board(gm, x, arm_board)
    assert not built.float_fallbacks and np.array_equal(y, ref)


def test_minilm_runs_on_the_board_with_integer_glue(minilm, arm_board: str) -> None:
    """Embeddings to the last layer norm in integers (bit-exact), the mean pooling after it in
    float32 (within its summation order's rounding)."""
    gm, x = minilm
    built, y, ref = _on_board(gm, x, arm_board)
    assert not any(op in built.float_fallbacks for op in ("layer_norm", "layer_norm_1", "softmax", "gelu", "embedding"))
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-6)


class _Grouped(nn.Module):
    """A grouped conv (no Arm kernel: float) between int8 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.g, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.g(torch.relu(self.a(x)))))


def test_a_layer_without_an_arm_kernel_stays_float_and_runs(arm_board: str) -> None:
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    gm = quantized(_Grouped(), x, "executable,uniform{w=8,a=8},fake-quant", target="arm-a76")
    built, y, ref = _on_board(gm, [x[:1]], arm_board)
    assert any("g" == n or n.startswith("conv") for n in built.float_fallbacks) or built.float_fallbacks
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)
