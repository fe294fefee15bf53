"""Integer lowering of transformer glue: layer norm, softmax and GELU on codes (I-BERT style),
with the plumbing around them, for backends whose ``Conventions.integer_glue`` is set.

A value read by a glue op is wanted as :data:`WIDE` codes: int32 with zero point 0 at a scale
its producer picks so that nothing overflows and nothing is lost (a linear's accumulator scale,
a matmul's, a residual add's finer input scale, a glue op's own fixed point). Where an
activation quantizer also reads a wide value, it gets a requantization of it (one rounding
more than reading the float, far below the quantizer's step). Around the glue:

* ``x * c`` / ``x / c`` with a positive Python scalar ``c`` (attention's ``1 / sqrt(d)``)
  relabels the codes' scale, computing nothing;
* an embedding lookup in a constant table, read by glue (through the adds of token, type and
  position embeddings), gathers int32 codes of the table quantized at 2^-EMBED_BITS of its
  largest magnitude;
* a residual or mask add read only by a layer norm or softmax is fused into it (its ``add``
  argument, :func:`fuse_adds`): the int32 sum is never stored;
* an add of codes and a float tensor read by glue (attention's additive mask, a relative
  position bias) quantizes the float operand into the wide int32 domain (saturating: a mask of
  -3.4e38 becomes the most negative code) and adds as codes.

The ops themselves (:mod:`lcpaq.backends.common.integer_glue`) are exact integer arithmetic;
their fixed-point constants are computed here. A glue node whose input is float, or whose
form this module does not take (softmax over another axis, GELU's tanh form, a layer norm over
more than the last dimension), runs in float as before, with the reason in its meta.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.fx as fx

from lcpaq.backends.common import integer_glue as glue
from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.code_domains import int32_domain
from lcpaq.backends.common.integer_ref import quantize_multiplier
from lcpaq.ir.capture import get_attr
from lcpaq.ir.meta import CodeDomain

if TYPE_CHECKING:  # pragma: no cover
    from lcpaq.backends.common.integerize import Integerizer, Value

aten = torch.ops.aten


LAYER_NORM_OPS = {aten.layer_norm.default}
SOFTMAX_OPS = {aten.softmax.int, aten._softmax.default}
GELU_OPS = {aten.gelu.default}
GLUE_OPS = LAYER_NORM_OPS | SOFTMAX_OPS | GELU_OPS
SCALAR_OPS = {aten.mul.Tensor, aten.div.Tensor}
#: Range of float values quantized to int32 codes (float32 represents these bounds exactly).
FLOAT_TO_INT32 = (-(2**31 - 128), 2**31 - 128)
#: Codes of an embedding table read by glue reach 2^EMBED_BITS.
EMBED_BITS = 24
#: A wide layer-norm output uses codes up to 2^WIDE_LN_BITS (room for the residual adds after it).
WIDE_LN_BITS = 29


def glue_form(node: fx.Node) -> str | None:
    """Why ``node`` (a glue op) has no integer form; None if it has one."""
    ndim = getattr(node.args[0].meta.get("val"), "ndim", None) if isinstance(node.args[0], fx.Node) else None
    if node.target in SOFTMAX_OPS:
        dim = int(node.args[1])
        return None if ndim is not None and dim in (-1, ndim - 1) else "softmax over an axis other than the last"
    if node.target in GELU_OPS:
        return None if node.kwargs.get("approximate", "none") == "none" else "GELU's tanh approximation"
    shape = node.args[1]
    if len(shape) != 1:
        return "layer norm over more than the last dimension"
    if int(shape[0]) > glue.LN_MAX_WIDTH:
        return f"layer norm wider than {glue.LN_MAX_WIDTH}"
    for a in node.args[2:4]:
        if a is not None and not (isinstance(a, fx.Node) and a.op == "get_attr"):
            return "layer norm whose weight or bias is computed"
    return None


def reads_as_glue(user: fx.Node, node: fx.Node) -> bool:
    """``user`` is a glue op with an integer form reading ``node`` as its data input."""
    return user.op == "call_function" and user.target in GLUE_OPS and user.args[0] is node and glue_form(user) is None


def scalar_factor(node: fx.Node) -> float | None:
    """``c`` of ``x * c`` / ``x / c`` (as a factor) with a positive Python scalar, else None."""
    if node.op != "call_function" or node.target not in SCALAR_OPS or len(node.args) != 2 or node.kwargs:
        return None
    c = node.args[1]
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
        return None
    return float(c) if node.target is aten.mul.Tensor else 1.0 / float(c)


def _dyadic(real: float, what: str) -> tuple[int, int]:
    mult, shift = quantize_multiplier(real)
    if shift > 53:
        raise ValueError(f"{what}: scale ratio {real:g} is too small for the fixed-point output")
    return mult, shift


def _out_kwargs(out: CodeDomain) -> dict:
    return dict(out_zp=out.zero_point, qmin=out.qmin, qmax=out.qmax, out_dtype=out.dtype)


def lower_glue(iz: "Integerizer", node: fx.Node) -> "Value":
    """``node`` (a glue op) on codes, or in float when it has no integer form (why in its meta)."""
    x = iz.value(node.args[0])
    why = glue_form(node) if x.domain is not None else "its input is float"
    if why is None:
        target = iz.target_domain(node)
        out = target.as_domain() if hasattr(target, "as_domain") else target if isinstance(target, CodeDomain) else None
        try:
            if node.target in SOFTMAX_OPS:
                return _softmax(iz, node, x, out)
            if node.target in GELU_OPS:
                return _gelu(iz, node, x, out)
            return _layer_norm(iz, node, x, out)
        except ValueError as exc:  # a scale outside the fixed-point forms: float, with why
            why = str(exc)
    return iz.lower_float(node, f"no integer form of {str(node.target).split('.')[1]}: {why}")


def _softmax(iz: "Integerizer", node: fx.Node, x: "Value", out: CodeDomain | None) -> "Value":
    mult, shift = quantize_multiplier(x.domain.scale * 2**glue.EXP_FRAC / math.log(2))
    out = out or int32_domain(2.0**-glue.PROB_BITS)
    om, osh = _dyadic(2.0**-glue.PROB_BITS / out.scale, "softmax")
    args = (x.node, x.domain.zero_point, mult, shift, om, osh)
    return iz.emit(glue.qsoftmax, args, _out_kwargs(out), out, node)


def _gelu(iz: "Integerizer", node: fx.Node, x: "Value", out: CodeDomain | None) -> "Value":
    mult, shift = quantize_multiplier(x.domain.scale * 2**glue.GELU_FRAC)
    out = out or int32_domain(2.0**-glue.GELU_FRAC)
    om, osh = _dyadic(2.0**-glue.GELU_FRAC / out.scale, "GELU")
    table = iz.const(f"{node.name}_table", glue.GELU_TABLE.clone())
    args = (x.node, x.domain.zero_point, mult, shift, table, om, osh)
    return iz.emit(glue.qgelu, args, _out_kwargs(out), out, node)


def _layer_norm(iz: "Integerizer", node: fx.Node, x: "Value", out: CodeDomain | None) -> "Value":
    n = int(node.args[1][0])
    weight, bias = (node.args[i] if len(node.args) > i else None for i in (2, 3))
    eps = float(node.args[4]) if len(node.args) > 4 else 1e-5
    gamma = get_attr(iz.gm, str(weight.target)).detach().double() if weight is not None else torch.ones(n, dtype=torch.float64)
    beta = get_attr(iz.gm, str(bias.target)).detach().double() if bias is not None else torch.zeros(n, dtype=torch.float64)
    if out is None:  # wide: |y| <= max|gamma| sqrt(n) + max|beta| (|x_hat| <= sqrt(n))
        bound = float(gamma.abs().max()) * math.sqrt(n) + float(beta.abs().max())
        out = int32_domain((bound or 1.0) / 2**WIDE_LN_BITS)
    ratio = float(gamma.abs().max()) / out.scale
    frac = min(40, 30 - max(0, math.ceil(math.log2(ratio + 1))))
    if frac < 1:
        raise ValueError(f"layer norm weight {ratio:g} times its output scale has no 31-bit fixed point")
    g = torch.round(gamma / out.scale * 2**frac).to(torch.int64)
    b = torch.round(beta / out.scale * 2**frac)
    if bool((b.abs() >= 2**61).any()):
        raise ValueError("layer norm bias is too large for its output scale")
    eps_fx = min(round(eps * n * n * 2 ** (2 * glue.LN_SQRT_BITS) / x.domain.scale**2), glue.LN_MAX_EPS)
    args = (x.node, x.domain.zero_point, iz.const(f"{node.name}_g", g), iz.const(f"{node.name}_b", b.to(torch.int64)), frac, eps_fx)
    return iz.emit(glue.qlayer_norm, args, _out_kwargs(out), out, node)


def scaled(d: CodeDomain, c: float) -> CodeDomain:
    """The domain of codes of ``d`` multiplied by ``c`` > 0 (the codes do not change)."""
    return CodeDomain(d.scale * c, d.zero_point, d.qmin, d.qmax, d.dtype)


def as_int32_codes(iz: "Integerizer", v: "Value", dom: CodeDomain, src: fx.Node) -> "Value":
    """Float ``v`` quantized into int32 ``dom``, saturating (a -inf-like mask is the lowest code)."""
    lo, hi = FLOAT_TO_INT32
    kwargs = dict(qmin=lo, qmax=hi, out_dtype="int32")
    return iz.emit(iops.quantize, (v.node, 1.0 / dom.scale, 0), kwargs, CodeDomain(dom.scale, 0, lo, hi, "int32"), src)


def lower_embedding(iz: "Integerizer", node: fx.Node) -> "Value | None":
    """``embedding(table, ids)`` read by glue: a gather of int32 codes of the constant table
    (None: not this form, e.g. a computed table)."""
    w = iz.value(node.args[0])
    table = getattr(iz.root, str(w.node.target), None) if w.domain is None and w.node.op == "get_attr" else None
    if table is None or table.dim() != 2 or not table.is_floating_point():
        return None
    table = table.detach()
    dom = int32_domain((float(table.abs().max()) or 1.0) / 2**EMBED_BITS)
    codes = iz.const(f"{node.name}_codes", torch.round(table.double() / dom.scale).to(torch.int32))
    ids = iz.value(node.args[1]).node
    return iz.emit(aten.embedding.default, (codes, ids, *node.args[2:]), dict(node.kwargs), dom, node)


def fuse_adds(graph: fx.Graph) -> None:
    """Each ``qadd`` whose one reader is a softmax or layer norm (as its input) becomes that op's
    ``add`` argument (``(b, a_zp, a_mult, a_shift, b_zp, b_mult, b_shift, out_zp, qmin, qmax)``)."""
    for node in list(graph.nodes):
        if node.target not in (glue.qsoftmax, glue.qlayer_norm) or "add" in node.kwargs:
            continue
        add = node.args[0]
        if not (isinstance(add, fx.Node) and add.target is iops.qadd and len(add.users) == 1 and add.kwargs.get("out_dtype") == "int32"):
            continue
        a, b, *params = add.args
        node.args = (a, *node.args[1:])
        node.update_kwarg("add", (b, *params, add.kwargs["qmin"], add.kwargs["qmax"]))
        graph.erase_node(add)
