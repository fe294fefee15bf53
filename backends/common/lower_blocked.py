"""Relax lowerings of the integer graph's conv and linear onto a CPU family's blocked dot-product
kernels (:mod:`lcpaq.backends.common.gemm_te`) and the vector depthwise kernel
(:mod:`lcpaq.backends.common.cpu_depthwise`), for any :class:`BlockedKernels`: the family says
its blocking and hand schedules, these functions do the plumbing. Families register lowerings
that call them (x86: ``backends/x86/lower_gemm.py``; Arm: ``backends/arm/lower_gemm.py``).

Weights are padded and packed on the host into the kernels' blocked layouts and bound as
constants, with the input zero point folded into the bias (``bias - x_zp * sum(w)``). A layer
whose requantization is exact in int32 (``integer_ref.narrow_requant``: small accumulators, a
multiplier narrowed by the integer lowering) gets kernels with an int32 epilogue. Tunable
kernels go through :meth:`RelaxLowering.kernel_schedule` (the family's tuning, if any).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from lcpaq.backends.common import cpu_depthwise as dw
from lcpaq.backends.common import gemm_te
from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import RelaxLowering, RVal, channels_of, codes, logical, nhwc, pad_last, round_up
from lcpaq.ir.errors import LoweringError


@dataclass(frozen=True)
class BlockedKernels:
    """A CPU family's GEMM kernels: the blocking of its dot-product instruction, its hand
    schedules of :func:`gemm_te.qdense_func` and :func:`gemm_te.qconv2d_func` (the conv one also
    given the output width), and the channels per vector of its depthwise kernel."""

    blocking: gemm_te.Blocking
    schedule_dense: Callable[[tvm.tirx.PrimFunc], Any]
    schedule_conv: Callable[[tvm.tirx.PrimFunc, int], Any]
    depthwise_lanes: int


def channel_vectors(bias: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, n_pad: int,
                    bias_dtype: str = "int32") -> list[relax.Expr]:
    """Relax constants of bias_eff (``bias_dtype``), multiplier and shift padded to ``n_pad`` channels."""
    arrays = gemm_te.channel_params(bias, mult, shift, len(mult), n_pad, bias_dtype)
    return [relax.const(a, str(a.dtype)) for a in arrays]  # an int64 array's type is kept


def requant_of(node: fx.Node) -> gemm_te.Requant:
    kw = node.kwargs
    return gemm_te.Requant(int(kw["out_zp"]), int(kw["qmin"]), int(kw["qmax"]), kw.get("out_dtype", "uint8"))


def check_codes(lw: RelaxLowering, node: fx.Node, x: RVal, what: str) -> None:
    code = lw.backend.conventions.act_dtype
    if x.dtype != code:
        raise LoweringError(f"{node.name}: {what} input must be {code} codes, got {x.dtype} {x.shape}")


def lower_conv(lw: RelaxLowering, node: fx.Node, x: RVal, kernels: BlockedKernels) -> RVal:
    """A dense (groups = 1) conv of ``x`` (codes) on the blocked conv kernel; any kernel size."""
    bl = kernels.blocking
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    stride, pad, rq = int(node.kwargs["stride"]), int(node.kwargs["padding"]), requant_of(node)
    o, c, kh, kw = w.shape
    x = nhwc(lw, x, bl.depth)
    b, _, h, wd = x.shape
    o_p = round_up(o, bl.lanes)
    w_p = torch.zeros(o_p, x.cp, kh, kw, dtype=torch.int8)  # padded channels: zero weights
    w_p[:o, :c] = w.to(torch.int8)
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(wd, kw, stride, pad)
    ksize = f"k{kh}" if kh == kw else f"k{kh}x{kw}"
    dtype = rq.out_dtype
    x_zp = int(node.kwargs["x_zp"])
    narrow = ir.narrow_requant(w, x.dtype, x_zp, bias, mult, shift)
    tag = (f"conv-{x.cp}x{h}x{wd}-o{o_p}-{ksize}s{stride}p{pad}-int8" + ("" if dtype == bl.act_dtype else "-i32")
           + ("-n32" if narrow else "") + ("" if b == 1 else f"-b{b}"))
    sched = lw.kernel_schedule(tag)
    gv = lw.prim(
        ("qconv2d", (b, h, wd, x.cp), o_p, (kh, kw), stride, pad, dtype, bl, narrow),
        lambda: gemm_te.qconv2d_func((b, h, wd, x.cp), o_p, (kh, kw), stride, pad, bl, dtype, narrow),
        lambda f: sched(f, lambda g: kernels.schedule_conv(g, ow)),
    )
    args = [x.expr, relax.const(gemm_te.pack_conv_weight(w_p, bl)), *channel_vectors(gemm_te.bias_eff(w, x_zp, bias), mult, shift, o_p),
            relax.const(rq.qp(x_zp, bl.act_dtype))]
    return RVal(lw.call(gv, args, (b, oh, ow, o_p), dtype), (b, o, oh, ow), dtype, o_p)


def is_depthwise(x: RVal, w: torch.Tensor, groups: int) -> bool:
    """A depthwise conv with a square kernel (what the vector depthwise kernel computes)."""
    o, c, kh, kw = w.shape
    return groups != 1 and groups == o == x.shape[1] and c == 1 and kh == kw


def lower_depthwise(lw: RelaxLowering, node: fx.Node, x: RVal, kernels: BlockedKernels) -> RVal:
    """Depthwise conv (groups == C) on the vector kernel, ``depthwise_lanes`` channels a vector;
    stored channels padded to that first when they are not (e.g. 72 after a float op)."""
    lanes = kernels.depthwise_lanes
    return lower_depthwise_with(lw, node, x, lanes, lambda f: dw.schedule_qdepthwise(f, lanes=lanes))


def lower_depthwise_with(lw: RelaxLowering, node: fx.Node, x: RVal, lanes: int,
                         schedule: Callable[[tvm.tirx.PrimFunc], Any] | None) -> RVal:
    """:func:`lower_depthwise` with the kernel's ``lanes`` and ``schedule`` given (None: the
    family's pipeline schedules it)."""
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    stride, pad, rq = int(node.kwargs["stride"]), int(node.kwargs["padding"]), requant_of(node)
    code, dtype = lw.backend.conventions.act_dtype, rq.out_dtype
    c, k = w.shape[0], w.shape[2]
    x = nhwc(lw, x, lanes)
    b, _, h, wd = x.shape
    w_p = torch.zeros(x.cp, 1, k, k, dtype=torch.int8)
    w_p[:c] = w.to(torch.int8)
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    x_zp = int(node.kwargs["x_zp"])
    narrow = ir.narrow_requant(w, code, x_zp, bias, mult, shift)
    gv = lw.prim(("qdepthwise", (b, h, wd, x.cp), k, stride, pad, dtype, code, lanes, narrow),
                 lambda: dw.qdepthwise_func((b, h, wd, x.cp), k, stride, pad, dtype, code, lanes, narrow),
                 schedule)
    args = [x.expr, relax.const(dw.pack_depthwise_weight(w_p)),
            *channel_vectors(gemm_te.bias_eff(w, x_zp, bias), mult, shift, x.cp), relax.const(rq.qp(x_zp, code))]
    return RVal(lw.call(gv, args, (b, oh, ow, x.cp), dtype), (b, c, oh, ow), dtype, x.cp)


