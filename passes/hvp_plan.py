"""How Hessian-vector products get through each node of a graph: the probe plan.

Double backward needs every op on the way from the probed tensors to the loss to have a
twice-differentiable backward. PyTorch lacks one for a few ops: ``hardsigmoid`` (so every
MobileNetV3-style squeeze-excite), the fused CPU attention kernel behind
``scaled_dot_product_attention`` (Llama-style blocks, modern ViTs), ``cdist``, custom ops whose
registered backward is itself not differentiable. :func:`plan_hvp` finds them node by node, on
one batch, by differentiating each node alone twice, and decides per node:

- ``decomposed``: the node is evaluated through a twice-differentiable decomposition
  (:data:`REPLACEMENTS`, else ``torch._decomp``'s table), checked to give the op's own values;
- ``finite_difference``: no usable decomposition, but a gradient: probes take a central
  difference of gradients instead of double backward;
- no gradient at all: one ConfigError naming the op and the model's source line.

The graph itself is never changed: the plan is applied by the interpreter that probes it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
from torch._decomp import decomposition_table
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

from lcpaq.ir.errors import ConfigError

aten = torch.ops.aten
DOUBLE_BACKWARD, DECOMPOSED, FINITE_DIFFERENCE = "double-backward", "decomposed", "finite-difference"
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_PLAIN = ("_operator", "operator", "builtins")  # getitem and the like: nothing to differentiate


@dataclass(frozen=True)
class HvpPlan:
    """Node names evaluated through a decomposition, node names that force finite differences,
    and, per such node, (op, node and source line, what is done), for the user."""

    decomposed: frozenset[str] = frozenset()
    finite_difference: tuple[str, ...] = ()
    nodes: tuple[tuple[str, str, str], ...] = ()

    @property
    def method(self) -> str:
        """How Hessian-vector products are taken: double backward (of the graph as captured, or
        with some nodes decomposed) or a finite difference of gradients."""
        if self.finite_difference:
            return FINITE_DIFFERENCE
        return DECOMPOSED if self.decomposed else DOUBLE_BACKWARD

    @property
    def notes(self) -> tuple[str, ...]:
        """One line per planned node."""
        return tuple(f"{op} ({where}) has no double backward; {action}" for op, where, action in self.nodes)

    def summary(self) -> str:
        """One line for all planned nodes, grouped by op: the first node's source line, and a count."""
        groups: dict[tuple[str, str], list[str]] = {}
        for op, where, action in self.nodes:
            groups.setdefault((op, action), []).append(where)
        return "; ".join(
            f"{op} ({wheres[0]}{f', and {len(wheres) - 1} more node(s)' if len(wheres) > 1 else ''}) "
            f"has no double backward; {action}" for (op, action), wheres in groups.items())


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    """``scaled_dot_product_attention`` through PyTorch's math reference (plain matmul/softmax);
    a boolean mask becomes additive first, as the op itself does before dispatching."""
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, -math.inf)
    return aten._scaled_dot_product_attention_math.default(
        q, k, v, attn_mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa)[0]


def _logsumexp(q, k, mask, is_causal: bool, scale) -> torch.Tensor:
    """The fused kernels' second output: logsumexp of each query's scaled, masked scores."""
    if k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.size(-1)) if scale is None else scale)
    if is_causal:
        keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, -math.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    return torch.logsumexp(scores, -1)


def _fused(q, k, v, mask, dropout_p, is_causal, scale, extra: int) -> tuple:
    out = _sdpa(q, k, v, mask, dropout_p, is_causal, scale=scale, enable_gqa=q.size(-3) != k.size(-3))
    lse = _logsumexp(q, k, mask, is_causal, scale)
    empty = q.new_empty(0)
    tail = (empty, empty, q.size(-2), k.size(-2), empty, empty, empty) if extra == 7 else (empty,) * extra
    return (out, lse, *tail)


def _flash_cpu(q, k, v, dropout_p=0.0, is_causal=False, *, attn_mask=None, scale=None):
    return _fused(q, k, v, attn_mask, dropout_p, is_causal, scale, 0)


