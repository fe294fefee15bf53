"""x86 lowerings of the integer graph's GEMM ops: dense convs and linears on the VNNI kernels,
depthwise convs on the vector depthwise kernel (both through
:mod:`lcpaq.backends.common.lower_blocked`), other grouped convs on the windowed VNNI conv
(:mod:`lcpaq.backends.x86.int8_grouped`), wide (16-bit) layers on the ``vpdpwssd`` kernels
(:mod:`lcpaq.backends.x86.lower_wide`). With ``trials`` the int8 conv and dense kernels are tuned
(:meth:`RelaxLowering.kernel_schedule`). Hand schedules use the tiles of the target's CPU
(:mod:`lcpaq.backends.x86.tiles`).
"""
from __future__ import annotations

import torch.fx as fx
from tvm import relax

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common import lower_blocked as lb
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import RelaxLowering, RVal, codes, logical, nhwc, pad_last
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86 import int8_grouped as gw
from lcpaq.backends.x86.lower_wide import is_wide, lower_wide_conv, lower_wide_linear
from lcpaq.backends.x86.lowerings import LOWERINGS
from lcpaq.backends.x86.tiles import VnniTiles, target_tiles
from lcpaq.backends.x86.vnni import LANES, VNNI_BLOCKING
from lcpaq.ir.errors import LoweringError

def vnni_kernels(tiles: VnniTiles) -> lb.BlockedKernels:
    """The x86 family's GEMM kernels: VNNI blocking, hand schedules with the CPU's tiles, 16-channel
    depthwise vectors."""
    return lb.BlockedKernels(VNNI_BLOCKING, lambda func: t8.schedule_qdense(func, tiles),
                             lambda func, width: t8.schedule_qconv2d(func, width, tiles), LANES)


@LOWERINGS.register(iops.qconv2d)
def _qconv2d(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Dense convs on the VNNI conv, depthwise ones on the vector depthwise kernel, other grouped
    ones on the windowed VNNI conv; any kernel size."""
    x = codes(lw, node)
    if x.dtype not in ("uint8", "int16") or len(x.shape) != 4:
        raise LoweringError(f"{node.name}: conv input must be uint8 (or int16) NCHW codes")
    if is_wide(x, lw.tensor(node.args[1])):
        return lower_wide_conv(lw, node, x)
    groups = int(node.kwargs.get("groups", 1))
    if groups == 1:
        return lb.lower_conv(lw, node, x, vnni_kernels(target_tiles(lw.tvm_target)))
    if lb.is_depthwise(x, lw.tensor(node.args[1]), groups):
        return lb.lower_depthwise(lw, node, x, vnni_kernels(target_tiles(lw.tvm_target)))
    return _qgrouped(lw, node, x, groups)


def _qgrouped(lw: RelaxLowering, node: fx.Node, x: RVal, groups: int) -> RVal:
    """Grouped conv on the windowed VNNI kernel (hand schedule); inputs and outputs regrouped in
    Relax when the group sizes need it (see :class:`~lcpaq.backends.x86.int8_grouped.GroupPlan`)."""
    w, bias, mult, shift = (lw.tensor(a) for a in node.args[1:5])
    stride, pad, rq = int(node.kwargs["stride"]), int(node.kwargs["padding"]), lb.requant_of(node)
    dtype = rq.out_dtype
    o, _, kh, kw = w.shape
    plan = gw.group_plan(x.shape[1], o, groups)
    b, c, h, wd = x.shape
    if plan.regroups_inputs:  # [.., groups * cg] -> [.., groups * cg_p]
        x = nhwc(lw, logical(lw, x))
        e = lw.bb.emit(relax.op.reshape(x.expr, (b, h, wd, groups, plan.cg)))
        e = pad_last(lw, e, (b, h, wd, groups, plan.cg), plan.cg_p)
        x = RVal(lw.bb.emit(relax.op.reshape(e, (b, h, wd, groups * plan.cg_p))), (b, c, h, wd), x.dtype, groups * plan.cg_p)
    x = nhwc(lw, x, 1, plan.in_channels)
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(wd, kw, stride, pad)
    n_out = plan.out_channels
    gv = lw.prim(("qgrouped", (b, h, wd, x.cp), plan, (kh, kw), stride, pad, dtype),
                 lambda: gw.qgrouped_func((b, h, wd, x.cp), plan, (kh, kw), stride, pad, dtype),
                 lambda f: t8.schedule_qconv2d(f, ow, target_tiles(lw.tvm_target)))
    x_zp = int(node.kwargs["x_zp"])
    params = [relax.const(a) for a in gw.grouped_channel_params(w, x_zp, bias, mult, shift, plan)]
    args = [x.expr, relax.const(gw.pack_grouped_weight(w, plan)), *params, relax.const(rq.qp(x_zp))]
    y = lw.call(gv, args, (b, oh, ow, n_out), dtype)
    if not plan.regroups_outputs:
        return RVal(y, (b, o, oh, ow), dtype, n_out)
    # kernel channel g * og_p + j holds output g * og + j: drop the padded outputs of each group
    y = lw.bb.emit(relax.op.strided_slice(y, axes=[3], begin=[0], end=[groups * plan.og_p]))
    y = lw.bb.emit(relax.op.reshape(y, (b, oh, ow, groups, plan.og_p)))
    y = lw.bb.emit(relax.op.strided_slice(y, axes=[4], begin=[0], end=[plan.og]))
    return RVal(lw.bb.emit(relax.op.reshape(y, (b, oh, ow, o))), (b, o, oh, ow), dtype, o)


@LOWERINGS.register(iops.qlinear)
def _qlinear(lw: RelaxLowering, node: fx.Node) -> RVal:
    if is_wide(codes(lw, node), lw.tensor(node.args[1])):
        return lower_wide_linear(lw, node)
    return lb.lower_linear(lw, node, vnni_kernels(target_tiles(lw.tvm_target)))
