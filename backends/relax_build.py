"""Lower an integer graph (:mod:`lcpaq.backends.integerize`) to one TVM Relax module.

Lowerings are registered per op (:func:`register_lowering`, as TVM's ``register_legalize``):
each turns one integer-graph node into a ``call_tir`` of a scheduled PrimFunc, so the Relax
module is plumbing between our kernels; equal kernels (same op, shapes and constants) are added
once. The lowerings of the integer graph's element-wise and pooling ops are here (kernels of
:mod:`tvm_elementwise`); conv, dense and matmul are in :mod:`relax_gemm` (VNNI kernels: hand
scheduled, or tuned by MetaSchedule with the records kept under ``cache_dir()/tuning``, shared
with ``lcpaq profile``); float ops in :mod:`relax_float`.

Activations are NHWC between kernels, uint8 (int32 into residual adds), channels padded to the
kernels' multiples (16 outputs; inputs to 4) and never sliced until the float output; weights,
biases and requantization parameters are constants of the module. Measuring is separate:
:mod:`lcpaq.backends.measure`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from lcpaq.backends import integer_ops as iops
from lcpaq.backends import tvm_elementwise as ew
from lcpaq.backends.relax_pipeline import SCHEDULED
from lcpaq.backends.tvm_vnni import DEPTH
from lcpaq.ir.capture import get_attr
from lcpaq.ir.errors import LoweringError

#: ``relay.op.OpPattern.kOpaque``: Relax never fuses our kernels with their neighbours.
OPAQUE = 8
aten = torch.ops.aten


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class RVal:
    """A lowered value: ``expr`` with logical ``shape`` (NCHW for 4-d) and ``dtype``. 4-d values
    are stored NHWC; ``cp`` is the stored channel count (dim 1 of the logical shape), >= it."""

    expr: relax.Expr
    shape: tuple[int, ...]
    dtype: str
    cp: int
    layout: str = "NHWC"  # of 4-d values; float model inputs and outputs are NCHW

    @property
    def phys(self) -> tuple[int, ...]:
        if len(self.shape) == 4 and self.layout == "NCHW":
            return self.shape
        if len(self.shape) == 4:
            b, _, h, w = self.shape
            return (b, h, w, self.cp)
        return (*self.shape[:-1], self.cp) if self.shape else self.shape

    @property
    def channels(self) -> int:
        """The logical channel count: dim 1 of a 4-d value, else the last dimension."""
        return channels_of(self.shape)


def channels_of(shape: tuple[int, ...]) -> int:
    """Dim 1 of a 4-d (NCHW) shape, else the last dimension (1 for a scalar)."""
    return shape[1] if len(shape) == 4 else (shape[-1] if shape else 1)


class NotThisForm(Exception):
    """Raised by a lowering for a form of its op it does not handle (e.g. an int64 add): the op
    then goes to TVM's PyTorch frontend (:class:`lcpaq.backends.relax_float.FrontendFallback`)."""


Lowering = Callable[["RelaxLowering", fx.Node], RVal]
LOWERINGS: dict[Any, Lowering] = {}


def register_lowering(*targets: Any) -> Callable[[Lowering], Lowering]:
    """Register the Relax lowering of integer-graph ops (``call_function`` targets)."""

    def wrap(fn: Lowering) -> Lowering:
        for t in targets:
            LOWERINGS[t] = fn
        return fn

    return wrap