def _flash(q, k, v, dropout_p=0.0, is_causal=False, return_debug_mask=False, *, scale=None):
    return _fused(q, k, v, None, dropout_p, is_causal, scale, 7)


def _efficient(q, k, v, attn_bias, compute_log_sumexp, dropout_p=0.0, is_causal=False, *, scale=None):
    return _fused(q, k, v, attn_bias, dropout_p, is_causal, scale, 2)


def _cudnn(q, k, v, attn_bias=None, compute_log_sumexp=True, dropout_p=0.0, is_causal=False,
           return_debug_mask=False, *, scale=None):
    return _fused(q, k, v, attn_bias, dropout_p, is_causal, scale, 7)


# Twice-differentiable stand-ins for ops without double backward; torch._decomp is asked for others.
REPLACEMENTS: dict[Any, Callable[..., Any]] = {
    aten.hardsigmoid.default: lambda x: torch.clamp(x + 3, 0, 6) / 6,
    aten.hardswish.default: lambda x: x * torch.clamp(x + 3, 0, 6) / 6,
    aten.scaled_dot_product_attention.default: _sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu.default: _flash_cpu,
    aten._scaled_dot_product_flash_attention.default: _flash,
    aten._scaled_dot_product_efficient_attention.default: _efficient,
    aten._scaled_dot_product_cudnn_attention.default: _cudnn,
    aten._scaled_dot_product_fused_attention_overrideable.default: _cudnn,
}


def replacement(target: Any) -> Callable[..., Any] | None:
    """A decomposition of ``target`` meant to be differentiable twice, or None."""
    return REPLACEMENTS.get(target) or decomposition_table.get(target)


def source_line(node: fx.Node) -> str:
    """``file:line (`code`)`` of the model code that made ``node``, from export's stack trace:
    the innermost frame outside torch (an ``nn.Hardsigmoid`` is named where the model calls it)."""
    lines = (node.meta.get("stack_trace") or "").strip().splitlines()
    frames = []
    for i, text in enumerate(lines):
        text = text.strip()
        if text.startswith('File "'):
            path, _, rest = text[6:].partition('", line ')
            code = lines[i + 1].strip() if i + 1 < len(lines) and not lines[i + 1].strip().startswith('File "') else ""
            frames.append((path, rest.split(",")[0], code))
    if not frames:
        return ""
    outside = [f for f in frames if not os.path.abspath(f[0]).startswith(_TORCH_DIR)]
    path, line, code = (outside or frames)[-1]
    return f"{path}:{line} (`{code}`)" if code else f"{path}:{line}"


def _where(node: fx.Node) -> str:
    where = source_line(node)
    return f"node {node.name}{', ' + where if where else ''}"


def _orders(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[int, str]:
    """How many times (0, 1 or 2) ``fn`` can be differentiated w.r.t. the tensors of
    ``args``/``kwargs`` that require grad, and torch's message where it fails."""
    leaves, spec = tree_flatten((args, kwargs))
    grad_at = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.requires_grad]
    inputs = [leaves[i].detach().clone().requires_grad_(True) for i in grad_at]
    for i, x in zip(grad_at, inputs):
        leaves[i] = x
    a, kw = tree_unflatten(leaves, spec)
    gen = torch.Generator().manual_seed(0)
    noise = lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device)  # noqa: E731
    try:
        outs = [o for o in tree_leaves(fn(*a, **kw)) if isinstance(o, torch.Tensor) and o.requires_grad]
        if not outs:
            return 2, ""
        grads = torch.autograd.grad(outs, inputs, [noise(o) for o in outs], create_graph=True, allow_unused=True)
    except Exception as exc:  # autograd raises RuntimeError; a decomposition may raise anything
        return 0, _first_line(exc)
    dot = sum((g * noise(g)).sum() for g in grads if g is not None and g.requires_grad)
    if not isinstance(dot, torch.Tensor):
        return 2, ""  # the op is linear in what is probed
    try:
        torch.autograd.grad(dot, inputs, allow_unused=True)
    except Exception as exc:
        return 1, _first_line(exc)
    return 2, ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _same_values(a: Any, b: Any) -> bool:
    xs, ys = tree_leaves(a), tree_leaves(b)
    if len(xs) != len(ys):
        return False
    for x, y in zip(xs, ys):
        if isinstance(x, torch.Tensor) and x.numel() and x.is_floating_point():
            if not isinstance(y, torch.Tensor) or x.shape != y.shape:
                return False
            scale = float(x.detach().abs().nan_to_num(posinf=0.0, neginf=0.0).max()) or 1.0
            if not torch.allclose(x, y, rtol=1e-4, atol=1e-5 * scale, equal_nan=True):
                return False
    return True


