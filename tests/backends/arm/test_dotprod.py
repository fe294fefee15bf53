"""The Arm sdot kernels: tensorized with sdot (checked in the AArch64 assembly, no board needed)
and bit-exact against the integer reference on the emulated board."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm

from lcpaq.backends.arm.backend import ArmDotprodBackend
from lcpaq.backends.arm.dotprod import KERNELS, SDOT_BLOCKING
from lcpaq.backends.common import cpu_depthwise as dw
from lcpaq.backends.common import gemm_te
from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.common.backend import Backend
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.remote import RemoteDevice

ARM = load_target("arm-a76")


def _compile(sch: tvm.s_tir.Schedule) -> tvm.runtime.Executable:
    return tvm.compile(sch.mod, target=ArmDotprodBackend().tvm_target(ARM))


def test_dense_and_conv_kernels_run_on_sdot() -> None:
    dense = _compile(KERNELS.schedule_dense(gemm_te.qdense_func(8, 16, 32, SDOT_BLOCKING, "int8")))
    conv = _compile(KERNELS.schedule_conv(gemm_te.qconv2d_func((1, 6, 6, 8), 8, 3, 1, 1, SDOT_BLOCKING, "int8"), 6))
    for lib in (dense, conv):
        asm = lib.mod.inspect_source("asm")
        assert "sdot\tv" in asm and "udot" not in asm


@pytest.fixture(scope="module")
def board(arm_board: str) -> tuple[Backend, object]:
    backend = ArmDotprodBackend()
    return backend, backend.device(ARM.reached_over(RemoteDevice(rpc=arm_board)))


def _run(board, sch, arrays: list[np.ndarray], out_shape: tuple[int, ...], out_dtype: str) -> np.ndarray:
    backend, device = board
    module = device.module(_compile(sch), backend.export)
    out = device.tensor(np.zeros(out_shape, out_dtype))
    module["main"](*[device.tensor(a) for a in arrays], out)
    return out.numpy()


def _params(gen: torch.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    bias = torch.randint(-3000, 3000, (n,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**29, 2**30, (n,), generator=gen, dtype=torch.int64)
    shift = torch.randint(36, 40, (n,), generator=gen, dtype=torch.int64)
    return bias, mult, shift


@pytest.mark.parametrize("out_dtype", ["int8", "int32"])
def test_dense_is_bit_exact_on_the_board(board, out_dtype: str) -> None:
    gen = torch.Generator().manual_seed(0)
    m, n, k, x_zp = 5, 12, 20, -7  # n and k multiples of 4; the reference takes raw codes
    x = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    bias, mult, shift = _params(gen, n)
    lo, hi = (-128, 127) if out_dtype == "int8" else (-(2**31), 2**31 - 1)
    want = ir.requantize(ir.dense_acc(x, x_zp, w, bias), mult, shift, 3 if out_dtype == "int8" else 0, lo, hi)
    sch = KERNELS.schedule_dense(gemm_te.qdense_func(m, n, k, SDOT_BLOCKING, out_dtype))
    rq = gemm_te.Requant(3 if out_dtype == "int8" else 0, lo, hi, out_dtype)
    arrays = [x.numpy(), gemm_te.pack_weight(w, SDOT_BLOCKING),
              *gemm_te.channel_params(gemm_te.bias_eff(w, x_zp, bias), mult, shift, n, n), rq.qp(x_zp, "int8")]
    got = _run(board, sch, arrays, (m, n), out_dtype)
    assert np.array_equal(got.astype(np.int32), want.numpy())


@pytest.mark.parametrize(("stride", "padding"), [(1, 1), (2, 0)])
def test_conv_is_bit_exact_on_the_board(board, stride: int, padding: int) -> None:
    gen = torch.Generator().manual_seed(1)
    c, o, h, k, x_zp = 8, 12, 7, 3, 5
    x = torch.randint(-128, 128, (1, c, h, h), generator=gen, dtype=torch.int8)
    w = torch.randint(-127, 128, (o, c, k, k), generator=gen, dtype=torch.int8)
    bias, mult, shift = _params(gen, o)
    want = ir.requantize(ir.conv2d_acc(x, x_zp, w, bias, stride, padding), mult, shift, -2, -128, 127)
    oh = (h + 2 * padding - k) // stride + 1
    sch = KERNELS.schedule_conv(gemm_te.qconv2d_func((1, h, h, c), o, k, stride, padding, SDOT_BLOCKING, "int8"), oh)
    arrays = [x.permute(0, 2, 3, 1).contiguous().numpy(), gemm_te.pack_conv_weight(w, SDOT_BLOCKING),
              *gemm_te.channel_params(gemm_te.bias_eff(w, x_zp, bias), mult, shift, o, o), gemm_te.Requant(-2, -128, 127, "int8").qp(x_zp, "int8")]
    got = _run(board, sch, arrays, (1, oh, oh, o), "int8")
    assert np.array_equal(got.transpose(0, 3, 1, 2).astype(np.int32), want.numpy())


def test_depthwise_is_bit_exact_on_the_board(board) -> None:
    gen = torch.Generator().manual_seed(2)
    c, h, k, x_zp = 8, 9, 3, -20
    x = torch.randint(-128, 128, (1, c, h, h), generator=gen, dtype=torch.int8)
    w = torch.randint(-127, 128, (c, 1, k, k), generator=gen, dtype=torch.int8)
    bias, mult, shift = _params(gen, c)
    want = ir.requantize(ir.conv2d_acc(x, x_zp, w, bias, 2, 1, groups=c), mult, shift, 4, 4, 127)  # ReLU: qmin = out_zp
    lanes = KERNELS.depthwise_lanes
    sch = dw.schedule_qdepthwise(dw.qdepthwise_func((1, h, h, c), k, 2, 1, "int8", "int8", lanes), lanes=lanes)
    arrays = [x.permute(0, 2, 3, 1).contiguous().numpy(), dw.pack_depthwise_weight(w),
              *gemm_te.channel_params(gemm_te.bias_eff(w, x_zp, bias), mult, shift, c, c), gemm_te.Requant(4, 4, 127, "int8").qp(x_zp, "int8")]
    got = _run(board, sch, arrays, (1, 5, 5, c), "int8")
    assert np.array_equal(got.transpose(0, 3, 1, 2).astype(np.int32), want.numpy())
