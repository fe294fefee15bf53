"""A quantized conv2d lowered to a TVM Relax module that calls our VNNI kernel through ``call_tir``.

The scheduled, tensorized PrimFunc of :func:`lcpaq.backends.tvm_int8.qconv2d_func` is added to the
IRModule as-is; Relax does the layout plumbing around it (NCHW -> NHWC, slicing padded output
channels, NHWC -> NCHW) with ordinary ops that the default pipeline legalizes. Weights and
per-channel requantization parameters are bound as constants. The PrimFunc is marked
``op_pattern = kOpaque`` and ``tirx.is_scheduled``, guards so that ``FuseOps``/``FuseTIR`` never
fuse neighbours into it (a fused copy would lose the tensorized schedule) and MetaSchedule-based
pipelines do not retune it (the default pipeline leaves it alone even without them).

Semantics are those of :func:`lcpaq.backends.integer_ref.conv2d` (NCHW u8 in, NCHW u8 out),
bit-exact. Input channels must be a multiple of 4 (the activation is not padded in Relax);
output channels are padded to 16 on the host and sliced off in Relax.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import tvm
from tvm import relax

from lcpaq.backends import tvm_int8 as t8
from lcpaq.backends.tvm_vnni import DEPTH, LANES, x86_target

#: ``relay.op.OpPattern.kOpaque``: never fused.
OPAQUE = 8
KERNEL_NAME = "lcpaq_qconv2d_vnni"


def _channel_arrays(bias_eff: torch.Tensor, multiplier: Any, shift: Any, n: int, n_pad: int) -> list[np.ndarray]:
    return [a.numpy() for a in t8._channel_params(bias_eff, multiplier, shift, n, n_pad)]


def qconv2d_module(
    x_shape: tuple[int, int, int, int], x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None,
    multiplier: Any, shift: Any, out_zp: int, qmin: int = 0, qmax: int = 255, stride: int = 1, padding: int = 0,
) -> tvm.IRModule:
    """Relax IRModule ``main(x: uint8 NCHW x_shape) -> uint8 NCHW`` computing the quantized conv2d."""
    b, c, h, w_ = x_shape
    o, wc, kh, kw = w_q.shape
    if kh != kw or wc != c:
        raise ValueError(f"needs square kernels and matching channels, got x {x_shape}, w {tuple(w_q.shape)}")
    if c % DEPTH:
        raise ValueError(f"Relax lowering needs input channels % 4 == 0, got {c}")
    w_p = t8._pad_dim(w_q.to(torch.int8), 0, LANES)
    o_pad = w_p.shape[0]
    prim = t8.schedule_qconv2d(
        t8.qconv2d_func((b, h, w_, c), o_pad, kh, stride, padding)
    ).mod["main"]
    prim = prim.with_attrs({"global_symbol": KERNEL_NAME, "op_pattern": OPAQUE, "tirx.is_scheduled": True})
    oh, ow = t8.conv_out_size(h, kh, stride, padding), t8.conv_out_size(w_, kw, stride, padding)
    consts = [relax.const(t8.pack_conv_weight(w_p))] + [
        relax.const(a) for a in _channel_arrays(t8._bias_eff(w_q, x_zp, bias), multiplier, shift, o, o_pad)
    ] + [relax.const(t8.Requant(out_zp, qmin, qmax).qp(x_zp))]

    bb = relax.BlockBuilder()
    kernel = bb.add_func(prim, KERNEL_NAME)
    x = relax.Var("x", relax.TensorType(x_shape, "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            x_nhwc = bb.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
            y = bb.emit(relax.call_tir(kernel, relax.Tuple([x_nhwc, *consts]), relax.TensorType((b, oh, ow, o_pad), "uint8")))
            if o_pad != o:
                y = bb.emit(relax.op.strided_slice(y, axes=[3], begin=[0], end=[o]))
            out = bb.emit_output(relax.op.permute_dims(y, [0, 3, 1, 2]))
        bb.emit_func_output(out)
    return bb.get()


def build(mod: tvm.IRModule, target: tvm.target.Target | None = None) -> relax.VirtualMachine:
    """Compile with the default Relax pipeline and return a VM on the host CPU."""
    return relax.VirtualMachine(tvm.compile(mod, target=target or x86_target()), tvm.cpu())


def qconv2d(
    x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None,
    multiplier: Any, shift: Any, out_zp: int, qmin: int = 0, qmax: int = 255, stride: int = 1, padding: int = 0,
) -> torch.Tensor:
    """Same contract as :func:`integer_ref.conv2d`, run as a Relax module calling the VNNI kernel."""
    mod = qconv2d_module(tuple(x_q.shape), x_zp, w_q, bias, multiplier, shift, out_zp, qmin, qmax, stride, padding)
    vm = build(mod)
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x_q.to(torch.uint8).numpy()), tvm.cpu()))
    return torch.from_numpy(out.numpy())


__all__ = ["KERNEL_NAME", "build", "qconv2d", "qconv2d_module"]