class _Planner(fx.Interpreter):
    """Runs the graph once (no autograd graph is kept): every value that depends on a probed
    tensor requires grad; each node reached by one is differentiated alone, twice."""

    def __init__(self, gm: fx.GraphModule, weights: dict[str, torch.Tensor], act_nodes: list[fx.Node]) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # our ConfigError is one line; fx would append the graph
        self.weights, self.act_nodes = weights, set(act_nodes)
        self.decomposed: set[str] = set()
        self.finite_difference: list[str] = []
        self.nodes: list[tuple[str, str, str]] = []

    def fetch_attr(self, target: str) -> Any:
        if target in self.weights:
            return self.weights[target].detach().requires_grad_(True)
        return super().fetch_attr(target)

    def run_node(self, n: fx.Node) -> Any:
        with torch.no_grad():
            out = super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        reached = any(isinstance(x, torch.Tensor) and x.requires_grad for x in tree_leaves((args, kwargs)))
        if reached and n.op == "call_function" and getattr(n.target, "__module__", None) not in _PLAIN:
            self._check(n, args, kwargs, out)
        if reached or n in self.act_nodes:
            out = tree_map(lambda t: t.detach().requires_grad_(True)
                           if isinstance(t, torch.Tensor) and t.is_floating_point() else t, out)
        return out

    def _check(self, n: fx.Node, args: tuple, kwargs: dict, out: Any) -> None:
        orders, reason = _orders(n.target, args, kwargs)
        if orders == 2:
            return
        decomposition = replacement(n.target)
        if decomposition is not None:
            decomposed_orders = _orders(decomposition, args, kwargs)[0]
            if decomposed_orders > orders and _agrees(decomposition, args, kwargs, out):
                self.decomposed.add(n.name)
                orders = decomposed_orders
                if orders == 2:
                    self.nodes.append((str(n.target), _where(n), "evaluated through its decomposition"))
                    return
        if orders == 1:
            self.finite_difference.append(n.name)
            self.nodes.append((str(n.target), _where(n), "Hessian-vector products use central differences of gradients"))
            return
        raise ConfigError(f"cannot differentiate the loss through {n.target} ({_where(n)}) for Hessian sensitivity: "
                          f"{reason}; register an autograd formula for the op (torch.library.register_autograd), "
                          "or assign bits without a budget")


def _agrees(decomposition: Callable[..., Any], args: tuple, kwargs: dict, out: Any) -> bool:
    """Whether ``decomposition`` gives the op's own output ``out`` on these arguments."""
    try:
        with torch.no_grad():
            return _same_values(out, decomposition(*args, **kwargs))
    except Exception:  # a decomposition that does not take these arguments is no use
        return False


def plan_hvp(gm: fx.GraphModule, weights: dict[str, torch.Tensor], act_nodes: list[fx.Node], batch: tuple) -> HvpPlan:
    """The probe plan of ``gm`` on ``batch`` (see the module docstring). Raises ConfigError for
    a node the loss cannot be differentiated through at all."""
    planner = _Planner(gm, weights, act_nodes)
    planner.run(*batch)
    return HvpPlan(frozenset(planner.decomposed), tuple(planner.finite_difference), tuple(planner.nodes))
