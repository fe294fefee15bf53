"""has_integer_kernel: which layers the CPU families run on integer kernels, checked against
what a build actually does with each layer."""
from __future__ import annotations

import torch
from torch import nn

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.integerize import integerize
from lcpaq.backends.common.integer_layers import has_integer_kernel
from lcpaq.ir import capture, find_layers
from tests.backends._nets import quantized


class _Layers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.wide = nn.Conv2d(8, 8, (1, 3), padding=1)  # non-square, one padding: integer
        self.per_axis = nn.Conv2d(8, 8, (1, 3), padding=(0, 1))  # per-axis padding: float
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.lin = nn.Linear(8, 8)
        self.w = nn.Parameter(torch.randn(8, 8) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.per_axis(self.dilated(self.grouped(x)))
        y = self.wide(y)[:, :, 1:-1, :]
        t = self.lin(self.conv1d(y.flatten(2)).transpose(1, 2))  # [B, HW, C]: a 3-d linear
        u = t @ self.w
        return u @ u.transpose(1, 2)


def test_predicate_names_the_layers_a_build_runs_in_integer() -> None:
    model = _Layers().eval()
    x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(0))
    gm = capture(model, (x[:1],))
    got = {layer.name: has_integer_kernel(gm, layer) for layer in find_layers(gm)}
    assert got == {"grouped": True, "dilated": False, "wide": True, "per_axis": False, "conv1d": False, "lin": True,
                   "w": True, "matmul_1": True}
    # the integer graph of the w8a8 model has exactly the predicted integer layers
    ig = integerize(quantized(model, x))
    integer = [n for n in ig.graph.nodes if n.target in (iops.qconv2d, iops.qlinear, iops.qmatmul)]
    assert len(integer) == sum(got.values())


class _Groups(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Conv2d(8, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.depthwise_wide = nn.Conv2d(8, 8, (1, 3), padding=1, groups=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise_wide(self.grouped(self.depthwise(self.dense(x))))


def test_a_family_without_a_grouped_kernel_keeps_dense_and_square_depthwise_convs() -> None:
    model = _Groups().eval()
    gm = capture(model, (torch.randn(1, 8, 6, 6, generator=torch.Generator().manual_seed(1)),))
    layers = find_layers(gm)
    assert {layer.name: has_integer_kernel(gm, layer, grouped_convs=False) for layer in layers} == {
        "dense": True, "depthwise": True, "grouped": False, "depthwise_wide": False}
    assert all(has_integer_kernel(gm, layer) for layer in layers)
