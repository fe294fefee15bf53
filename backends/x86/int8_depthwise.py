"""Host helpers around the depthwise kernel of :mod:`lcpaq.backends.common.cpu_depthwise` on
this x86 machine (uint8 codes, 16 channels a vector): build it for the host, run it on torch
tensors with the contract of :func:`lcpaq.backends.common.integer_ref.conv2d`, and a benchmark
against torch (``python -m lcpaq.backends.x86.int8_depthwise``)."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from lcpaq.backends.common.cpu_depthwise import LANES, pack_depthwise_weight, qdepthwise_func, schedule_qdepthwise
from lcpaq.backends.common.gemm_te import Requant, bias_eff, channel_params, pad_dim
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.x86.vnni import Kernel, build, to_tvm


@functools.lru_cache(maxsize=32)
def build_qdepthwise(shape_nhwc: tuple[int, int, int, int], kernel: int, stride: int, padding: int, out_dtype: str = "uint8") -> Kernel:
    """The compiled, hand-scheduled kernel of :func:`qdepthwise_func` (cached per shape)."""
    return build(schedule_qdepthwise(qdepthwise_func(shape_nhwc, kernel, stride, padding, out_dtype)).mod)


def qdepthwise(
    x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None,
    multiplier: Any, shift: Any, out_zp: int, qmin: int = 0, qmax: int = 255, stride: int = 1, padding: int = 0,
    out_dtype: str = "uint8",
) -> torch.Tensor:
    """Same contract as :func:`integer_ref.conv2d` with ``groups = C`` (NCHW in and out, weights
    ``[C, 1, KH, KW]``), computed by the hand-scheduled TVM kernel. With ``out_dtype="int32"`` the
    result is the int32 tensor ``integer_ref.requantize`` returns (no uint8 cast)."""
    c = x_q.shape[1]
    if x_q.dim() != 4 or w_q.dim() != 4 or w_q.shape[:2] != (c, 1) or w_q.shape[2] != w_q.shape[3]:
        raise ValueError(f"qdepthwise needs x [B, C, H, W] and square w [C, 1, K, K], got x {tuple(x_q.shape)}, w {tuple(w_q.shape)}")
    if x_q.is_floating_point() or w_q.is_floating_point():
        raise TypeError("integer kernels take integer codes, not float tensors")
    qp = Requant(out_zp, qmin, qmax, out_dtype).qp(x_zp)
    kh = w_q.shape[2]
    x_nhwc = pad_dim(x_q.to(torch.uint8).permute(0, 2, 3, 1).contiguous(), 3, LANES)
    w_p = pad_dim(w_q.to(torch.int8), 0, LANES)
    b, h, w_, c_pad = x_nhwc.shape
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kh, stride, padding)
    kernel = build_qdepthwise((b, h, w_, c_pad), kh, stride, padding, out_dtype)
    out = to_tvm(np.zeros((b, oh, ow, c_pad), out_dtype))
    params = channel_params(bias_eff(w_q, x_zp, bias), multiplier, shift, c, c_pad)
    kernel(to_tvm(x_nhwc), to_tvm(pack_depthwise_weight(w_p)), *map(to_tvm, params), to_tvm(qp), out)
    return torch.from_numpy(out.numpy())[..., :c].permute(0, 3, 1, 2).contiguous()


def _bench(shape_nchw: tuple[int, int, int, int] = (1, 96, 112, 112), kernel: int = 3, stride: int = 2, padding: int = 1) -> None:
    """Print the kernel's time against torch's fp32 depthwise conv (NCHW and channels_last); with
    ``TVM_NUM_THREADS`` set, torch runs on as many threads."""
    import os
    import time

    if os.environ.get("TVM_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["TVM_NUM_THREADS"]))

    gen = torch.Generator().manual_seed(0)
    b, c, h, w_ = shape_nchw
    oh, ow = conv_out_size(h, kernel, stride, padding), conv_out_size(w_, kernel, stride, padding)
    k = build_qdepthwise((b, h, w_, c), kernel, stride, padding)
    w_q = torch.randint(-127, 128, (c, 1, kernel, kernel), generator=gen, dtype=torch.int8)
    args = [
        to_tvm(torch.randint(0, 256, (b, h, w_, c), generator=gen, dtype=torch.uint8)), to_tvm(pack_depthwise_weight(w_q)),
        *map(to_tvm, channel_params(torch.zeros(c, dtype=torch.int64), 2**30, 38, c, c)), to_tvm(Requant(3).qp(5)),
        to_tvm(np.zeros((b, oh, ow, c), np.uint8)),
    ]
    k(*args)
    tvm_ms = k.time_ms(*args, repeat=20, number=20)
    x, wf = torch.randn(shape_nchw, generator=gen), torch.randn(c, 1, kernel, kernel, generator=gen)

    def torch_ms(xx: torch.Tensor) -> float:
        with torch.no_grad():
            for _ in range(5):
                torch.nn.functional.conv2d(xx, wf, None, stride, padding, groups=c)
            runs = []
            for _ in range(20):
                t0 = time.perf_counter()
                for _ in range(20):
                    torch.nn.functional.conv2d(xx, wf, None, stride, padding, groups=c)
                runs.append((time.perf_counter() - t0) / 20 * 1e3)
        return float(np.median(runs))

    nchw, nhwc = torch_ms(x), torch_ms(x.contiguous(memory_format=torch.channels_last))
    print(f"depthwise {shape_nchw} k{kernel} s{stride} p{padding}, {torch.get_num_threads()} torch threads")
    print(f"  TVM int8 (hand schedule, requant fused): {tvm_ms:.4f} ms")
    print(f"  torch fp32 NCHW:          {nchw:.4f} ms  ({nchw / tvm_ms:.2f}x)")
    print(f"  torch fp32 channels_last: {nhwc:.4f} ms  ({nhwc / tvm_ms:.2f}x)")


__all__ = ["build_qdepthwise", "qdepthwise"]


if __name__ == "__main__":
    _bench()
