"""Hutchinson estimates of Hessian traces, per weight tensor and per activation tensor.

tr(H) = E[v^T H v] for Rademacher v. One probe draws v for every tensor at once and needs one
Hessian-vector product (double backward) per batch; the block-diagonal terms v_i^T H_ii v_i
give every tensor's estimate from the same product. Activations are probed by adding a zero
tensor (requiring grad) to each probed node's output while the graph is interpreted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx
from tqdm.auto import tqdm

Loss = Callable[[Any, int], torch.Tensor]


@dataclass(frozen=True)
class TraceEstimate:
    mean: float
    rel_err: float
    numel: int
    probes: int
    samples: tuple[float, ...] = ()

    def prefix(self, k: int) -> "TraceEstimate":
        """The estimate from the first ``k`` probes: with one seed, the same as a run of ``k``."""
        return _estimate(list(self.samples[:k]), self.numel)


class _Probed(fx.Interpreter):
    """Interprets the graph with given weight tensors and zero perturbations on activations."""

    def __init__(self, gm: fx.GraphModule, weights: dict[str, torch.Tensor], act_nodes: list[fx.Node]) -> None:
        super().__init__(gm)
        self.weights = weights
        self.act_nodes = set(act_nodes)
        self.deltas: dict[fx.Node, torch.Tensor] = {}

    def fetch_attr(self, target: str) -> Any:
        return self.weights[target] if target in self.weights else super().fetch_attr(target)

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.act_nodes and isinstance(out, torch.Tensor) and out.is_floating_point():
            delta = torch.zeros_like(out, requires_grad=True)
            self.deltas[n] = delta
            out = out + delta
        return out


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
    ``tol`` (after at least ``min_probes``), or at ``max_probes``."""
    gen = torch.Generator().manual_seed(seed)
    weights = {name: fx.Interpreter(gm).fetch_attr(name).detach().clone().requires_grad_(True) for name in weight_names}
    w_samples: dict[str, list[float]] = {name: [] for name in weight_names}
    a_samples: dict[fx.Node, list[float]] = {node: [] for node in act_nodes}
    a_numel: dict[fx.Node, int] = {node: 0 for node in act_nodes}
    bar = tqdm(range(max_probes), desc="hessian probes", disable=not progress, leave=False)
    for k in bar:
        w_acc = dict.fromkeys(weight_names, 0.0)
        a_acc = dict.fromkeys(act_nodes, 0.0)
        v_w = {name: _rademacher(w, gen) for name, w in weights.items()}
        for b, batch in enumerate(batches):
            runner = _Probed(gm, weights, act_nodes)
            loss = loss_fn(runner.run(*batch), b)
            deltas = [runner.deltas[n] for n in act_nodes if n in runner.deltas]
            inputs = [*weights.values(), *deltas]
            grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
            vs = [*v_w.values(), *(_rademacher(d, gen) for d in deltas)]
            dot = sum((g * v).sum() for g, v in zip(grads, vs) if g is not None)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                continue  # the loss is linear in everything probed: the Hessian is zero
            hvs = torch.autograd.grad(dot, inputs, allow_unused=True)
            for name, v, hv in zip(weights, vs, hvs):
                w_acc[name] += 0.0 if hv is None else float((v * hv).sum())
            probed = [n for n in act_nodes if n in runner.deltas]
            for node, v, hv in zip(probed, vs[len(weights):], hvs[len(weights):]):
                a_acc[node] += 0.0 if hv is None else float((v * hv).sum())
                if k == 0:
                    a_numel[node] += runner.deltas[node].numel()
        for name in weight_names:
            w_samples[name].append(w_acc[name] / len(batches))
        for node in act_nodes:
            a_samples[node].append(a_acc[node] / len(batches))
        worst = max((_rel_err(s) for s in w_samples.values()), default=0.0)
        bar.set_postfix_str(f"rel.err {worst:.3f}")
        if k + 1 >= min_probes and worst < tol:
            break
    w_est = {name: _estimate(s, weights[name].numel()) for name, s in w_samples.items()}
    a_est = {node: _estimate(s, max(a_numel[node] // max(len(batches), 1), 1)) for node, s in a_samples.items()}
    return w_est, a_est


def _rademacher(like: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (torch.randint(0, 2, like.shape, generator=gen, dtype=torch.int8) * 2 - 1).to(like.dtype)


def _rel_err(samples: list[float]) -> float:
    n = len(samples)
    if n < 2:
        return math.inf
    mean = sum(samples) / n
    var = sum((s - mean) ** 2 for s in samples) / (n - 1)
    return math.sqrt(var / n) / abs(mean) if mean else (0.0 if var == 0 else math.inf)


def _estimate(samples: list[float], numel: int) -> TraceEstimate:
    return TraceEstimate(sum(samples) / len(samples), _rel_err(samples), numel, len(samples), tuple(samples))
