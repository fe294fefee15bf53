"""The code kernels' element-wise schedule: the vector axis is the last one (a register of the
widest element type, 64 uint8 lanes) or the one a layout change names (NCHW quantize: width),
the leading loops parallel; odd extents fall back to fused loops. Outputs checked by hand."""
from __future__ import annotations

import numpy as np
import torch

from lcpaq.backends.common import code_kernels as ck
from lcpaq.backends.x86.vnni import build, to_tvm


def _splits(sch) -> list[list[str]]:
    return [[str(a) for a in inst.inputs[1:]] for inst in sch.trace.insts if inst.kind.name == "Split"]


def _run(func, *arrays: np.ndarray, out: np.ndarray) -> np.ndarray:
    sch = ck.schedule_elementwise(func)
    y = to_tvm(out)
    build(sch.mod)(*map(to_tvm, arrays), y)
    return y.numpy()


def test_nchw_quantize_vectorizes_the_width() -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 32)).astype(np.float32)
    func = ck.quantize_func(x.shape, 40.0, 128, 0, 255, 4)
    assert int(func.attrs[ck.VECTOR_AXIS_ATTR]) == 2
    assert _splits(ck.schedule_elementwise(func)) == [["None", "16"]]  # width 32 into float32 zmm lanes
    got = _run(func, x, out=np.zeros((2, 5, 32, 4), np.uint8))
    want = np.clip(np.round(x * np.float32(40.0)) + 128, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.array_equal(got[..., :3], want) and (got[..., 3] == 128).all()  # the padded channel holds the zero point


def test_max_pool_fills_a_register_of_codes() -> None:
    x = np.random.default_rng(1).integers(0, 256, (2, 9, 9, 64), dtype=np.uint8)
    func = ck.max_pool2d_func(x.shape, "uint8", 3, 2, 1)
    assert _splits(ck.schedule_elementwise(func)) == [["None", "64"]]
    got = _run(func, x, out=np.zeros((2, 5, 5, 64), np.uint8))
    want = torch.nn.functional.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2).float(), 3, 2, 1).permute(0, 2, 3, 1)
    assert np.array_equal(got, want.numpy().astype(np.uint8))


def test_odd_channels_fall_back_to_fused_loops() -> None:
    x = np.random.default_rng(2).integers(0, 256, (1, 4, 4, 3), dtype=np.uint8)
    func = ck.clamp_func(x.shape, "uint8", 10, 200)
    assert _splits(ck.schedule_elementwise(func)) == [["None", "16"]]  # 48 elements fused, gcd(48, 16) lanes
    assert np.array_equal(_run(func, x, out=np.zeros_like(x)), np.clip(x, 10, 200))
