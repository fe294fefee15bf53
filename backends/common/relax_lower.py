"""The Relax lowering framework: an integer graph (:mod:`lcpaq.backends.common.integerize`)
becomes one TVM Relax module, through the lowering table of the target's backend.

A :class:`LoweringTable` maps integer-graph ops to lowerings (as TVM's per-target
``register_legalize`` tables); each family has one (``x86/`` ...), whose parent is
:data:`~lcpaq.backends.common.relax_frontend.COMMON` (lowerings every family shares). A lowering turns one node into Relax, usually a
``call_tir`` of a scheduled kernel, so the module is plumbing between the family's kernels;
equal kernels (same key) are added once. An op no lowering handles goes to TVM's own PyTorch
frontend converters (the table's fallback, :class:`~lcpaq.backends.common.relax_frontend.FrontendFallback`); an op
neither handles is a LoweringError naming the node. A lowering declines a form of its op it does
not handle by raising :class:`NotThisForm` with the reason; every node that runs in float is
recorded with why (:attr:`RelaxLowering.float_fallbacks`, ``BuiltModel.float_fallbacks``). A model
constant used as an operand (a position embedding) becomes a Relax constant. Measuring is
separate (:mod:`lcpaq.backends.common.measure`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.fx as fx
import tvm
from tvm import relax

from lcpaq.backends.common import integer_ops as iops
from lcpaq.ir.capture import get_attr
from lcpaq.ir.errors import LoweringError

if TYPE_CHECKING:  # pragma: no cover
    from lcpaq.backends.common.backend import Backend

#: ``relay.op.OpPattern.kOpaque``: Relax never fuses our kernels with their neighbours.
OPAQUE = 8
#: The attribute TVM's passes (dlight, MetaSchedule) read to leave a function's schedule alone.
SCHEDULED = "tirx.is_scheduled"
aten = torch.ops.aten
#: Ops that only convert codes to float at the edges of the integer part: not float compute.
_BOUNDARY_OPS = (iops.dequantize, iops.dequantize_channels)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class RVal:
    """A lowered value: ``expr`` with logical ``shape`` (NCHW for 4-d) and ``dtype``. 4-d values
    are stored NHWC unless ``layout`` says NCHW; ``cp`` is the stored channel count (dim 1 of the
    logical shape, or the last dimension), >= it when the backend pads channels."""

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


class _Env(dict):
    """Lowered values by node; a model constant (``get_attr``) used as an operand becomes a
    Relax constant in its logical layout on first use (a position embedding added to tokens)."""

    def __init__(self, lw: "RelaxLowering") -> None:
        super().__init__()
        self._lw = lw

    def __missing__(self, node: fx.Node) -> RVal:
        if not isinstance(node, fx.Node) or node.op != "get_attr":
            raise KeyError(node)
        t = self._lw.tensor(node).detach().contiguous()
        shape = tuple(int(d) for d in t.shape)
        v = RVal(relax.const(t.numpy()), shape, str(t.dtype).replace("torch.", ""), channels_of(shape), "NCHW")
        self[node] = v
        return v


class NotThisForm(Exception):
    """Raised by a lowering for a form of its op it does not handle (e.g. an int64 add): the op
    then goes to the parent table, and last to TVM's PyTorch frontend."""


Lowering = Callable[["RelaxLowering", fx.Node], RVal]


Fallback = Callable[["RelaxLowering", fx.Node], "RVal | None"]


class LoweringTable:
    """Lowerings by op (``call_function`` target); a miss falls through to ``parent``. The
    ``fallback`` (own, else the parent's) is tried last, for any op; None from it means no
    lowering at all."""

    def __init__(self, name: str, parent: "LoweringTable | None" = None, fallback: Fallback | None = None) -> None:
        self.name, self.parent, self._fallback = name, parent, fallback
        self._table: dict[Any, Lowering] = {}

    @property
    def fallback(self) -> Fallback | None:
        return self._fallback or (self.parent.fallback if self.parent is not None else None)

    def register(self, *targets: Any) -> Callable[[Lowering], Lowering]:
        """Decorator: the lowering of these ops in this table."""

        def wrap(fn: Lowering) -> Lowering:
            for t in targets:
                self._table[t] = fn
            return fn

        return wrap

    def chain(self, target: Any) -> list[Lowering]:
        """This table's lowering of ``target`` (if any), then its parents', most specific first."""
        own = [self._table[target]] if target in self._table else []
        return own + (self.parent.chain(target) if self.parent is not None else [])

    def ops(self) -> set[Any]:
        return set(self._table) | (self.parent.ops() if self.parent is not None else set())


