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
    fp32 model), the student the fake-quantized graph; ``steps`` Adam steps at ``lr`` on the
    calibration batches minimise the output MSE normalised by the teacher's variance, with
    straight-through gradients to the weights and biases of the quantized layers.

    Reads: ``lcpaq.quantized``. Rewrites: those weights and biases (the graph's structure and
    quantizer scales stay). Guarantees: the teacher's outputs are computed once, before any
    update; the trained tensors are fresh copies, never the caller's model's parameters."""

    name = "distill"
    reads = (QUANTIZED,)
    rewrites = True
    steps: int = 200
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise ValueError("steps must be >= 1 and lr > 0")

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        batches = ctx.batches()
        with torch.no_grad(), quantizers_disabled(gm):
            teacher = [[t.detach() for t in float_leaves(gm(*b))] for b in batches]
        params = _trainable(gm)
        opt = torch.optim.Adam(params, lr=self.lr)
        torch.manual_seed(ctx.seed)
        order = itertools.cycle(range(len(batches)))
        for _ in tqdm(range(self.steps), desc="distill", disable=not ctx.progress, leave=False):
            i = next(order)
            student = float_leaves(gm(*batches[i]))
            loss = sum(((s - t) ** 2).mean() / t.var().clamp(min=1e-12) for s, t in zip(student, teacher[i]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
        return PassResult(gm, True)


def _trainable(gm: fx.GraphModule) -> list[torch.nn.Parameter]:
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
