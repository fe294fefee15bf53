"""The CUDA backend's lowering, checked bit-exact on this CPU: its Relax module (the implicit-GEMM
convs with their im2col view, padded rows, packed weights, depthwise and code kernels) compiled
for LLVM instead of CUDA, with the GEMM kernels' computations left unscheduled, against the
integer reference (``cuda_twin.py``). The tensor-core schedule is checked by the emulator
(``test_wmma_emulated.py``); on a GPU by ``tools/gpu_bench.py``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import lcpaq.backends.common.capability  # noqa: F401 (registers the executable pass)
from lcpaq.backends.common import integer_ops as iops
from lcpaq.hw_targets import load_target
from lcpaq.ir import capture
from lcpaq.ir.metrics import first_output
from lcpaq.passes import PassContext, Pipeline
from tests.backends._nets import TinyEncoder, TinyMobile, TinyResNet, quantized
from tests.backends.cuda.cuda_twin import twin_build


def _seeded(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("net, shape", [(TinyResNet, (4, 3, 16, 16)), (TinyMobile, (4, 3, 16, 16))])
def test_cnns_lower_bit_exact(net: type, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = _seeded(shape, 3)
    gm = quantized(net(), x, "executable,uniform{w=8,a=8},fake-quant", target="nvidia-sm90")
    built = twin_build(gm, [x[:1]])
    y = built.run(x[:1])
    with torch.no_grad():
        ref = first_output(built.integer_graph(x[:1])).numpy()
    assert not built.float_fallbacks
    assert np.array_equal(y, ref)


def test_batched_conv_rows_cross_images_bit_exact() -> None:
    """Batch 3: the implicit GEMM's rows span images (row = b * OH * OW + i * OW + j)."""
    torch.manual_seed(0)
    x = _seeded((4, 3, 16, 16), 4)
    gm = quantized(TinyResNet(), x, "executable,uniform{w=8,a=8},fake-quant", target="nvidia-sm90")
    built = twin_build(gm, [x[:3]])
    with torch.no_grad():
        ref = first_output(built.integer_graph(x[:3])).numpy()
    assert np.array_equal(built.run(x[:3]), ref)


def test_transformer_block_lowers_within_float_rounding() -> None:
    """Linears on 3-d tokens (rows padded to the block tile), an embedding and float glue: the
    glue rounds differently from torch, so a code may flip at a requantization (as on x86)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (4, 8), generator=gen)
    gm = capture(TinyEncoder().eval(), (ids[:1],))
    calib = tuple((torch.randint(0, 50, (4, 8), generator=gen),) for _ in range(3))
    ctx = PassContext(load_target("nvidia-sm90"), (ids[:1],), calib)
    gm = Pipeline.from_spec("fold-bn,shape-prop,cost,quant-scheme,calibrate,executable,uniform{w=8,a=8},fake-quant")(gm, ctx).graph_module
    built = twin_build(gm, [ids[:1]])
    y = built.run(ids[:1])
    with torch.no_grad():
        ref = first_output(built.integer_graph(ids[:1])).numpy()
    assert y.shape == (1, 8, 32)
    assert np.abs(y - ref).max() < 0.1 and np.mean(np.abs(y - ref) > 1e-3) < 0.05


def test_activation_matmul_is_integer_and_bit_exact() -> None:
    """q @ k^T of two int8 linears' codes: an integer matmul kernel."""
    torch.manual_seed(0)
    x = _seeded((4, 6, 32), 6)
    gm = quantized(Scores(), x, "executable,uniform{w=8,a=8},fake-quant", target="nvidia-sm90")
    built = twin_build(gm, [x[:1]])
    with torch.no_grad():
        ref = first_output(built.integer_graph(x[:1])).numpy()
    assert any(n.target is iops.qmatmul for n in built.integer_graph.graph.nodes)
    assert np.array_equal(built.run(x[:1]), ref)


class Scores(torch.nn.Module):
    """Attention scores: two linears on [B, T, D] tokens, then q @ k^T."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k = torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x) @ self.k(x).transpose(-1, -2)