class RelaxLowering:
    """Walks an integer graph in order and emits the Relax ``main`` function, asking ``backend``
    for its lowerings and kernel schedules."""

    def __init__(self, ig: fx.GraphModule, inputs: list[tuple[tuple[int, ...], str]], backend: "Backend",
                 tvm_target: tvm.target.Target | None = None, trials: int = 0) -> None:
        self.ig, self.inputs, self.backend, self.tvm_target, self.trials = ig, inputs, backend, tvm_target, trials
        self.bb = relax.BlockBuilder()
        self.env: dict[fx.Node, RVal] = _Env(self)
        self._funcs: dict[tuple, relax.GlobalVar] = {}
        self.state: dict[str, Any] = {}  # per-module state of lowerings (e.g. the frontend's importer)
        self.scalars: dict[fx.Node, int] = {}  # symbolic sizes of the captured graph, fixed by the build
        self.schedule_choices: dict[str, str] = {}  # tuned kernels: whether the tuned or the hand schedule ran faster
        self.float_fallbacks: dict[str, str] = {}  # source node -> why it runs in float (see :meth:`lower`)
        self.code_schedule = backend.code_schedule()  # of the code kernels (quantize, requantize, adds, pools...)

    def tensor(self, node: Any) -> torch.Tensor | None:
        return None if node is None else get_attr(self.ig, str(node.target))

    def prim(self, key: tuple, make: Callable[[], tvm.tirx.PrimFunc],
             schedule: Callable[[tvm.tirx.PrimFunc], Any] | None) -> relax.GlobalVar:
        """The module's function for ``key``, made, scheduled and added on first use; with no
        ``schedule`` the family's pipeline schedules it (a GPU's dlight rules)."""
        if key not in self._funcs:
            name = f"lcpaq_{key[0]}_{len(self._funcs)}"
            if schedule is None:
                func = make().with_attrs({"global_symbol": name, "op_pattern": OPAQUE})
            else:
                func = schedule(make()).mod["main"].with_attrs({"global_symbol": name, "op_pattern": OPAQUE, SCHEDULED: True})
            self._funcs[key] = self.bb.add_func(func, name)
        return self._funcs[key]

    def call(self, gv: relax.GlobalVar, args: list[relax.Expr], shape: tuple[int, ...], dtype: str) -> relax.Expr:
        return self.bb.emit(relax.call_tir(gv, relax.Tuple(args), relax.TensorType(shape, dtype)))

    def kernel_schedule(self, tag: str) -> Callable[[tvm.tirx.PrimFunc, Callable[[tvm.tirx.PrimFunc], Any]], Any]:
        """``schedule(func, hand)`` for a tunable kernel: the backend's hand schedule, or with
        trials its tuned one (see :meth:`Backend.kernel_schedule`)."""
        if self.trials <= 0 or self.tvm_target is None:
            return lambda func, hand: hand(func)
        return self.backend.kernel_schedule(tag, self.trials, self.tvm_target, self.schedule_choices)

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
                    elif node.op == "call_function" and self._size_arithmetic(node):  # e.g. batch * 4: static too
                        self.scalars[node] = node.target(*(self.scalars.get(a, a) for a in node.args))
                    elif node.op == "call_function":
                        self.env[node] = self.lower(node)
                    elif node.op == "output":
                        out = self.bb.emit_output(self.output(node.args[0]))
            self.bb.emit_func_output(out)
        return self.bb.get()

    def _size_arithmetic(self, node: fx.Node) -> bool:
        """Python arithmetic (``operator.mul``...) on sizes fixed by the build."""
        return getattr(node.target, "__module__", None) in ("_operator", "operator", "math") and not node.kwargs and all(
            a in self.scalars if isinstance(a, fx.Node) else isinstance(a, (int, float)) for a in node.args
        )

    def lower(self, node: fx.Node) -> RVal:
        """The backend's lowering of the node's op (then its parents'); else TVM's frontend
        converter. Every node that computes in float (other than a dequantize) or goes to the
        frontend is recorded in :attr:`float_fallbacks` with the reason."""
        declined: list[str] = []
        for fn in self.backend.lowerings.chain(node.target):
            try:
                v = fn(self, node)
            except NotThisForm as exc:
                declined.append(str(exc))
                continue
            if v.dtype == "float32" and node.target not in _BOUNDARY_OPS:
                self._note(node, f"{self.backend.name} float kernel")
            return v
        fallback = self.backend.lowerings.fallback
        v = fallback(self, node) if fallback is not None else None
        name = op_name(node)
        if v is None:
            src = node.meta.get("lcpaq.source", node.name)
            raise LoweringError(f"no TVM lowering for {name} (from node {src}); the integer graph runs it in float")
        why = "; ".join(d for d in declined if d) or f"{self.backend.name} has no lowering of {name}"
        self._note(node, f"TVM frontend converter ({why})")
        return v

    def _note(self, node: fx.Node, how: str) -> None:
        src = str(node.meta.get("lcpaq.source", node.name))
        reason = node.meta.get(iops.FLOAT_REASON) or f"no integer form of {op_name(node)}"
        self.float_fallbacks.setdefault(src, f"{reason}; {how}")

    def output(self, arg: Any) -> relax.Expr:
        if isinstance(arg, (tuple, list)):
            return relax.Tuple([self.output(a) for a in arg])
        v = self.env[arg]
        if v.dtype != "float32" or v.cp != v.channels:
            raise LoweringError(f"output {arg.name} is not a float tensor of its logical shape")
        if len(v.shape) == 4 and v.layout == "NHWC":
            return self.bb.emit(relax.op.permute_dims(v.expr, [0, 3, 1, 2]))
        return v.expr


