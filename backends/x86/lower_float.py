"""x86 lowerings of the float ops an integer graph keeps: layers left in float and the ops
around them.

Conv and linear use the same hand-scheduled fp32 kernels that ``lcpaq profile`` times (NHWC,
16 output channels vectorized), so a mixed-precision build costs what the latency table says;
bias, ReLU/ReLU6, add and pooling are Relax ops, legalized by the default pipeline. 4-d float
values are NHWC, except model inputs and dequantized outputs (NCHW), converted where needed.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common.op_args import conv_geometry, conv_out_size, is_global_pool, keepdim, pool_args
from lcpaq.backends.common.relax_lower import NotThisForm, RelaxLowering, RVal, channels_of, logical, round_up
from lcpaq.backends.x86.fp32 import fp32_conv_func, fp32_dense_func, schedule_fp32_conv, schedule_fp32_dense
from lcpaq.backends.x86.lowerings import LOWERINGS
from lcpaq.backends.x86.vnni import LANES
from lcpaq.ir.errors import LoweringError

aten = torch.ops.aten


def _float(lw: RelaxLowering, node: fx.Node, i: int = 0) -> RVal:
    """Input ``i`` as a float value; 4-d ones in NHWC."""
    v = lw.env[node.args[i]]
    if v.dtype != "float32":
        raise NotThisForm(f"x86 float lowering reads float32 values, got {v.dtype}")
    if len(v.shape) == 4 and v.layout == "NCHW":
        return RVal(lw.bb.emit(relax.op.permute_dims(v.expr, [0, 2, 3, 1])), v.shape, "float32", v.shape[1], "NHWC")
    return v


def _same(v: RVal, expr: relax.Expr, lw: RelaxLowering) -> RVal:
    return RVal(lw.bb.emit(expr), v.shape, v.dtype, v.cp, v.layout)


def _bias_and_slice(lw: RelaxLowering, y: relax.Expr, n: int, n_pad: int, bias: torch.Tensor | None) -> relax.Expr:
    if n_pad != n:
        y = lw.bb.emit(relax.op.strided_slice(y, axes=[-1], begin=[0], end=[n]))
    if bias is not None:
        y = lw.bb.emit(relax.op.add(y, relax.const(bias.detach().float().numpy())))
    return y


def _geometry(geo: dict[str, int] | None, w_shape: tuple[int, ...]) -> str:
    if geo is None:
        return "per-axis stride / padding / dilation, transposed or not 2-d"
    return f"groups={geo['groups']}, dilation={geo['dilation']}, kernel {'x'.join(str(d) for d in w_shape[2:])}"


@LOWERINGS.register(aten.conv2d.default, aten.convolution.default)
def _conv(lw: RelaxLowering, node: fx.Node) -> RVal:
    """groups=1, undilated, square convs on the fp32 kernel; any other form: TVM's frontend."""
    if not all(isinstance(a, fx.Node) and a.op == "get_attr" for a in node.args[1:3] if a is not None):
        raise NotThisForm("x86 fp32 conv kernel takes constant weights")
    w, bias = lw.tensor(node.args[1]), lw.tensor(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
    geo = conv_geometry(node)
    if geo is None or geo["groups"] != 1 or geo["dilation"] != 1 or w.dim() != 4 or w.shape[2] != w.shape[3]:
        raise NotThisForm(f"x86 fp32 conv kernel takes groups=1, undilated, square convs ({_geometry(geo, w.shape)})")
    x = _float(lw, node)
    o, c, k, _ = w.shape
    s, p = geo["stride"], geo["padding"]
    b, _, h, wd = x.shape
    o16 = round_up(o, LANES)
    w_hwio = torch.zeros(k, k, c, o16)
    w_hwio[..., :o] = w.detach().float().permute(2, 3, 1, 0)
    oh, ow = conv_out_size(h, k, s, p), conv_out_size(wd, k, s, p)
    gv = lw.prim(("conv_fp32", (b, h, wd, c), o16, k, s, p), lambda: fp32_conv_func((b, h, wd, c), o16, k, s, p), schedule_fp32_conv)
    y = lw.call(gv, [x.expr, relax.const(w_hwio.numpy())], (b, oh, ow, o16), "float32")
    return RVal(_bias_and_slice(lw, y, o, o16, bias), (b, o, oh, ow), "float32", o, "NHWC")


@LOWERINGS.register(aten.linear.default)
def _linear(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Linear over the last logical dimension on the fp32 dense kernel; leading dimensions are rows."""
    v = lw.env[node.args[0]]
    if v.dtype != "float32" or not v.shape:
        raise NotThisForm(f"x86 fp32 dense kernel reads float32 values, got {v.dtype} {v.shape}")
    if not isinstance(node.args[1], fx.Node) or node.args[1].op != "get_attr":
        raise NotThisForm("x86 fp32 dense kernel takes a constant weight")
    x = logical(lw, v)
    w = lw.tensor(node.args[1])
    bias = lw.tensor(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
    n, k = w.shape
    lead = x.shape[:-1]
    m, n16 = int(np.prod(lead)) if lead else 1, round_up(n, LANES)
    expr = x.expr if len(x.shape) == 2 else lw.bb.emit(relax.op.reshape(x.expr, (m, k)))
    w_kn = torch.zeros(k, n16)
    w_kn[:, :n] = w.detach().float().T
    gv = lw.prim(("dense_fp32", m, n16, k), lambda: fp32_dense_func(m, n16, k), schedule_fp32_dense)
    y = _bias_and_slice(lw, lw.call(gv, [expr, relax.const(w_kn.numpy())], (m, n16), "float32"), n, n16, bias)
    shape = (*lead, n)
    if len(shape) != 2:
        y = lw.bb.emit(relax.op.reshape(y, shape))
    return RVal(y, shape, "float32", channels_of(shape), "NCHW")


@LOWERINGS.register(aten.relu.default, aten.relu_.default)
def _relu(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = _float(lw, node)
    return _same(x, relax.op.nn.relu(x.expr), lw)


@LOWERINGS.register(aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default)
def _hardtanh(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = _float(lw, node)
    args = list(node.args[1:3]) + [-1.0, 1.0][len(node.args) - 1:]  # hardtanh's defaults
    lo, hi = (0.0, 6.0) if node.target is aten.relu6.default else (float(args[0]), float(args[1]))
    return _same(x, relax.op.clip(x.expr, lo, hi), lw)


@LOWERINGS.register(aten.add.Tensor, aten.add_.Tensor)
def _add(lw: RelaxLowering, node: fx.Node) -> RVal:
    if len(node.args) != 2 or not all(isinstance(v, fx.Node) for v in node.args) or node.kwargs:
        raise NotThisForm("add with a scalar or alpha")  # the frontend's add
    a, b = _float(lw, node, 0), _float(lw, node, 1)
    if a.shape != b.shape:
        raise NotThisForm(f"broadcasting add of {a.shape} and {b.shape}")  # the frontend's add, on NCHW values
    return _same(a, relax.op.add(a.expr, b.expr), lw)


@LOWERINGS.register(aten.max_pool2d.default)
def _max_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = _float(lw, node)
    try:
        k, s, p = pool_args(node)
    except LoweringError as exc:
        raise NotThisForm(f"x86 max pooling takes square, undilated windows ({exc})") from exc
    b, c, h, w = x.shape
    oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
    y = relax.op.nn.max_pool2d(x.expr, pool_size=(k, k), strides=(s, s), padding=(p, p, p, p), layout="NHWC")
    return RVal(lw.bb.emit(y), (b, c, oh, ow), "float32", c, "NHWC")


@LOWERINGS.register(aten.adaptive_avg_pool2d.default, aten.mean.dim)
def _global_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    if not is_global_pool(node):
        raise NotThisForm(f"x86 lowers means over H, W of 4-d values only (dims {list(node.args[1]) if len(node.args) > 1 else None})")
    x = _float(lw, node)
    b, c = x.shape[:2]
    if node.target is aten.mean.dim and not keepdim(node):
        return RVal(lw.bb.emit(relax.op.mean(x.expr, axis=[1, 2], keepdims=False)), (b, c), "float32", c)
    return RVal(lw.bb.emit(relax.op.mean(x.expr, axis=[1, 2], keepdims=True)), (b, c, 1, 1), "float32", c, "NHWC")
