"""Hutchinson estimates of Hessian traces, per weight tensor and per activation tensor.

tr(H) = E[v^T H v] for Rademacher v. One probe draws v for every tensor at once and needs one
Hessian-vector product (double backward) per batch; the block-diagonal terms v_i^T H_ii v_i
give every tensor's estimate from the same product. Activations are probed by adding a zero
tensor (requiring grad) to each probed node's output while the graph is interpreted.

Graphs with ops that lack double backward (``hvp_plan``) are probed with those nodes
decomposed, or, where no decomposition helps, with a central difference of gradients: one
pair of gradients along the weights' v and one along the activations' v, each with a step of
``FD_STEP`` times the rms of the tensors it moves (the weight-activation cross blocks of H,
zero-mean noise in every block-diagonal estimate, are left out). The method used is on every
:class:`TraceEstimate` and said in a warning.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from lcpaq.passes.hvp_plan import DOUBLE_BACKWARD, FINITE_DIFFERENCE, HvpPlan, plan_hvp, replacement

Loss = Callable[[Any, int], torch.Tensor]
FD_STEP = 1e-3  # finite-difference step, relative to the rms of the tensors it moves


@dataclass(frozen=True)
class TraceEstimate:
    mean: float
    rel_err: float
    numel: int
    probes: int
    samples: tuple[float, ...] = ()
    hvp: str = DOUBLE_BACKWARD  # how Hessian-vector products were taken (hvp_plan.HvpPlan.method)

    def prefix(self, k: int) -> "TraceEstimate":
        """The estimate from the first ``k`` probes: with one seed, the same as a run of ``k``."""
        return _estimate(list(self.samples[:k]), self.numel, self.hvp)


class _Probed(fx.Interpreter):
    """Interprets the graph with given weight tensors and perturbations (zero, or ``offsets``)
    on activations, nodes the plan decomposes evaluated through their decomposition."""

    def __init__(self, gm: fx.GraphModule, weights: dict[str, torch.Tensor], act_nodes: list[fx.Node],
                 plan: HvpPlan | None = None, offsets: dict[fx.Node, torch.Tensor] | None = None) -> None:
        super().__init__(gm)
        self.weights = weights
        self.act_nodes = set(act_nodes)
        self.plan, self.offsets = plan, offsets
        self.deltas: dict[fx.Node, torch.Tensor] = {}
        self.values: dict[fx.Node, torch.Tensor] = {}

    def fetch_attr(self, target: str) -> Any:
        return self.weights[target] if target in self.weights else super().fetch_attr(target)

    def run_node(self, n: fx.Node) -> Any:
        if self.plan is not None and n.name in self.plan.decomposed:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = replacement(n.target)(*args, **kwargs)
        else:
            out = super().run_node(n)
        if n in self.act_nodes and isinstance(out, torch.Tensor) and out.is_floating_point():
            if self.offsets is None:
                delta = torch.zeros_like(out, requires_grad=True)
            else:
                delta = self.offsets[n].detach().clone().requires_grad_(True)
            self.deltas[n] = delta
            self.values[n] = out
            out = out + delta
        return out


Products = tuple[list["torch.Tensor | None"], list[fx.Node], list[torch.Tensor], list["torch.Tensor | None"]]


def hessian_vector_products(
    gm: fx.GraphModule, weights: dict[str, torch.Tensor], act_nodes: list[fx.Node], batch: tuple,
    loss: Callable[[Any], torch.Tensor], v_weights: list[torch.Tensor], draw: Callable[[torch.Tensor], torch.Tensor],
    plan: HvpPlan | None = None, step: float = FD_STEP,
) -> Products:
    """H v of ``loss(gm(*batch))`` w.r.t. ``weights`` (``v_weights``, in their order) and the
    outputs of ``act_nodes`` (v from ``draw(delta)`` for each node's perturbation, in order).
    Returns (H v per weight, the activation nodes probed, their v, H v per such node); None
    where the loss does not depend on a tensor. By double backward, or, when ``plan`` says
    finite differences, the block products H_ww v_w and H_aa v_a by central differences."""
    if plan is not None and plan.method == FINITE_DIFFERENCE:
        return _finite_difference(gm, weights, act_nodes, batch, loss, v_weights, draw, plan, step)
    runner = _Probed(gm, weights, act_nodes, plan)
    out = loss(runner.run(*batch))
    probed = [n for n in act_nodes if n in runner.deltas]
    deltas = [runner.deltas[n] for n in probed]
    inputs = [*weights.values(), *deltas]
    grads = torch.autograd.grad(out, inputs, create_graph=True, allow_unused=True)
    vs = [*v_weights, *(draw(d) for d in deltas)]
    dot = sum((g * v).sum() for g, v in zip(grads, vs) if g is not None)
    if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
        return [None] * len(weights), [], [], []  # the loss is linear in everything probed: H = 0
    hvs = torch.autograd.grad(dot, inputs, allow_unused=True)
    return list(hvs[: len(weights)]), probed, vs[len(weights):], list(hvs[len(weights):])


def _finite_difference(gm, weights, act_nodes, batch, loss, v_weights, draw, plan, step) -> Products:
    """H_ww v_w and H_aa v_a as (g(x + eps v) - g(x - eps v)) / (2 eps), eps = ``step`` x the rms
    of the weights, resp. of the probed activations' values."""
    with torch.no_grad():
        base = _Probed(gm, weights, act_nodes, plan)
        base.run(*batch)
    probed = [n for n in act_nodes if n in base.deltas]
    v_acts = [draw(base.deltas[n]) for n in probed]
    zero_w = [torch.zeros_like(w) for w in weights.values()]
    zero_a = [torch.zeros_like(base.deltas[n]) for n in probed]

    def grads(w_shift: list[torch.Tensor], a_shift: list[torch.Tensor]) -> tuple:
        with torch.no_grad():
            moved = {name: (w + s).requires_grad_(True) for (name, w), s in zip(weights.items(), w_shift)}
        runner = _Probed(gm, moved, act_nodes, plan, dict(zip(probed, a_shift)))
        out = loss(runner.run(*batch))
        inputs = [*moved.values(), *(runner.deltas[n] for n in probed)]
        if not out.requires_grad:
            return (None,) * len(inputs)
        return torch.autograd.grad(out, inputs, allow_unused=True)

    def central(scale: float, vs: list[torch.Tensor], at_weights: bool) -> list[torch.Tensor | None]:
        if not vs:
            return []
        eps = step * scale
        shift = lambda sign: [sign * eps * v for v in vs]  # noqa: E731
        plus = grads(shift(1.0), zero_a) if at_weights else grads(zero_w, shift(1.0))
        minus = grads(shift(-1.0), zero_a) if at_weights else grads(zero_w, shift(-1.0))
        part = slice(0, len(weights)) if at_weights else slice(len(weights), None)
        return [None if p is None else (p - m) / (2 * eps) for p, m in zip(plus[part], minus[part])]

    hv_w = central(_rms(weights.values()), v_weights, True)
    hv_a = central(_rms(base.values[n] for n in probed), v_acts, False)
    return hv_w, probed, v_acts, hv_a


def _rms(tensors: Iterable[torch.Tensor]) -> float:
    total, count = 0.0, 0
    for t in tensors:
        total += float((t.detach().double() ** 2).sum())
        count += t.numel()
    rms = math.sqrt(total / count) if count else 0.0
    return rms if rms > 0 and math.isfinite(rms) else 1.0


def hessian_traces(
    gm: fx.GraphModule,
    weight_names: list[str],
    act_nodes: list[fx.Node],
    batches: tuple[tuple[Any, ...], ...],
    loss_fn: Loss,
    max_probes: int,
    min_probes: int,
    tol: float,
    seed: int,
    progress: bool = False,
) -> tuple[dict[str, TraceEstimate], dict[fx.Node, TraceEstimate]]:
    """Trace of the loss Hessian w.r.t. each named weight and each activation node's output,
    averaged over ``batches``. Stops once every weight's relative standard error is below
    ``tol`` (after at least ``min_probes``), or at ``max_probes``. A graph whose first probe
    fails for want of double backward is planned (``hvp_plan.plan_hvp``) and probed again."""
    gen = torch.Generator().manual_seed(seed)
    weights = {name: fx.Interpreter(gm).fetch_attr(name).detach().clone().requires_grad_(True) for name in weight_names}
    w_samples: dict[str, list[float]] = {name: [] for name in weight_names}
    a_samples: dict[fx.Node, list[float]] = {node: [] for node in act_nodes}
    a_numel: dict[fx.Node, int] = {node: 0 for node in act_nodes}
    plan: HvpPlan | None = None
    bar = tqdm(range(max_probes), desc="hessian probes", disable=not progress, leave=False)
    for k in bar:
        state = gen.get_state()
        try:
            w_acc, a_acc, numel = _probe(gm, weights, act_nodes, batches, loss_fn, gen, plan)
        except RuntimeError as exc:
            if plan is not None:
                raise
            plan = _plan_after(exc, gm, weights, act_nodes, batches[0])
            gen.set_state(state)
            w_acc, a_acc, numel = _probe(gm, weights, act_nodes, batches, loss_fn, gen, plan)
        for name in weight_names:
            w_samples[name].append(w_acc[name] / len(batches))
        for node in act_nodes:
            a_samples[node].append(a_acc[node] / len(batches))
            if k == 0:
                a_numel[node] = numel[node]
        worst = max((_rel_err(s) for s in w_samples.values()), default=0.0)
        bar.set_postfix_str(f"rel.err {worst:.3f}")
        if k + 1 >= min_probes and worst < tol:
            break
    method = DOUBLE_BACKWARD if plan is None else plan.method
    w_est = {name: _estimate(s, weights[name].numel(), method) for name, s in w_samples.items()}
    a_est = {node: _estimate(s, max(a_numel[node] // max(len(batches), 1), 1), method) for node, s in a_samples.items()}
    return w_est, a_est


def _probe(gm, weights, act_nodes, batches, loss_fn, gen, plan) -> tuple[dict, dict, dict]:
    """One probe over every batch: sums of v^T H v per weight and per activation node, and
    each node's perturbed elements summed over the batches."""
    w_acc = dict.fromkeys(weights, 0.0)
    a_acc = dict.fromkeys(act_nodes, 0.0)
    numel = dict.fromkeys(act_nodes, 0)
    v_w = [_rademacher(w, gen) for w in weights.values()]
    for b, batch in enumerate(batches):
        loss = lambda out, b=b: loss_fn(out, b)  # noqa: E731
        hv_w, probed, v_a, hv_a = hessian_vector_products(
            gm, weights, act_nodes, batch, loss, v_w, lambda d: _rademacher(d, gen), plan)
        for name, v, hv in zip(weights, v_w, hv_w):
            w_acc[name] += 0.0 if hv is None else float((v * hv).sum())
        for node, v, hv in zip(probed, v_a, hv_a):
            a_acc[node] += 0.0 if hv is None else float((v * hv).sum())
            numel[node] += v.numel()
    return w_acc, a_acc, numel


def _plan_after(exc: RuntimeError, gm, weights, act_nodes, batch) -> HvpPlan:
    """The plan for a graph whose probe raised ``exc``; ``exc`` again if no node explains it."""
    plan = plan_hvp(gm, weights, act_nodes, batch)
    if plan.method == DOUBLE_BACKWARD:
        raise exc
    warnings.warn(f"hessian: {plan.summary()}", stacklevel=3)
    return plan


def _rademacher(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, like.shape, generator=gen, dtype=torch.int8) * 2 - 1).to(like.dtype)


def _rel_err(samples: list[float]) -> float:
    n = len(samples)
    if n < 2:
        return math.inf
    mean = sum(samples) / n
    var = sum((s - mean) ** 2 for s in samples) / (n - 1)
    return math.sqrt(var / n) / abs(mean) if mean else (0.0 if var == 0 else math.inf)


def _estimate(samples: list[float], numel: int, hvp: str = DOUBLE_BACKWARD) -> TraceEstimate:
    return TraceEstimate(sum(samples) / len(samples), _rel_err(samples), numel, len(samples), tuple(samples), hvp)
