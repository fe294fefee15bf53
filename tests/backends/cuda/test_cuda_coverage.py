"""Every architecture of the coverage zoo (CNNs old and new, ViT, Swin, a Llama block, an LSTM,
a U-Net, a detection head, shared weights) quantized W8A8 for nvidia-sm90: built for the GPU
here (nvcc, not run) and, through the CPU twin of the CUDA lowering, equal to its integer
reference (bit-exact where every op is integer; within float rounding where float glue remains)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lcpaq.backends.common.build import build_model
from lcpaq.hw_targets import load_target
from lcpaq.ir.metrics import first_output
from lcpaq.tools.api import quantize
from lcpaq.tools.coverage_report import agreement
from lcpaq.tools.models.coverage import COVERAGE_MODELS
from lcpaq.tools.models.zoo import load_model
from tests.backends.cuda.cuda_twin import twin_build

SM90 = load_target("nvidia-sm90")


@pytest.mark.parametrize("name", list(COVERAGE_MODELS))
def test_zoo_model_builds_for_the_gpu_and_lowers_exactly(name: str) -> None:
    bundle = load_model(f"coverage/{name}")
    gm = quantize(bundle, target=SM90, bits="w8a8", build=False).results[0].graph_module
    x = [t[:1] for t in bundle.example_inputs]
    built = build_model(gm, x, SM90)
    assert built.not_run and built.kernels > 0 and built.executable.fatbins
    twin = twin_build(gm, x)
    y = twin.run(*x)
    y = y[0] if isinstance(y, tuple) else y
    with torch.no_grad():
        ref = first_output(twin.integer_graph(*x)).numpy()
    assert agreement([y], [ref], bool(twin.float_fallbacks)) != "no", f"max |diff| {np.abs(y - ref).max()}"
