"""distill: short fine-tuning of a fake-quantized graph against its own float version."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from lcpaq.ir.capture import get_attr, set_attr
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import QUANTIZED
from lcpaq.ir.qops import quantizers_disabled
from lcpaq.ir.surgery import BIAS_ARG
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.sensitivity_terms import float_leaves


@register_pass
@dataclass(frozen=True)
class Distill(Pass):
    """Knowledge distillation: the teacher is this graph with its quantizers switched off (the
    fp32 model), the student the fake-quantized graph; ``steps`` Adam steps minimise the output
    MSE (normalised by the teacher's variance) on the calibration batches but the last, with
    straight-through gradients to the weights and biases of the quantized layers; each tensor's
    learning rate is ``lr`` times its RMS. The last batch is held out: the weights with the
    least held-out loss, the starting ones included, are kept, so the held-out loss never rises.

    Reads: ``lcpaq.quantized``. Rewrites: those weights and biases (the graph's structure and
    quantizer scales stay). Guarantees: the teacher's outputs are computed once, before any
    update; the trained tensors are fresh copies, never the caller's model's parameters."""

    name = "distill"
    reads = (QUANTIZED,)
    rewrites = True
    steps: int = 200
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise ValueError("steps must be >= 1 and lr > 0")

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        batches = ctx.batches()
        train, held = (batches[:-1], batches[-1:]) if len(batches) > 1 else (batches, batches)
        with torch.no_grad(), quantizers_disabled(gm):
            teacher = [[t.detach() for t in float_leaves(gm(*b))] for b in batches]
        params = trainable_copies(gm)
        opt = rms_scaled_adam(params, self.lr)
        torch.manual_seed(ctx.seed)
        held_teacher = teacher[len(train):] if len(batches) > 1 else teacher
        best_loss, best = self._loss(gm, held, held_teacher), [p.detach().clone() for p in params]
        check_every = max(1, self.steps // 10)
        order = itertools.cycle(range(len(train)))
        for step in tqdm(range(1, self.steps + 1), desc="distill", disable=not ctx.progress, leave=False):
            i = next(order)
            loss = distill_loss(float_leaves(gm(*train[i])), teacher[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % check_every == 0 or step == self.steps:
                held_loss = self._loss(gm, held, held_teacher)
                if held_loss < best_loss:
                    best_loss, best = held_loss, [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, keep in zip(params, best):
                p.copy_(keep)
                p.requires_grad_(False)
        return PassResult(gm, True)

    @staticmethod
    def _loss(gm: fx.GraphModule, batches, teacher) -> float:
        with torch.no_grad():
            return sum(float(distill_loss(float_leaves(gm(*b)), t)) for b, t in zip(batches, teacher))


def distill_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Output MSE, normalised by the teacher's variance (scale-free across models)."""
    return sum(((s - t) ** 2).mean() / t.var().clamp(min=1e-12) for s, t in zip(student, teacher))


def rms_scaled_adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with each tensor's learning rate ``lr`` times its RMS (scale-free across layers)."""
    return torch.optim.Adam([{"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp(min=1e-3))} for p in params])


def trainable_copies(gm: fx.GraphModule) -> list[torch.nn.Parameter]:
    """Fresh, trainable copies of the weights and biases of every quantized layer."""
    targets = []
    for layer in find_layers(gm):
        if layer.weight is None or not QUANTIZED.has(layer.node):
            continue
        targets.append(str(layer.weight.target))
        bias = layer.node.args[BIAS_ARG] if len(layer.node.args) > BIAS_ARG and layer.kind != "embedding" else None
        if isinstance(bias, fx.Node) and bias.op == "get_attr":
            targets.append(str(bias.target))
    params = []
    for target in dict.fromkeys(targets):
        p = torch.nn.Parameter(get_attr(gm, target).detach().clone(), requires_grad=True)
        set_attr(gm, target, p)
        params.append(p)
    return params
