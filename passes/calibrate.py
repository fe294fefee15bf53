"""calibrate: estimate the range of every activation that a quantizable layer reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import ACT_RANGE, ActRange, ActRanges, check_bits
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.range_estimators import Observer, estimate


@register_pass
@dataclass(frozen=True)
class Calibrate(Pass):
    """Runs the graph on ``ctx.calib_batches`` and estimates activation ranges.

    Reads: nothing. Writes: ``lcpaq.act_range`` on every layer, one range per activation
    input and per bit-width in ``bits`` (default: the target's activation widths; MSE and
    entropy ranges depend on the width). A tensor read by several layers is observed once.
    ``percentile`` is the upper percentile kept by method=percentile."""

    name = "calibrate"
    writes = (ACT_RANGE,)
    method: Literal["minmax", "percentile", "mse", "entropy"] = "minmax"
    percentile: float = 99.99
    symmetric: bool = False
    bits: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        for b in self.bits:
            check_bits(b)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = find_layers(gm)
        # graph order, not a set's: a set of nodes iterates by address, which differs between
        # processes, and each observer's seed (its subsample of a large activation) is its index
        observed = dict.fromkeys(act for layer in layers for act in layer.act_inputs)
        observers = {node: Observer(seed=ctx.seed + i) for i, node in enumerate(observed)}
        runner = _Observing(gm, observers)
        with torch.no_grad():
            for batch in tqdm(ctx.batches(), desc="calibrate", disable=not ctx.progress, leave=False):
                runner.run(*batch)
        widths = tuple(b for b in (self.bits or ctx.target.act_bits) if b != 32)
        cache: dict[tuple[fx.Node, int], ActRange] = {}
        for layer in layers:
            per_input = []
            for act in layer.act_inputs:
                ranges = []
                for bits in widths:
                    if (act, bits) not in cache:
                        lo, hi = estimate(observers[act], self.method, bits, self.symmetric, self.percentile)
                        cache[(act, bits)] = ActRange(float(lo), float(hi), bits, self.method)
                    ranges.append(cache[(act, bits)])
                per_input.append(tuple(ranges))
            ACT_RANGE.set(layer.node, ActRanges(tuple(per_input)))
        return PassResult(gm, False)


class _Observing(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, observers: dict[fx.Node, Observer]) -> None:
        super().__init__(gm)
        self.observers = observers

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n in self.observers and isinstance(out, torch.Tensor):
            self.observers[n].update(out)
        return out
