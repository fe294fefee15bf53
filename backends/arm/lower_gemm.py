"""Arm lowerings of the integer graph's conv and linear: dense convs and linears on the sdot
kernels, square depthwise convs on the vector depthwise kernel (both through
:mod:`lcpaq.backends.common.lower_blocked`). Other grouped convs have no Arm kernel: the backend
says so before assignment (``has_integer_kernel``), so they stay float."""
from __future__ import annotations

import torch.fx as fx

from lcpaq.backends.arm.dotprod import KERNELS
from lcpaq.backends.arm.lowerings import LOWERINGS
from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common import lower_blocked as lb
from lcpaq.backends.common.relax_lower import RelaxLowering, RVal


@LOWERINGS.register(iops.qconv2d)
def _qconv2d(lw: RelaxLowering, node: fx.Node) -> RVal:
    return lb.lower_qconv2d(lw, node, lambda lw_, n, x: lb.lower_conv(lw_, n, x, KERNELS),
                            lambda lw_, n, x: lb.lower_depthwise(lw_, n, x, KERNELS))


@LOWERINGS.register(iops.qlinear)
def _qlinear(lw: RelaxLowering, node: fx.Node) -> RVal:
    return lb.lower_linear(lw, node, KERNELS)