def op_name(node: fx.Node) -> str:
    """``conv2d``, ``layer_norm``...: the op's name as errors and reasons print it."""
    name = getattr(node.target, "__name__", None) or str(node.target)
    return name.split(".")[0]


def logical(lw: RelaxLowering, v: RVal) -> RVal:
    """``v`` in its logical layout (4-d: NCHW) without channel padding."""
    if not v.shape or v.dtype == "tuple":
        return v
    expr = v.expr
    if len(v.shape) == 4 and v.layout == "NHWC":
        expr = lw.bb.emit(relax.op.permute_dims(expr, [0, 3, 1, 2]))
        if v.cp != v.channels:
            expr = lw.bb.emit(relax.op.strided_slice(expr, axes=[1], begin=[0], end=[v.channels]))
        return RVal(expr, v.shape, v.dtype, v.channels, "NCHW")
    if len(v.shape) != 4 and v.cp != v.shape[-1]:
        expr = lw.bb.emit(relax.op.strided_slice(expr, axes=[len(v.shape) - 1], begin=[0], end=[v.shape[-1]]))
        return RVal(expr, v.shape, v.dtype, v.shape[-1], v.layout)
    return v


def pad_last(lw: RelaxLowering, expr: relax.Expr, phys: tuple[int, ...], to: int) -> relax.Expr:
    """``expr`` (stored shape ``phys``) with its last dimension zero-padded to ``to``."""
    if phys[-1] >= to:
        return expr
    return lw.bb.emit(relax.op.nn.pad(expr, [0, 0] * (len(phys) - 1) + [0, to - phys[-1]]))


def nhwc(lw: RelaxLowering, v: RVal, multiple: int = 1, at_least: int = 0) -> RVal:
    """4-d ``v`` stored NHWC with a channel count that is a multiple of ``multiple`` and at least
    ``at_least`` (added channels are zero: they meet zero weights)."""
    if len(v.shape) != 4:
        raise LoweringError(f"expected a 4-d value, got {v.shape}")
    if v.layout == "NCHW":
        v = RVal(lw.bb.emit(relax.op.permute_dims(v.expr, [0, 2, 3, 1])), v.shape, v.dtype, v.channels, "NHWC")
    cp = round_up(max(v.cp, at_least), multiple)
    if cp == v.cp:
        return v
    return RVal(pad_last(lw, v.expr, v.phys, cp), v.shape, v.dtype, cp, "NHWC")


def codes(lw: RelaxLowering, node: fx.Node, i: int = 0) -> RVal:
    """Input ``i`` of ``node``, which must be integer codes."""
    v = lw.env[node.args[i]]
    if v.dtype not in iops.CODE_DTYPES or not v.shape:
        raise LoweringError(f"{node.name}: expects integer codes, got {v.dtype} {v.shape}")
    return v


def lower_to_relax(
    ig: fx.GraphModule, input_shapes: list[tuple[int, ...]], backend: "Backend", tvm_target: tvm.target.Target | None = None,
    trials: int = 0, input_dtypes: list[str] | None = None, schedule_choices: dict[str, str] | None = None,
    float_fallbacks: dict[str, str] | None = None,
) -> tvm.IRModule:
    """The Relax module ``main(*inputs) -> float32 output(s)`` of an integer graph, lowered by
    ``backend`` (inputs float32 unless ``input_dtypes`` says otherwise, e.g. int64 token ids).
    With ``trials`` > 0, tunable kernels are tuned for ``tvm_target``; which schedule each kept
    goes into ``schedule_choices``; every node that runs in float, with the reason, into
    ``float_fallbacks`` (source node name -> reason).

    Raises LoweringError naming the node for an op without a lowering."""
    dtypes = input_dtypes or ["float32"] * len(input_shapes)
    lowering = RelaxLowering(ig, [(tuple(int(d) for d in s), t) for s, t in zip(input_shapes, dtypes)], backend, tvm_target, trials)
    mod = lowering.run()
    if schedule_choices is not None:
        schedule_choices.update(lowering.schedule_choices)
    if float_fallbacks is not None:
        float_fallbacks.update(lowering.float_fallbacks)
    return mod