class RelaxLowering:
    """Walks an integer graph in order and emits the Relax ``main`` function."""

    def __init__(self, ig: fx.GraphModule, inputs: list[tuple[tuple[int, ...], str]], trials: int = 0) -> None:
        self.ig, self.inputs, self.trials = ig, inputs, trials
        self.bb = relax.BlockBuilder()
        self.env: dict[fx.Node, RVal] = {}
        self._funcs: dict[tuple, relax.GlobalVar] = {}
        self._frontend: Any = None
        self.scalars: dict[fx.Node, int] = {}
        self.schedule_choices: dict[str, str] = {}  # tuned kernels: whether the tuned or the hand schedule ran faster  # symbolic sizes of the captured graph, fixed by the build

    def tensor(self, node: Any) -> torch.Tensor | None:
        return None if node is None else get_attr(self.ig, str(node.target))

    def prim(self, key: tuple, make: Callable[[], tvm.tirx.PrimFunc], schedule: Callable[[tvm.tirx.PrimFunc], Any]) -> relax.GlobalVar:
        """The module's function for ``key``, made, scheduled and added on first use."""
        if key not in self._funcs:
            name = f"lcpaq_{key[0]}_{len(self._funcs)}"
            func = schedule(make()).mod["main"]
            func = func.with_attrs({"global_symbol": name, "op_pattern": OPAQUE, SCHEDULED: True})
            self._funcs[key] = self.bb.add_func(func, name)
        return self._funcs[key]

    def call(self, gv: relax.GlobalVar, args: list[relax.Expr], shape: tuple[int, ...], dtype: str) -> relax.Expr:
        return self.bb.emit(relax.call_tir(gv, relax.Tuple(args), relax.TensorType(shape, dtype)))

    def kernel_schedule(self, tag: str) -> Callable[[tvm.tirx.PrimFunc], Any]:
        """Hand schedule (trials 0) or the tuned one, from or into the shared tuning cache."""
        def schedule(func: tvm.tirx.PrimFunc, hand: Callable[[tvm.tirx.PrimFunc], Any]) -> Any:
            if self.trials <= 0:
                return hand(func)
            from lcpaq.backends.tvm_tune import cached_schedule, faster_schedule
            from lcpaq.ir.fileio import cache_dir

            tuned = cached_schedule(func, self.trials, True, cache_dir() / "tuning" / f"{tag}-t{self.trials}")
            best, times = faster_schedule([tuned, hand(func)])
            self.schedule_choices[tag] = "tuned" if best is tuned else "hand"
            return best

        return schedule  # type: ignore[return-value]

    def run(self) -> tvm.IRModule:
        placeholders = [n for n in self.ig.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.inputs):
            raise LoweringError(f"the graph has {len(placeholders)} inputs but {len(self.inputs)} were given")
        params = [relax.Var(n.name, relax.TensorType(s, d)) for n, (s, d) in zip(placeholders, self.inputs)]
        with self.bb.function("main", params):
            with self.bb.dataflow():
                for node, var, (shape, dtype) in zip(placeholders, params, self.inputs):
                    self.env[node] = RVal(var, tuple(shape), dtype, channels_of(tuple(shape)), "NCHW")
                out = None
                for node in self.ig.graph.nodes:
                    if node.op == "call_function" and node.target is aten.sym_size.int:  # static here
                        self.scalars[node] = self.env[node.args[0]].shape[node.args[1]]
                    elif node.op == "call_function":
                        self.env[node] = self.lower(node)
                    elif node.op == "output":
                        out = self.bb.emit_output(self.output(node.args[0]))
            self.bb.emit_func_output(out)
        return self.bb.get()

    def lower(self, node: fx.Node) -> RVal:
        """Our registered lowering of the node's op; else TVM's frontend converter of it."""
        fn = LOWERINGS.get(node.target)
        if fn is not None:
            try:
                return fn(self, node)
            except NotThisForm:
                pass
        from lcpaq.backends.relax_float import FrontendFallback

        self._frontend = self._frontend or FrontendFallback()
        v = self._frontend.lower(self, node)
        if v is None:
            name = getattr(node.target, "__name__", str(node.target))
            src = node.meta.get("lcpaq.source", node.name)
            raise LoweringError(f"no TVM lowering for {name} (from node {src}); the integer graph runs it in float")
        return v

    def output(self, arg: Any) -> relax.Expr:
        if isinstance(arg, (tuple, list)):
            return relax.Tuple([self.output(a) for a in arg])
        v = self.env[arg]
        if v.dtype != "float32" or v.cp != v.channels:
            raise LoweringError(f"output {arg.name} is not a float tensor of its logical shape")
        if len(v.shape) == 4 and v.layout == "NHWC":
            return self.bb.emit(relax.op.permute_dims(v.expr, [0, 3, 1, 2]))
        return v.expr


def codes(lw: RelaxLowering, node: fx.Node, i: int = 0) -> RVal:
    v = lw.env[node.args[i]]
    if v.dtype not in ("uint8", "int32") or not v.shape:
        raise LoweringError(f"{node.name}: expects integer codes, got {v.dtype} {v.shape}")
    return v


