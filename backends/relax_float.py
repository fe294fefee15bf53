"""Relax lowerings of the float ops an integer graph keeps: layers left at 32 bits (or 16, which
has no integer kernel here) and the ops around them.

Conv and linear use the same hand-scheduled fp32 kernels that ``lcpaq profile`` times (NHWC,
16 output channels vectorized), so a mixed-precision build costs what the latency table says;
bias, ReLU/ReLU6, add and pooling are Relax ops, legalized by the default pipeline. 4-d float
values are NHWC, except model inputs and dequantized outputs (NCHW), converted where needed.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.relax_build import NotThisForm, RelaxLowering, RVal, channels_of, register_lowering, round_up
from lcpaq.backends.tvm_vnni import LANES
from lcpaq.ir.errors import LoweringError

aten = torch.ops.aten


def _float(lw: RelaxLowering, node: fx.Node, i: int = 0) -> RVal:
    """Input ``i`` as a float value; 4-d ones in NHWC."""
    v = lw.env[node.args[i]]
    if v.dtype != "float32":
        raise NotThisForm(f"{node.name}: {node.target} on {v.dtype}")
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


@register_lowering(aten.conv2d.default, aten.convolution.default)
def _conv(lw: RelaxLowering, node: fx.Node) -> RVal:
    from lcpaq.backends.profile import _fp32_conv_func, _schedule_fp32_conv, conv_geometry

    x = _float(lw, node)
    w, bias = lw.tensor(node.args[1]), lw.tensor(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
    geo = conv_geometry(node)
    o, c, k, k2 = w.shape
    if geo is None or geo["groups"] != 1 or geo["dilation"] != 1 or k != k2:
        raise LoweringError(f"{node.name}: only dense (groups=1), undilated, square float convs are lowered")
    s, p = geo["stride"], geo["padding"]
    b, _, h, wd = x.shape
    o16 = round_up(o, LANES)
    w_hwio = torch.zeros(k, k, c, o16)
    w_hwio[..., :o] = w.detach().float().permute(2, 3, 1, 0)
    oh, ow = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    gv = lw.prim(("conv_fp32", (b, h, wd, c), o16, k, s, p), lambda: _fp32_conv_func((b, h, wd, c), o16, k, s, p), _schedule_fp32_conv)
    y = lw.call(gv, [x.expr, relax.const(w_hwio.numpy())], (b, oh, ow, o16), "float32")
    return RVal(_bias_and_slice(lw, y, o, o16, bias), (b, o, oh, ow), "float32", o, "NHWC")


@register_lowering(aten.linear.default)
def _linear(lw: RelaxLowering, node: fx.Node) -> RVal:
    from lcpaq.backends.profile import _fp32_dense_func, _schedule_fp32_dense

    x = _float(lw, node)
    if len(x.shape) != 2:
        raise LoweringError(f"{node.name}: float linear is lowered for 2-d inputs only, got {x.shape}")
    w = lw.tensor(node.args[1])
    bias = lw.tensor(node.args[2]) if len(node.args) > 2 and node.args[2] is not None else None
    n, k = w.shape
    m, n16 = x.shape[0], round_up(n, LANES)
    w_kn = torch.zeros(k, n16)
    w_kn[:, :n] = w.detach().float().T
    gv = lw.prim(("dense_fp32", m, n16, k), lambda: _fp32_dense_func(m, n16, k), _schedule_fp32_dense)
    y = lw.call(gv, [x.expr, relax.const(w_kn.numpy())], (m, n16), "float32")
    return RVal(_bias_and_slice(lw, y, n, n16, bias), (m, n), "float32", n)


@register_lowering(aten.relu.default, aten.relu_.default)
def _relu(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = _float(lw, node)
    return _same(x, relax.op.nn.relu(x.expr), lw)


@register_lowering(aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default)
def _hardtanh(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = _float(lw, node)
    lo, hi = (0.0, 6.0) if node.target is aten.relu6.default else (float(node.args[1]), float(node.args[2]))
    return _same(x, relax.op.clip(x.expr, lo, hi), lw)


@register_lowering(aten.add.Tensor, aten.add_.Tensor)
def _add(lw: RelaxLowering, node: fx.Node) -> RVal:
    if len(node.args) != 2 or not all(isinstance(v, fx.Node) for v in node.args) or node.kwargs:
        raise NotThisForm(node.name)  # scalars, alpha: the frontend's add
    a, b = _float(lw, node, 0), _float(lw, node, 1)
    if a.shape != b.shape:
        raise NotThisForm(node.name)  # broadcasting: the frontend's add, on NCHW values
    return _same(a, relax.op.add(a.expr, b.expr), lw)


@register_lowering(aten.max_pool2d.default)
def _max_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    from lcpaq.backends.op_args import pool_args

    x = _float(lw, node)
    k, s, p = pool_args(node)
    b, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    y = relax.op.nn.max_pool2d(x.expr, pool_size=(k, k), strides=(s, s), padding=(p, p, p, p), layout="NHWC")
    return RVal(lw.bb.emit(y), (b, c, oh, ow), "float32", c, "NHWC")


@register_lowering(aten.adaptive_avg_pool2d.default, aten.mean.dim)
def _global_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    from lcpaq.backends.op_args import is_global_pool, keepdim

    x = _float(lw, node)
    if len(x.shape) != 4 or not is_global_pool(node):
        raise LoweringError(f"{node.name}: only global average pooling over H, W is lowered")
    b, c = x.shape[:2]
    if node.target is aten.mean.dim and not keepdim(node):
        return RVal(lw.bb.emit(relax.op.mean(x.expr, axis=[1, 2], keepdims=False)), (b, c), "float32", c)
    return RVal(lw.bb.emit(relax.op.mean(x.expr, axis=[1, 2], keepdims=True)), (b, c, 1, 1), "float32", c, "NHWC")


class FrontendFallback:
    """Float ops without a lowering of ours, converted by TVM's own PyTorch frontend (its
    ``ExportedProgramImporter`` converter for the same ATen op), on NCHW values. These are the
    glue of transformer models (layer norm, softmax, GELU, attention reshapes, embeddings, the
    activation x activation matmuls): Relax ops legalized by the default pipeline, untuned."""

    def __init__(self) -> None:
        from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

        self.importer = ExportedProgramImporter()

    def lower(self, lw: RelaxLowering, node: fx.Node) -> RVal | None:
        name = getattr(node.target, "__name__", None)
        convert = self.importer.convert_map.get(name) if name else None
        if convert is None:
            return None
        env = {}
        for arg in node.all_input_nodes:
            if arg in lw.scalars:
                env[arg] = lw.scalars[arg]
                continue
            if arg.op == "get_attr":  # a constant of the model (embedding table, position ids, ...)
                env[arg] = relax.const(lw.tensor(arg).detach().contiguous().numpy())
                continue
            v = lw.env[arg]
            if v.dtype in ("uint8", "int32") and v.cp != v.channels:
                raise LoweringError(f"{node.name}: {name} reads padded integer codes")
            expr = v.expr
            if len(v.shape) == 4 and v.layout == "NHWC":
                expr = lw.bb.emit(relax.op.permute_dims(expr, [0, 3, 1, 2]))
            env[arg] = expr
        self.importer.block_builder, self.importer.env = lw.bb, env
        try:
            out = convert(node)
        except Exception as exc:  # noqa: BLE001 (the frontend raises assorted errors for unsupported forms)
            raise LoweringError(f"{node.name}: TVM's frontend cannot convert {name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        ty = getattr(out, "ty", None)
        if isinstance(ty, relax.TupleType):  # e.g. unbind: read by getitem nodes, converted the same way
            return RVal(out, (), "tuple", 0, "NCHW")
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            raise LoweringError(f"{node.name}: {name} converts to a non-tensor value")
        shape = tuple(int(d) for d in ty.shape)
        return RVal(out, shape, str(ty.dtype), channels_of(shape), "NCHW")


@register_lowering(aten.to.device, aten.alias.default, aten.lift_fresh_copy.default, aten.detach.default)
def _identity(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Copies and device moves: the value itself (a dtype change is a cast)."""
    x = lw.env[node.args[0]]
    dtype = node.kwargs.get("dtype") or next((a for a in node.args[1:] if isinstance(a, torch.dtype)), None)
    if dtype is None or str(dtype).replace("torch.", "") == x.dtype:
        return x
    return RVal(lw.bb.emit(relax.op.astype(x.expr, str(dtype).replace("torch.", ""))), x.shape, str(dtype).replace("torch.", ""), x.cp, x.layout)


@register_lowering(aten.where.ScalarOther)
def _where_scalar(lw: RelaxLowering, node: fx.Node) -> RVal:
    """``where(cond, x, scalar)`` (attention masks)."""
    cond, x = lw.env[node.args[0]], lw.env[node.args[1]]
    if len(x.shape) == 4 and x.layout == "NHWC" or len(cond.shape) == 4 and cond.layout == "NHWC":
        raise NotThisForm(f"{node.name}: where on NHWC values")
    other = relax.const(node.args[2], x.dtype)
    shape = tuple(int(d) for d in torch.broadcast_shapes(cond.shape, x.shape))
    c = cond.expr if cond.dtype == "bool" else lw.bb.emit(relax.op.astype(cond.expr, "bool"))  # frontend masks may be int
    return RVal(lw.bb.emit(relax.op.where(c, x.expr, other)), shape, x.dtype, shape[-1] if shape else 1, "NCHW")