def lower_qconv2d(lw: RelaxLowering, node: fx.Node, dense: Callable[[RelaxLowering, fx.Node, RVal], RVal],
                  depthwise: Callable[[RelaxLowering, fx.Node, RVal], RVal]) -> RVal:
    """A family's conv lowering with no grouped kernel: groups = 1 on ``dense``, square
    depthwise on ``depthwise``; any other grouped conv is a LoweringError (the family's
    ``has_integer_kernel`` keeps such layers float before assignment)."""
    x = codes(lw, node)
    check_codes(lw, node, x, "conv")
    groups = int(node.kwargs.get("groups", 1))
    if groups == 1:
        return dense(lw, node, x)
    if is_depthwise(x, lw.tensor(node.args[1]), groups):
        return depthwise(lw, node, x)
    raise LoweringError(f"{node.name}: backend {lw.backend.name!r} has no kernel for a grouped conv (groups={groups}); keep it in float")


@dataclass(frozen=True)
class LinearRows:
    """A linear's input as a 2-d matrix: ``expr`` ``[rows, stored]`` codes, ``lead`` the
    leading logical dimensions, ``four_d`` whether it came 4-d (read in its logical layout)."""

    expr: relax.Expr
    lead: tuple[int, ...]
    rows: int
    stored: int
    four_d: bool


