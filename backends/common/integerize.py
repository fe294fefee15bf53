"""Integer lowering: a fake-quantized graph becomes an *integer graph* of :mod:`integer_ops`.

The input is the output of the ``fake-quant`` rewrite: every quantized layer reads its
activations through an activation ``FakeQuantize`` and its weight through a weight one. The
result is a new ``fx.GraphModule`` (the input is not changed) in which

* a quantized conv / linear is one ``qconv2d`` / ``qlinear``: activation codes of the backend's
  type (:class:`~lcpaq.backends.common.backend.Conventions`: uint8 for x86 VNNI, int8 for ARM
  sdot), int8 weight codes, int32 bias in units of ``x_scale * w_scale[c]``, int32 accumulation and per-channel
  dyadic requantization (HAWQ-V3) straight into the codes its consumers read, so the graph has
  no float between layers;
* the *target domain* of a layer's output is found by looking through the ops that do not change
  it (ReLU, ReLU6, max pooling, global average pooling, flatten, dropout) to the activation
  quantizer that reads it; a ReLU / ReLU6 becomes a clamp of codes, fused into the producer;
* a residual ``add`` whose result is quantized is a ``qadd``: a conv feeding it requantizes to
  int32 on a scale 2^8 finer than the add's output domain, the other input is rescaled, and the
  sum is requantized once (integer only);
* ``x @ W`` with a constant 2-d ``W`` is a ``qlinear`` (weight ``W^T``);
* float enters once (``quantize`` of the model input) and leaves once (``dequantize`` of each
  output); layers left in float (32 bits), quantized convs without an integer form (dilated,
  per-axis stride or padding, not 2-d: they run on their fake-quantized weights), and any op
  without an integer form, run in float on dequantized inputs, each node marked with the reason
  (:mod:`lcpaq.backends.common.integer_forms`; backends may not lower every float op). With
  wide kernels (``Conventions.wide_bits``) 16-bit activations are int16 codes and a dense conv or
  linear up to 16 bits is a *wide* ``qconv2d`` / ``qlinear`` (int64 sums, :mod:`integerize_bounds`);
  without, 16-bit layers run in float on fake-quantized weights (16-bit activation rounding not applied);
* with integer glue (the backend's ``Conventions.integer_glue``), layer norm, softmax and GELU
  on codes are integer ops too, and the values they read are int32 codes
  (:mod:`lcpaq.backends.common.integerize_glue`).

Running the integer graph is the integer reference (the oracle the TVM build is checked against);
it matches the fake-quantized graph within the rounding of the requantizations.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.fx as fx

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.backend import Conventions
from lcpaq.backends.common import integer_forms as forms
from lcpaq.backends.common import integerize_glue as gl
from lcpaq.backends.common import integerize_bounds as iw
from lcpaq.backends.common.code_domains import WIDE, Fine, act_domain, finer, int32_domain, two_values, wide_add_domain
from lcpaq.backends.common.integer_forms import (
    CLAMP_OPS, DOMAIN_PRESERVING, GLOBAL_POOL_OPS, IDENTITY_OPS, RELU6_OPS, RELU_OPS, RESHAPE_OPS, TRANSPOSE_OPS,
)
from lcpaq.backends.common.integer_ref import (
    INT32_MAX, INT32_MIN, quantize_multiplier,
)
from lcpaq.backends.common.op_args import conv_args, is_global_pool, keepdim, pool_args, pool_reason, source_location
from lcpaq.ir.capture import get_attr
from lcpaq.ir.errors import LoweringError
from lcpaq.ir.layers import ADD_OPS, CONV_OPS, LINEAR_OPS, MATMUL_OPS, is_quantizer
from lcpaq.ir.meta import DOMAIN, QUANTIZER, CodeDomain
from lcpaq.ir.qops import FakeQuantize
from lcpaq.ir.quantizer import quantize as quantize_codes

aten = torch.ops.aten


@dataclass
class Value:
    """A lowered value: ``node`` in the integer graph; ``domain`` None means float32."""

    node: fx.Node
    domain: CodeDomain | None


class Integerizer:
    """Builds the integer graph of one fake-quantized graph module (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, conventions: Conventions, glue: bool | None = None) -> None:
        self.gm = gm
        self.glue = conventions.integer_glue if glue is None else glue
        self.bits, self.act_dtype = conventions.integer_bits, conventions.act_dtype
        self.wide_bits = conventions.wide_bits or self.bits
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[fx.Node, Value] = {}
        self._targets: dict[fx.Node, CodeDomain | Fine | None] = {}
        self._consts = 0

    # -- helpers -------------------------------------------------------------------------------
    def const(self, label: str, tensor: torch.Tensor) -> fx.Node:
        name = f"c{self._consts}_{label}"
        self._consts += 1
        self.root.register_buffer(name, tensor)
        return self.graph.get_attr(name)

    def emit(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], domain: CodeDomain | None, src: fx.Node) -> Value:
        node = self.graph.call_function(fn, args, kwargs)
        node.meta["lcpaq.source"] = src.name
        if "stack_trace" in src.meta:
            node.meta["stack_trace"] = src.meta["stack_trace"]
        if domain is not None:
            DOMAIN.set(node, domain)
        return Value(node, domain)

    def module(self, node: fx.Node) -> FakeQuantize:
        return self.gm.get_submodule(str(node.target))

    def target_domain(self, node: fx.Node) -> CodeDomain | Fine | None:
        """Where ``node``'s output should be requantized to: the activation quantizer that reads
        it through domain-preserving ops, a :class:`Fine` domain when only a residual add reads
        it, WIDE when glue reads it (directly or through an add), or None (no single domain:
        dequantize to float)."""
        if node in self._targets:
            return self._targets[node]
        found: list[CodeDomain | Fine | None] = []
        for user in node.users:
            if is_quantizer(user) and QUANTIZER.get(user).role == "act":
                fq = self.module(user)
                found.append(act_domain(fq, self.act_dtype) if fq.spec.bits <= self.wide_bits else None)
            elif self.glue and gl.reads_as_glue(user, node):
                found.append(WIDE)
            elif self.glue and gl.scalar_factor(user) is not None and user.args[0] is node:
                t = self.target_domain(user)
                found.append(gl.scaled(t, 1 / gl.scalar_factor(user)) if isinstance(t, CodeDomain) else t if t is WIDE else None)
            elif user.op == "call_function" and user.target in ADD_OPS and not two_values(user):
                found.append(None)  # a model constant or a scalar added: a float add
            elif user.op == "call_function" and (user.target in ADD_OPS or user.target in GLOBAL_POOL_OPS and is_global_pool(user)):
                # a sum or a mean has a narrower range than its inputs: they get finer int32 codes
                found.append(finer(self.target_domain(user)))
            elif user.op == "call_function" and user.target in DOMAIN_PRESERVING:
                found.append(self.target_domain(user))
            else:
                found.append(None)
        plain = {d for d in found if isinstance(d, CodeDomain)}
        if None in found or not found:
            result = None
        elif WIDE in found:  # glue reads it: int32 codes, requantized for any quantizer reading it
            result = WIDE
        elif len(set(found)) == 1:
            result = found[0]
        else:  # an add also reads it: the add rescales whatever domain the other readers want
            result = plain.pop() if len(plain) == 1 else None
        self._targets[node] = result
        return result

    def out_domain(self, node: fx.Node, wide: Callable[[], CodeDomain]) -> CodeDomain | None:
        """The domain ``node`` writes: its target's (a :class:`Fine` one as int32), ``wide()`` for WIDE."""
        t = self.target_domain(node)
        return wide() if t is WIDE else t.as_domain() if isinstance(t, Fine) else t

    def to_codes(self, v: Value, src: fx.Node) -> Value:
        if v.domain is None:
            raise LoweringError(f"{src.name}{source_location(src)}: needs integer codes but its input is float")
        return v

    def to_float(self, v: Value, src: fx.Node) -> Value:
        if v.domain is None:
            return v
        return self.emit(iops.dequantize, (v.node, v.domain.scale, v.domain.zero_point), {}, None, src)

    def into_domain(self, v: Value, dom: CodeDomain, src: fx.Node) -> Value:
        """``v`` as codes of ``dom`` (quantize a float, rescale other codes, reuse equal ones)."""
        if v.domain is None:
            kwargs = dict(qmin=dom.qmin, qmax=dom.qmax, out_dtype=dom.dtype)
            return self.emit(iops.quantize, (v.node, 1.0 / dom.scale, dom.zero_point), kwargs, dom, src)
        d = v.domain
        if (d.scale, d.zero_point, d.dtype) == (dom.scale, dom.zero_point, dom.dtype) and dom.qmin <= d.qmin <= d.qmax <= dom.qmax:
            return v  # already codes of dom (a fused ReLU only narrowed their range)
        mult, shift = quantize_multiplier(v.domain.scale / dom.scale)
        args = (v.node, v.domain.zero_point, mult, shift, dom.zero_point)
        return self.emit(iops.requantize, args, dict(qmin=dom.qmin, qmax=dom.qmax, out_dtype=dom.dtype), dom, src)

    # -- lowering ------------------------------------------------------------------------------
    def run(self) -> fx.GraphModule:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                new = self.graph.placeholder(node.name)
                new.meta.update({k: v for k, v in node.meta.items() if k in ("val", "lcpaq.shape")})
                self.env[node] = Value(new, None)
            elif node.op == "get_attr":
                continue  # constants are read where they are used
            elif node.op == "call_module" and is_quantizer(node):
                fq = self.module(node)
                if QUANTIZER.get(node).role == "weight":  # read by its layer; as a float constant otherwise
                    with torch.no_grad():
                        w = fq(get_attr(self.gm, str(node.args[0].target)))
                    self.env[node] = Value(self.const(f"{node.name}_fq", w.detach().clone()), None)
                elif fq.spec.bits > self.wide_bits:  # no integer kernel: float (16-bit rounding not applied)
                    self.env[node] = self.to_float(self.value(node.args[0]), node)
                else:
                    self.env[node] = self.into_domain(self.value(node.args[0]), act_domain(fq, self.act_dtype), node)
            elif node.op == "output":
                outs = fx.node.map_arg(node.args[0], lambda n: self.to_float(self.value(n), n).node)
                self.graph.output(outs)
            elif node.op == "call_function":
                self.env[node] = self.lower_call(node)
            else:
                raise LoweringError(f"{node.name}{source_location(node)}: cannot lower a {node.op} node ({node.target})")
        if self.glue:
            gl.fuse_adds(self.graph)
        self.graph.lint()
        return fx.GraphModule(self.root, self.graph, class_name="IntegerGraph")

    def value(self, node: Any) -> Value:
        if isinstance(node, fx.Node) and node.op == "get_attr":
            return Value(self.const(str(node.target).replace(".", "_"), get_attr(self.gm, str(node.target))), None)
        return self.env[node]

    def lower_call(self, node: fx.Node) -> Value:
        t = node.target
        if (t in CONV_OPS | LINEAR_OPS or forms.constant_matmul(self.gm, node)) and self._quantized_layer(node):
            why = forms.layer_reason(self.gm, node)
            return self.lower_layer(node) if why is None else self.lower_float(node, why)
        if t in MATMUL_OPS and self._quantized_acts(node):
            return self.lower_matmul(node)
        if t in RELU_OPS | CLAMP_OPS and self.value(node.args[0]).domain is not None:
            return self.lower_clamp(node)
        if t in ADD_OPS and self.target_domain(node) is not None and self._codes_add(node):
            return self.lower_add(node)
        if self.glue and t in gl.GLUE_OPS:
            return gl.lower_glue(self, node)
        if self.glue and t is aten.embedding.default and self.target_domain(node) is WIDE:
            v = gl.lower_embedding(self, node)
            if v is not None:
                return v
        if self.glue and t in gl.SCALAR_OPS and gl.scalar_factor(node) and self.value(node.args[0]).domain is not None:
            x = self.value(node.args[0])
            return Value(x.node, gl.scaled(x.domain, gl.scalar_factor(node)))
        if t in IDENTITY_OPS:
            return self.value(node.args[0])
        x = self.value(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
        if x is not None and x.domain is not None:
            if t is aten.max_pool2d.default and pool_reason(node) is None:
                k, s, p = pool_args(node)
                return self.emit(iops.max_pool2d, (x.node, k, s, p), {}, x.domain, node)
            if t in GLOBAL_POOL_OPS and is_global_pool(node):
                pooled = self.emit(iops.global_avg_pool, (x.node,), {}, x.domain, node)
                if t is aten.mean.dim and not keepdim(node):
                    return self.emit(aten.flatten.using_ints, (pooled.node, 1), {}, x.domain, node)
                return pooled
            if t in RESHAPE_OPS | TRANSPOSE_OPS:
                sizes = fx.node.map_arg(node.args[1:], lambda a: self.value(a).node)  # symbolic sizes too
                return self.emit(t, (x.node, *sizes), dict(node.kwargs), x.domain, node)
        return self.lower_float(node, self._float_reason(node))

    def lower_float(self, node: fx.Node, reason: str | None = None) -> Value:
        """Any other op, in float32 on dequantized inputs (a quantized layer reads its
        fake-quantized weight); ``reason`` (why there is no integer form) goes into the node's meta."""
        def arg(a: Any) -> Any:
            return self.to_float(self.value(a), node).node

        args = fx.node.map_arg(node.args, arg)
        kwargs = fx.node.map_arg(node.kwargs, arg)
        v = self.emit(node.target, args, kwargs, None, node)
        v.node.meta[iops.FLOAT_REASON] = reason or self._float_reason(node)
        return v

    def _float_reason(self, node: fx.Node) -> str:
        """Why ``node`` runs in float (it reaches :meth:`lower_float`)."""
        def codes(a: fx.Node) -> bool:
            return a.op != "get_attr" and a in self.env and self.value(a).domain is not None

        return forms.float_reason(self.gm, node, self.bits, codes, self.wide_bits)

    def _quantized_layer(self, node: fx.Node) -> bool:
        """Both inputs quantized within the integer kernels' width (the wide kernels' for a dense
        conv or a linear)."""
        x, w = node.args[0], node.args[1]
        if not all(isinstance(a, fx.Node) and is_quantizer(a) for a in (x, w)):
            return False
        bits = max(self.module(a).spec.bits for a in (x, w))
        return bits <= self.bits or bits <= self.wide_bits and forms.wide_form(node)

    def _quantized_acts(self, node: fx.Node) -> bool:
        """Both operands read through activation quantizers with an integer form."""
        ops = node.args[:2]
        return len(node.args) == 2 and all(
            isinstance(a, fx.Node) and is_quantizer(a) and QUANTIZER.get(a).role == "act" and self.module(a).spec.bits <= self.wide_bits
            and getattr(a.meta.get("val"), "ndim", 2) >= 2  # a 1-d operand (a dot product) stays float
            for a in ops
        )

    def lower_matmul(self, node: fx.Node) -> Value:
        """An activation x activation matmul (attention): ``qmatmul`` on the codes of both operands,
        requantized into its readers' domain, or int32 dequantized to float when there is none."""
        a, b = (self.to_codes(self.value(arg), node) for arg in node.args[:2])
        acc_scale = a.domain.scale * b.domain.scale
        bits, holds = 31, acc_scale
        if "int16" in (a.domain.dtype, b.domain.dtype):  # int64 sums: the multiplier sized to their bound
            bits, holds = iw.matmul_bits(node, a.domain, b.domain)
        target = self.out_domain(node, lambda: int32_domain(holds))
        out = int32_domain(holds) if target is None else target  # no reader: int32 codes, dequantized
        mult, shift = quantize_multiplier(acc_scale / out.scale, bits)
        args = (a.node, b.node, a.domain.zero_point, b.domain.zero_point, mult, shift)
        v = self.emit(iops.qmatmul, args, dict(out_zp=out.zero_point, qmin=out.qmin, qmax=out.qmax, out_dtype=out.dtype), out, node)
        return v if target is not None else self.emit(iops.dequantize, (v.node, out.scale, 0), {}, None, node)

    def _codes_add(self, node: fx.Node) -> bool:
        """Both operands are codes, or (read by glue) one is and the other a float tensor."""
        a, b = node.args[0], node.args[1]
        if len(node.args) > 2 or node.kwargs.get("alpha", 1) != 1 or not all(isinstance(v, fx.Node) for v in (a, b)):
            return False
        codes = [self.value(v).domain is not None for v in (a, b)]
        return all(codes) or (any(codes) and self.target_domain(node) is WIDE)

    def lower_layer(self, node: fx.Node) -> Value:
        xq, wq = node.args[0], node.args[1]
        x = self.to_codes(self.value(xq), node)
        fq_w = self.module(wq)
        weight = get_attr(self.gm, str(wq.args[0].target))
        spec = fq_w.spec
        if spec.bits > self.wide_bits or not spec.symmetric:
            raise LoweringError(f"{node.name}{source_location(node)}: {spec.bits}-bit weights have no integer kernel")
        wide = spec.bits > 8 or x.domain.dtype == "int16"
        w_codes = quantize_codes(weight.detach(), fq_w.scale, fq_w.zero_point, spec).to(torch.int16 if spec.bits > 8 else torch.int8)
        linear = node.target in LINEAR_OPS or node.target in MATMUL_OPS
        if node.target in MATMUL_OPS:  # x @ W[K, N]: the linear with weight W^T (channels last)
            w_codes = w_codes.T.contiguous()
        out_ch = w_codes.shape[0]
        w_scale = fq_w.scale.flatten().expand(out_ch) if fq_w.scale.numel() == 1 else fq_w.scale.flatten()
        acc_scale = x.domain.scale * w_scale.double()
        bias_arg = node.args[2] if len(node.args) > 2 and node.target not in MATMUL_OPS else None
        bias = None
        if isinstance(bias_arg, fx.Node):
            real = get_attr(self.gm, str(bias_arg.target)).detach().double()
            bias = torch.round(real / acc_scale)
            if bool((bias.abs() > (2**46 if wide else INT32_MAX)).any()):
                raise LoweringError(f"{node.name}{source_location(node)}: bias does not fit {'2^46' if wide else 'int32'} at scale x_scale * w_scale")
            bias = bias.to(torch.int64 if wide else torch.int32)
        if wide:
            return iw.lower_wide_layer(self, node, x, (w_codes, w_scale, acc_scale, bias), linear)
        out = self.out_domain(node, lambda: int32_domain(float(acc_scale.max())))
        if out is None:  # no quantized reader: accumulators in int32, dequantized per channel below
            mult = torch.full((out_ch,), 2**30, dtype=torch.int64)
            shift = torch.full((out_ch,), 30, dtype=torch.int64)
            kw_out = dict(out_zp=0, qmin=INT32_MIN, qmax=INT32_MAX, out_dtype="int32")
        else:
            mult, shift = iw.layer_requant_params(x.domain, w_codes, w_scale, bias, out)
            kw_out = dict(out_zp=out.zero_point, qmin=out.qmin, qmax=out.qmax, out_dtype=out.dtype)
        v = self.emit_layer(node, x, (w_codes, bias, mult, shift), kw_out, out, linear)
        if out is None:
            scales = self.const(f"{node.name}_acc_scale", acc_scale.float())
            axis = -1 if linear else 1
            return self.emit(iops.dequantize_channels, (v.node, scales), {"axis": axis}, None, node)
        return v

    def emit_layer(self, node: fx.Node, x: Value, params: tuple[torch.Tensor | None, ...], kw_out: dict[str, Any],
                   out: CodeDomain | None, linear: bool) -> Value:
        """The ``qlinear`` / ``qconv2d`` of ``node`` on ``x``: weight, bias, multiplier and shift
        (``params``) as constants, the output domain's arguments in ``kw_out``."""
        names = ("w", "b", "m", "s")
        tensors = tuple(None if t is None else self.const(f"{node.name}_{n}", t) for n, t in zip(names, params))
        if linear:
            return self.emit(iops.qlinear, (x.node, *tensors), dict(x_zp=x.domain.zero_point, **kw_out), out, node)
        return self.emit(iops.qconv2d, (x.node, *tensors), dict(x_zp=x.domain.zero_point, **conv_args(node), **kw_out), out, node)

    def lower_clamp(self, node: fx.Node) -> Value:
        x = self.value(node.args[0])
        dom = x.domain
        if node.target in RELU_OPS:
            lo, hi = 0.0, None
        elif node.target in RELU6_OPS:
            lo, hi = 0.0, 6.0
        else:
            lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", node.kwargs.get("min"))
            hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", node.kwargs.get("max"))
        qmin = dom.qmin if lo is None else max(dom.qmin, dom.code(float(lo)))
        qmax = dom.qmax if hi is None else min(dom.qmax, dom.code(float(hi)))
        clamped = replace(dom, qmin=qmin, qmax=max(qmin, qmax))
        producer = x.node
        if producer.target in iops.CLAMPED_OPS and len(node.args[0].users) == 1 and not producer.users:
            producer.update_kwarg("qmin", clamped.qmin)  # fused: the producer clamps
            producer.update_kwarg("qmax", clamped.qmax)
            DOMAIN.set(producer, clamped)
            return Value(producer, clamped)
        return self.emit(iops.clamp, (x.node, clamped.qmin, clamped.qmax), {}, clamped, node)

    def lower_add(self, node: fx.Node) -> Value:
        values = [self.value(arg) for arg in node.args[:2]]
        out = self.out_domain(node, lambda: wide_add_domain([v.domain for v in values if v.domain is not None]))
        terms = []
        for v in values:
            if v.domain is None:  # read by glue: a float operand (a mask) joins as int32 codes
                v = gl.as_int32_codes(self, v, out, node)
            mult, shift = quantize_multiplier(v.domain.scale / out.scale)
            terms.append((v.node, v.domain.zero_point, mult, shift))
        (a, a_zp, a_m, a_s), (b, b_zp, b_m, b_s) = terms
        args = (a, b, a_zp, a_m, a_s, b_zp, b_m, b_s, out.zero_point)
        return self.emit(iops.qadd, args, dict(qmin=out.qmin, qmax=out.qmax, out_dtype=out.dtype), out, node)


def integerize(gm: fx.GraphModule, conventions: Conventions = Conventions(), glue: bool | None = None) -> fx.GraphModule:
    """The integer graph of a fake-quantized graph module (``gm`` is left unchanged), in the
    code types of a backend's ``conventions`` (default: uint8 activations, 8-bit kernels).

    Guarantees: every quantized conv / linear is one ``qconv2d`` / ``qlinear`` node reading
    ``conventions.act_dtype`` codes; values between quantized layers are codes (of that type,
    or int32 into a residual add); each code-producing node carries ``lcpaq.domain``. ``glue``
    turns integer glue on or off (None: as ``conventions.integer_glue`` says). Raises
    LoweringError naming the node and op for a quantizer with no integer form."""
    return Integerizer(gm, conventions, glue).run()
