"""finetune: short supervised retraining of a fake-quantized graph (HAQ's reward protocol)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import QUANTIZED
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.distill import distill_loss, rms_scaled_adam, trainable_copies
from lcpaq.passes.sensitivity_terms import float_leaves


@register_pass
@dataclass(frozen=True)
class FineTune(Pass):
    """``epochs`` passes over ``ctx.calib_batches`` in order, one Adam step per batch, against
    ``ctx.calib_labels``: cross-entropy of the first output where a batch's labels are class
    indices (integers), else the output MSE normalised by the targets' variance (targets such
    as the fp32 model's own outputs, for a model without labels). Straight-through gradients
    reach the weights and biases of the quantized layers; each tensor's learning rate is ``lr``
    times its RMS. This is HAQ's short-term retraining ("one more epoch") before the reward.

    Reads: ``lcpaq.quantized``. Rewrites: those weights and biases (fresh copies, never the
    caller's model's parameters; the graph's structure and quantizer scales stay). Needs
    ``ctx.calib_labels``, one per batch."""

    name = "finetune"
    reads = (QUANTIZED,)
    rewrites = True
    epochs: int = 1
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.lr <= 0:
            raise ValueError("epochs must be >= 1 and lr > 0")

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        batches, labels = ctx.batches(), ctx.calib_labels
        if labels is None or len(labels) != len(batches):
            raise ConfigError(f"needs labels or targets for each of the {len(batches)} training batches")
        params = trainable_copies(gm)
        opt = rms_scaled_adam(params, self.lr)
        torch.manual_seed(ctx.seed)
        steps = [(b, y) for _ in range(self.epochs) for b, y in zip(batches, labels)]
        for batch, target in tqdm(steps, desc="finetune", disable=not ctx.progress, leave=False):
            loss = supervised_loss(float_leaves(gm(*batch)), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        for p in params:
            p.requires_grad_(False)
        return PassResult(gm, True)


def supervised_loss(outputs: list[torch.Tensor], target: torch.Tensor | tuple | list) -> torch.Tensor:
    """Cross-entropy for class indices, else the variance-normalised MSE to float targets."""
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        return torch.nn.functional.cross_entropy(outputs[0], target)
    targets = [target] if isinstance(target, torch.Tensor) else list(target)
    return distill_loss(outputs, targets)