def linear_rows(lw: RelaxLowering, node: fx.Node, check: bool = True) -> LinearRows:
    """The codes a linear multiplies, every leading dimension a row (a 4-d input, e.g.
    channels-last tokens after a permute, is read in its logical layout); ``check``: they must
    be the family's activation code type (a wide kernel reads int16 too)."""
    x = codes(lw, node)
    if check:
        check_codes(lw, node, x, "linear")
    four_d = len(x.shape) == 4
    if four_d:
        x = logical(lw, x)
    lead, stored = x.shape[:-1], (x.shape[-1] if four_d else x.cp)
    rows = int(np.prod(lead)) if lead else 1
    expr = x.expr if len(x.shape) == 2 else lw.bb.emit(relax.op.reshape(x.expr, (rows, stored)))
    return LinearRows(expr, tuple(lead), rows, stored, four_d)


def linear_result(lw: RelaxLowering, y: relax.Expr, rows: LinearRows, n: int, n_p: int, dtype: str) -> RVal:
    """The ``[rows, n_p]`` output of a linear kernel in the input's leading shape: channels
    padded to ``n_p``, or, for a 4-d input, sliced to ``n`` in its logical layout."""
    lead = rows.lead
    if len(lead) != 1:
        y = lw.bb.emit(relax.op.reshape(y, (*lead, n_p)))
    if rows.four_d:  # a 4-d value in its logical layout is stored unpadded
        if n_p != n:
            y = lw.bb.emit(relax.op.strided_slice(y, axes=[3], begin=[0], end=[n]))
        shape = (*lead, n)
        return RVal(y, shape, dtype, channels_of(shape), "NCHW")
    return RVal(y, (*lead, n), dtype, n_p)


def lower_linear(lw: RelaxLowering, node: fx.Node, kernels: BlockedKernels) -> RVal:
    """Linear over the last logical dimension on the blocked dense kernel (:func:`linear_rows`)."""
    bl = kernels.blocking
    lin = linear_rows(lw, node)
    rows, stored = lin.rows, lin.stored
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    rq = requant_of(node)
    dtype = rq.out_dtype
    n, k = w.shape
    m, k_p, n_p = rows, round_up(stored, bl.depth), round_up(n, bl.lanes)
    expr = pad_last(lw, lin.expr, (rows, stored), k_p)  # padded features meet zero weights
    w_p = torch.zeros(n_p, k_p, dtype=torch.int8)
    w_p[:n, :k] = w.to(torch.int8)
    x_zp = int(node.kwargs["x_zp"])
    narrow = ir.narrow_requant(w, bl.act_dtype, x_zp, bias, mult, shift)
    tag = f"dense-m{m}-n{n_p}-k{k_p}-int8" + ("" if dtype == bl.act_dtype else "-i32") + ("-n32" if narrow else "")
    sched = lw.kernel_schedule(tag)
    gv = lw.prim(("qdense", m, n_p, k_p, dtype, bl, narrow), lambda: gemm_te.qdense_func(m, n_p, k_p, bl, dtype, narrow),
                 lambda f: sched(f, kernels.schedule_dense))
    args = [expr, relax.const(gemm_te.pack_weight(w_p, bl)), *channel_vectors(gemm_te.bias_eff(w, x_zp, bias), mult, shift, n_p),
            relax.const(rq.qp(x_zp, bl.act_dtype))]
    return linear_result(lw, lw.call(gv, args, (m, n_p), dtype), lin, n, n_p, dtype)
