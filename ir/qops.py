"""Quantized ops that a rewritten graph contains. Backends recognise and lower these."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from lcpaq.ir.quantizer import QuantSpec, fake_quantize, qparams_from_range
from lcpaq.ir.weight_codes import WEIGHT_CODES


class FakeQuantize(torch.nn.Module):
    """Fixed-parameter fake quantizer, called as ``call_module`` in a rewritten graph.

    ``scale`` and ``zero_point`` are buffers (per channel along ``spec.ch_axis`` or scalars);
    the backward pass is the straight-through estimator, so the graph can be fine-tuned."""

    def __init__(self, spec: QuantSpec, scale: torch.Tensor, zero_point: torch.Tensor, constant_input: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("zero_point", zero_point.detach().clone().float())
        self.enabled = True
        # A weight quantizer sees the same tensor on every call: without gradients, its output
        # is kept until that tensor changes (in place: its version; or replaced: its identity).
        self.constant_input = constant_input
        self._cached: tuple[torch.Tensor, int, torch.Tensor] | None = None

    @classmethod
    def for_range(cls, lo: float, hi: float, spec: QuantSpec) -> "FakeQuantize":
        scale, zero_point = qparams_from_range(torch.tensor(lo), torch.tensor(hi), spec)
        return cls(spec, scale, zero_point)

    @classmethod
    def for_weight(cls, weight: torch.Tensor, spec: QuantSpec) -> "FakeQuantize":
        code = WEIGHT_CODES.get(weight, spec)
        return cls(spec, code.scale, code.zero_point, constant_input=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if not self.constant_input or (torch.is_grad_enabled() and x.requires_grad):
            return fake_quantize(x, self.scale, self.zero_point, self.spec)
        cached = self._cached
        if cached is None or cached[0] is not x or cached[1] != x._version:
            cached = (x, x._version, self._constant_output(x))
            self._cached = cached
        return cached[2]

    def _constant_output(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` quantized, from the shared weight codes when they hold this tensor at this
        module's spec and qparams (other graphs of the same weights computed it), else afresh."""
        code = WEIGHT_CODES.get(x, self.spec)
        if torch.equal(code.scale, self.scale) and torch.equal(code.zero_point, self.zero_point):
            return code.fake
        with torch.no_grad():
            return fake_quantize(x, self.scale, self.zero_point, self.spec)

    def __getstate__(self) -> dict:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {**state, "_cached": None}  # copies and pickles recompute the cache

    def extra_repr(self) -> str:
        s = self.spec
        gran = "per-tensor" if s.ch_axis is None else f"per-channel(axis={s.ch_axis})"
        return f"bits={s.bits}, {'symmetric' if s.symmetric else 'asymmetric'}, {gran}"


@contextlib.contextmanager
def quantizers_disabled(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` in floating point: every FakeQuantize inside passes values through."""
    quantizers = [m for m in module.modules() if isinstance(m, FakeQuantize)]
    states = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, state in zip(quantizers, states):
            q.enabled = state
