"""Lowerings every backend shares: TVM's own PyTorch-frontend converters for float ops that no
lowering of the family handles (:class:`FrontendFallback`), and plain Relax lowerings of copies,
casts, masks and selects registered in :data:`COMMON` (where the frontend's converter is wrong or
cannot read our layouts). Values reach the frontend in their logical layout, channel padding dropped.
"""
from __future__ import annotations

import torch
import torch.fx as fx
from tvm import relax

from lcpaq.backends.common.relax_lower import LoweringTable, NotThisForm, RelaxLowering, RVal, channels_of, logical
from lcpaq.ir.errors import LoweringError

aten = torch.ops.aten

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
            env[arg] = logical(lw, lw.env[arg]).expr  # NCHW, channel padding dropped
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


def frontend_fallback(lw: RelaxLowering, node: fx.Node) -> RVal | None:
    """The fallback of :data:`COMMON`: one :class:`FrontendFallback` per lowered module."""
    fb = lw.state.setdefault("frontend", FrontendFallback())
    return fb.lower(lw, node)


#: Lowerings every family shares (plain Relax ops), with TVM's frontend as the last resort;
#: the parent of every family's table.
COMMON = LoweringTable("common", fallback=frontend_fallback)


@COMMON.register(aten.to.device, aten.alias.default, aten.lift_fresh_copy.default, aten.detach.default)
def _identity(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Copies and device moves: the value itself (a dtype change is a cast)."""
    x = lw.env[node.args[0]]
    dtype = node.kwargs.get("dtype") or next((a for a in node.args[1:] if isinstance(a, torch.dtype)), None)
    if dtype is None or str(dtype).replace("torch.", "") == x.dtype:
        return x
    return RVal(lw.bb.emit(relax.op.astype(x.expr, str(dtype).replace("torch.", ""))), x.shape, str(dtype).replace("torch.", ""), x.cp, x.layout)


@COMMON.register(aten.where.ScalarOther)
def _where_scalar(lw: RelaxLowering, node: fx.Node) -> RVal:
    """``where(cond, x, scalar)`` (attention masks)."""
    cond, x = lw.env[node.args[0]], lw.env[node.args[1]]
    if len(x.shape) == 4 and x.layout == "NHWC" or len(cond.shape) == 4 and cond.layout == "NHWC":
        raise NotThisForm(f"{node.name}: where on NHWC values")
    other = relax.const(node.args[2], x.dtype)
    shape = tuple(int(d) for d in torch.broadcast_shapes(cond.shape, x.shape))
    c = cond.expr if cond.dtype == "bool" else lw.bb.emit(relax.op.astype(cond.expr, "bool"))  # frontend masks may be int
    return RVal(lw.bb.emit(relax.op.where(c, x.expr, other)), shape, x.dtype, shape[-1] if shape else 1, "NCHW")


@COMMON.register(aten.select.int)
def _select(lw: RelaxLowering, node: fx.Node) -> RVal:
    """``x[..., i, ...]`` (TVM's frontend converter passes a negative ``i`` to ``take`` as is,
    which reads out of bounds: ``out[:, -1]`` after an LSTM); the index is normalized here."""
    x = logical(lw, lw.env[node.args[0]])
    if not x.shape or x.dtype == "tuple":
        raise NotThisForm("select of a scalar or tuple")
    dim, index = int(node.args[1]) % len(x.shape), int(node.args[2])
    if not -x.shape[dim] <= index < x.shape[dim]:
        raise LoweringError(f"{node.name}: index {index} is out of range for dimension {dim} of size {x.shape[dim]}")
    shape = x.shape[:dim] + x.shape[dim + 1:]
    y = lw.bb.emit(relax.op.take(x.expr, relax.const(index % x.shape[dim], "int64"), axis=dim))
    return RVal(y, shape, x.dtype, channels_of(shape), "NCHW")
