"""Quantized int8 grouped conv2d (ResNeXt, groups > 1 and not depthwise) on the VNNI kernel,
requantization fused; bit-exact against :func:`lcpaq.backends.common.integer_ref.conv2d` with ``groups``.

The kernel is the dense VNNI conv of :mod:`lcpaq.backends.x86.int8` (same loops, same
``vpdpbusd`` 16 outputs x 4 inputs core, same schedule) except that each block of 16 output
channels reduces over a *window* of the input channels, not all of them: the channels of the
groups its outputs belong to. With ``og`` outputs and ``cg`` inputs per group,

* ``og`` divides 16: a block holds ``16 / og`` whole groups and reads their ``16 / og * cg``
  input channels, from channel ``block * 16 / og * cg``;
* 16 divides ``og``: a block lies inside one group and reads its ``cg`` channels.

Weights outside a block's groups are zero inside its window (block diagonal), so the sums are
exactly the grouped conv's. Other group sizes are regrouped (:class:`GroupPlan`): each group's
outputs padded to the next size of either form (``og_p``), its inputs to ``cg_p`` so that a
window is a multiple of 4 channels; the padded channels have zero weights and are dropped
after the kernel. As in the dense kernel the input zero point is folded into the bias and the
padding of H and W uses code ``qp[0]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import tvm
from tvm import te

from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import round_up
from lcpaq.backends.common.gemm_te import Requant, bias_eff, channel_params, kernel_hw, pad_nhwc, requant_compute
from lcpaq.backends.x86.int8 import schedule_qconv2d
from lcpaq.backends.x86.vnni import DEPTH, LANES, build, to_tvm


@dataclass(frozen=True)
class GroupPlan:
    """How a grouped conv with ``groups`` groups of ``cg`` inputs and ``og`` outputs maps onto
    the windowed VNNI kernel: groups padded to ``cg_p`` inputs and ``og_p`` outputs."""

    groups: int
    cg: int
    og: int
    cg_p: int
    og_p: int

    @property
    def win(self) -> int:
        """Input channels one block of 16 outputs reduces over."""
        return self.cg_p * max(1, LANES // self.og_p)

    @property
    def out_channels(self) -> int:
        """Output channels the kernel computes (the regrouped outputs, padded to 16)."""
        return round_up(self.groups * self.og_p, LANES)

    @property
    def in_channels(self) -> int:
        """Stored input channels the kernel reads (the regrouped inputs, padded so the last
        block's window is in bounds)."""
        blocks = self.out_channels // LANES
        return self.base(blocks - 1) + self.win

    def base(self, block: int) -> int:
        """First input channel of ``block``'s window."""
        if self.og_p % LANES == 0:
            return block // (self.og_p // LANES) * self.cg_p
        return block * self.win

    @property
    def regroups_inputs(self) -> bool:
        return self.cg_p != self.cg

    @property
    def regroups_outputs(self) -> bool:
        return self.og_p != self.og


def group_plan(in_channels: int, out_channels: int, groups: int) -> GroupPlan:
    """The plan of a grouped conv (``groups`` divides both channel counts)."""
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ValueError(f"grouped conv needs channels divisible by groups, got C={in_channels}, O={out_channels}, groups={groups}")
    cg, og = in_channels // groups, out_channels // groups
    if og % LANES == 0 or LANES % og == 0:
        og_p = og
    elif og > LANES:
        og_p = round_up(og, LANES)
    else:
        og_p = 1 << (og - 1).bit_length()  # the next power of two divides 16
    per_block = max(1, LANES // og_p)  # groups per block: the window is cg_p * per_block
    cg_p = cg
    while (cg_p * per_block) % DEPTH:
        cg_p += 1
    return GroupPlan(groups, cg, og, cg_p, og_p)


def out_positions(plan: GroupPlan) -> torch.Tensor:
    """Kernel output channel of each of the conv's ``groups * og`` outputs."""
    o = torch.arange(plan.groups * plan.og)
    return o // plan.og * plan.og_p + o % plan.og


def pack_grouped_weight(w_q: torch.Tensor, plan: GroupPlan) -> np.ndarray:
    """``[O, cg, KH, KW]`` int8 codes to the kernel's ``[O'/16, KH, KW, win/4, 16, 4]``: output
    ``o`` (at kernel channel ``o'``) holds its group's weights at its block's window offset."""
    o_all, cg, kh, kw = w_q.shape
    dense = torch.zeros(plan.out_channels, plan.win, kh, kw, dtype=torch.int8)
    for o, o_p in enumerate(out_positions(plan).tolist()):
        start = (o // plan.og) * plan.cg_p - plan.base(o_p // LANES)
        dense[o_p, start:start + cg] = w_q[o].to(torch.int8)
    w = dense.reshape(plan.out_channels // LANES, LANES, plan.win // DEPTH, DEPTH, kh, kw).permute(0, 4, 5, 2, 1, 3)
    return np.ascontiguousarray(w.numpy())


def grouped_channel_params(w_q: torch.Tensor, x_zp: int, bias: Any, multiplier: Any, shift: Any, plan: GroupPlan) -> list[Any]:
    """bias_eff, multiplier and shift (int32 arrays) at the kernel's output channels;
    padded outputs get zero bias and multiplier (their codes are dropped)."""
    o = w_q.shape[0]
    pos = out_positions(plan)
    out = []
    for v, fill in ((bias_eff(w_q, x_zp, bias), 0), (multiplier, 0), (shift, 1)):
        t = torch.as_tensor(v, dtype=torch.int64).flatten()
        t = t.expand(o) if t.numel() == 1 else t
        full = torch.full((plan.out_channels,), fill, dtype=torch.int64)
        full[pos] = t
        out.append(full)
    return channel_params(out[0], out[1], out[2], plan.out_channels, plan.out_channels)


def qgrouped_func(
    shape: tuple[int, int, int, int], plan: GroupPlan, kernel: int | tuple[int, int], stride: int, padding: int,
    out_dtype: str = "uint8",
) -> tvm.tirx.PrimFunc:
    """PrimFunc ``(X u8 NHWC [B, H, W, plan.in_channels], W packed, bias, multiplier, shift, qp,
    Y NHWC [.., plan.out_channels])``: the windowed VNNI conv (block ``conv``, scheduled by
    :func:`schedule_qconv2d`)."""
    b, h, w_, c = shape
    kh, kw = kernel_hw(kernel)
    if c < plan.in_channels or plan.win % DEPTH:
        raise ValueError(f"grouped VNNI conv needs {plan.in_channels} input channels and a window of 4k, got C={c}, window {plan.win}")
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    n_out = plan.out_channels
    x = te.placeholder(shape, "uint8", name="X")
    wt = te.placeholder((n_out // LANES, kh, kw, plan.win // DEPTH, LANES, DEPTH), "int8", name="W")
    qp = te.placeholder((4,), "int32", name="qp")
    xp = pad_nhwc(x, padding, qp[0].astype("uint8"))
    rh, rw = te.reduce_axis((0, kh), name="rh"), te.reduce_axis((0, kw), name="rw")
    rc = te.reduce_axis((0, plan.win), name="rc")
    if plan.og_p % LANES == 0:
        def base(o: Any) -> Any:
            return o // LANES // (plan.og_p // LANES) * plan.cg_p
    else:
        def base(o: Any) -> Any:
            return o // LANES * plan.win
    acc = te.compute(
        (b, oh, ow, n_out),
        lambda n, i, j, o: te.sum(
            xp[n, i * stride + rh, j * stride + rw, base(o) + rc].astype("int32")
            * wt[o // LANES, rh, rw, rc // DEPTH, o % LANES, rc % DEPTH].astype("int32"),
            axis=[rh, rw, rc],
        ),
        name="conv",
    )
    bias, mult, shift, qp, y = requant_compute(acc, 3, out_dtype, qp)
    return te.create_prim_func([x, wt, bias, mult, shift, qp, y])


def regroup_inputs(x_nhwc: torch.Tensor, plan: GroupPlan) -> torch.Tensor:
    """NHWC codes ``[.., groups * cg]`` to the kernel's input: each group padded to ``cg_p``
    channels, then the whole padded to ``plan.in_channels`` (host version of the lowering's Relax ops)."""
    b, h, w_, _ = x_nhwc.shape
    x = x_nhwc.reshape(b, h, w_, plan.groups, plan.cg)
    x = torch.nn.functional.pad(x, (0, plan.cg_p - plan.cg)).reshape(b, h, w_, plan.groups * plan.cg_p)
    return torch.nn.functional.pad(x, (0, plan.in_channels - x.shape[-1]))


def qgrouped(
    x_q: torch.Tensor, x_zp: int, w_q: torch.Tensor, bias: torch.Tensor | None, multiplier: Any, shift: Any,
    out_zp: int, qmin: int = 0, qmax: int = 255, stride: int = 1, padding: int = 0, groups: int = 1,
    out_dtype: str = "uint8",
) -> torch.Tensor:
    """Same contract as :func:`integer_ref.conv2d` with ``groups`` (NCHW in and out), computed by
    the windowed VNNI kernel (untuned)."""
    if x_q.is_floating_point() or w_q.is_floating_point():
        raise TypeError("integer kernels take integer codes, not float tensors")
    o, _, kh, kw = w_q.shape
    plan = group_plan(x_q.shape[1], o, groups)
    x = regroup_inputs(x_q.to(torch.uint8).permute(0, 2, 3, 1).contiguous(), plan)
    b, h, w_, _ = x.shape
    oh, ow = conv_out_size(h, kh, stride, padding), conv_out_size(w_, kw, stride, padding)
    func = qgrouped_func(tuple(x.shape), plan, (kh, kw), stride, padding, out_dtype)
    kernel = build(schedule_qconv2d(func, ow).mod)
    out = to_tvm(np.zeros((b, oh, ow, plan.out_channels), out_dtype))
    params = grouped_channel_params(w_q, x_zp, bias, multiplier, shift, plan)
    kernel(to_tvm(x), to_tvm(pack_grouped_weight(w_q, plan)), *map(to_tvm, params), to_tvm(Requant(out_zp, qmin, qmax, out_dtype).qp(x_zp)), out)
    y = torch.from_numpy(out.numpy())[..., out_positions(plan)]
    return y.permute(0, 3, 1, 2).contiguous()


__all__ = ["GroupPlan", "group_plan", "pack_grouped_weight", "qgrouped", "qgrouped_func"]