@register_lowering(iops.quantize)
def _quantize(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = lw.env[node.args[0]]
    inv, zp = float(node.args[1]), int(node.args[2])
    qmin, qmax = int(node.kwargs["qmin"]), int(node.kwargs["qmax"])
    if not x.shape:
        raise LoweringError(f"{node.name}: quantize of a scalar is not lowered")
    # codes only matmuls read keep the logical layout, unpadded; others are NHWC / padded for the kernels
    plain = len(x.shape) == 4 and all(u.target is iops.qmatmul for u in node.users)
    if plain and x.layout == "NHWC":
        x = RVal(lw.bb.emit(relax.op.permute_dims(x.expr, [0, 3, 1, 2])), x.shape, x.dtype, x.cp, "NCHW")
    cp = x.shape[-1] if plain else round_up(x.channels, DEPTH)
    nhwc = len(x.shape) == 4 and x.layout == "NHWC"
    key = ("quantize", x.shape, inv, zp, qmin, qmax, cp, nhwc, plain)
    gv = lw.prim(key, lambda: ew.quantize_func(x.shape, inv, zp, qmin, qmax, cp, nhwc, plain), ew.schedule_elementwise)
    if plain:
        return RVal(lw.call(gv, [x.expr], x.shape, "uint8"), x.shape, "uint8", x.channels, "NCHW")
    phys = (x.shape[0], x.shape[2], x.shape[3], cp) if len(x.shape) == 4 else (*x.shape[:-1], cp)
    return RVal(lw.call(gv, [x.expr], phys, "uint8"), x.shape, "uint8", cp)


@register_lowering(iops.dequantize, iops.dequantize_channels)
def _dequantize(lw: RelaxLowering, node: fx.Node) -> RVal:
    """Codes to float32; 4-d results stay NHWC unless they are a model output (NCHW)."""
    x = codes(lw, node)
    c = x.channels
    plain = len(x.shape) == 4 and x.layout == "NCHW"  # codes in logical layout (matmul results)
    if plain:
        c = x.shape[-1]
    nhwc = len(x.shape) == 4 and not plain and not any(u.op == "output" for u in node.users)
    if node.target is iops.dequantize:
        scale, zp = float(node.args[1]), int(node.args[2])
        key = ("dequantize", x.phys, x.dtype, c, scale, zp, nhwc, plain)
        gv = lw.prim(key, lambda: ew.dequantize_func(x.phys, x.dtype, c, scale, zp, nhwc, plain), ew.schedule_elementwise)
        args = [x.expr]
    else:
        scales = lw.tensor(node.args[1]).float().numpy()
        key = ("dequantize_channels", x.phys, x.dtype, c, nhwc)
        gv = lw.prim(key, lambda: ew.dequantize_func(x.phys, x.dtype, c, [1.0] * c, 0, nhwc), ew.schedule_elementwise)
        args = [x.expr, relax.const(np.ascontiguousarray(scales))]
    if nhwc:
        b, _, h, w = x.shape
        return RVal(lw.call(gv, args, (b, h, w, c), "float32"), x.shape, "float32", c, "NHWC")
    return RVal(lw.call(gv, args, x.shape, "float32"), x.shape, "float32", x.channels, "NCHW")


@register_lowering(iops.requantize)
def _requantize(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    x_zp, mult, shift, out_zp = (int(a) for a in node.args[1:5])
    qmin, qmax, dtype = int(node.kwargs["qmin"]), int(node.kwargs["qmax"]), node.kwargs.get("out_dtype", "uint8")
    key = ("requantize", x.phys, x.dtype, x_zp, mult, shift, out_zp, qmin, qmax, dtype)
    gv = lw.prim(key, lambda: ew.requantize_func(x.phys, x.dtype, x_zp, mult, shift, out_zp, qmin, qmax, dtype), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], x.phys, dtype), x.shape, dtype, x.cp)


