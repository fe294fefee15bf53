"""Timing one layer on this machine's NVIDIA GPU, for ``lcpaq profile --target nvidia-sm90`` where
TVM and a GPU are both present: the layer's kernels of :mod:`lcpaq.backends.cuda.layer_kernels`,
timed by TVM's time evaluator on ``cuda:0``. Without a GPU here, the same kernels go into a bundle
for the GPU machine instead (``python -m lcpaq.tools.gpu_bundle --profile``)."""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from lcpaq.backends.common.backend import Backend, LayerTimer
from lcpaq.backends.cuda.layer_kernels import LayerKernel, LayerKernels
from lcpaq.hw_targets.target import Target
from lcpaq.ir.layers import QuantLayer


def seeded_args(kernel: LayerKernel, gen: torch.Generator) -> list[np.ndarray]:
    """Arguments of ``kernel``: float inputs from a normal, integer ones in [1, 8) (a valid
    shift, small codes)."""
    out = []
    for shape, dtype in kernel.args:
        if dtype.startswith("float"):
            out.append(torch.randn(shape, generator=gen).numpy().astype(dtype))
        else:
            out.append(torch.randint(1, 8, shape, generator=gen).numpy().astype(dtype))
    return out


class CudaLayerTimer(LayerTimer):
    def __init__(self, backend: Backend, target: Target, repeats: int, number: int, seed: int) -> None:
        self.repeats, self.number = repeats, number
        self.device = backend.device(target)
        self.where = backend.device_name(target)
        self.kernels = LayerKernels(backend.tvm_target(target))
        self.gen = torch.Generator().manual_seed(seed)

    def _seconds(self, kernel: LayerKernel) -> float:
        dev = self.device.dev
        args = [tvm.runtime.tensor(a, dev) for a in seeded_args(kernel, self.gen)]
        if kernel.kind == "vm":
            vm = relax.VirtualMachine(kernel.executable, dev)
            vm["main"](*args)
            evaluator = vm.time_evaluator("main", dev, number=self.number, repeat=self.repeats)
        else:
            mod = kernel.executable.mod
            mod["main"](*args)
            evaluator = mod.time_evaluator("main", dev, number=self.number, repeat=self.repeats)
        return float(np.median(evaluator(*args).results))

    def measure(self, gm: fx.GraphModule, layer: QuantLayer) -> dict[str, float]:
        return {key: self._seconds(k) for key, k in self.kernels.kernels(gm, layer).items()}

    def notes(self) -> list[str]:
        return [f"timed on {self.where} by TVM's time evaluator", *self.kernels.notes()]