@register_lowering(iops.qadd)
def _qadd(lw: RelaxLowering, node: fx.Node) -> RVal:
    a, b = codes(lw, node, 0), codes(lw, node, 1)
    if a.phys != b.phys:
        raise LoweringError(f"{node.name}: residual add of stored shapes {a.phys} and {b.phys} (broadcasting is not lowered)")
    pa, pb = tuple(int(v) for v in node.args[2:5]), tuple(int(v) for v in node.args[5:8])
    out_zp, qmin, qmax = int(node.args[8]), int(node.kwargs["qmin"]), int(node.kwargs["qmax"])
    dtype = node.kwargs.get("out_dtype", "uint8")
    key = ("qadd", a.phys, a.dtype, b.dtype, pa, pb, out_zp, qmin, qmax, dtype)
    gv = lw.prim(key, lambda: ew.qadd_func(a.phys, a.dtype, b.dtype, pa, pb, out_zp, qmin, qmax, dtype), ew.schedule_elementwise)
    return RVal(lw.call(gv, [a.expr, b.expr], a.phys, dtype), a.shape, dtype, a.cp)


@register_lowering(iops.clamp)
def _clamp(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    qmin, qmax = int(node.args[1]), int(node.args[2])
    gv = lw.prim(("clamp", x.phys, x.dtype, qmin, qmax), lambda: ew.clamp_func(x.phys, x.dtype, qmin, qmax), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], x.phys, x.dtype), x.shape, x.dtype, x.cp)


@register_lowering(iops.max_pool2d)
def _max_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    k, s, p = (int(a) for a in node.args[1:4])
    b, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    gv = lw.prim(("max_pool", x.phys, x.dtype, k, s, p), lambda: ew.max_pool2d_func(x.phys, x.dtype, k, s, p), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], (b, oh, ow, x.cp), x.dtype), (b, c, oh, ow), x.dtype, x.cp)


@register_lowering(iops.global_avg_pool)
def _global_pool(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = codes(lw, node)
    b, c = x.shape[:2]
    gv = lw.prim(("global_avg_pool", x.phys, x.dtype), lambda: ew.global_avg_pool_func(x.phys, x.dtype), ew.schedule_elementwise)
    return RVal(lw.call(gv, [x.expr], (b, 1, 1, x.cp), x.dtype), (b, c, 1, 1), x.dtype, x.cp)


@register_lowering(aten.flatten.using_ints, aten.view.default, aten.reshape.default)
def _flatten(lw: RelaxLowering, node: fx.Node) -> RVal:
    x = lw.env[node.args[0]]
    out_shape = tuple(int(d) for d in node.meta["val"].shape) if "val" in node.meta else None
    if len(x.shape) == 4 and x.shape[2:] == (1, 1) and out_shape in (None, (x.shape[0], x.shape[1])):
        b = x.shape[0]
        return RVal(lw.bb.emit(relax.op.reshape(x.expr, (b, x.cp))), (b, x.shape[1]), x.dtype, x.cp)
    if x.cp == x.channels:  # no padding to drop: TVM's frontend reshapes the logical (NCHW) value
        raise NotThisForm(node.name)
    raise LoweringError(f"{node.name}: reshaping padded codes {x.shape} is lowered only for [B, C, 1, 1]")


def lower_to_relax(
    ig: fx.GraphModule, input_shapes: list[tuple[int, ...]], trials: int = 0, input_dtypes: list[str] | None = None,
    schedule_choices: dict[str, str] | None = None,
) -> tvm.IRModule:
    """The Relax module ``main(*inputs) -> float32 output(s)`` of an integer graph (inputs float32
    unless ``input_dtypes`` says otherwise, e.g. int64 token ids). With ``trials`` > 0, each
    conv / dense kernel is tuned and the faster of the tuned and the hand schedule is kept; which
    one, per kernel, goes into ``schedule_choices``.

    Raises LoweringError naming the node for an op without a lowering."""
    dtypes = input_dtypes or ["float32"] * len(input_shapes)
    lowering = RelaxLowering(ig, [(tuple(int(d) for d in s), t) for s, t in zip(input_shapes, dtypes)], trials)
    mod = lowering.run()
    if schedule_choices is not None:
        schedule_choices.update(lowering.schedule_choices)
    return mod


from lcpaq.backends import relax_float, relax_gemm  # noqa: E402,F401  (register their lowerings)
