"""fisher: per-layer sensitivity from the diagonal of the Fisher information (FIT-style).

    sensitivity(layer, b) = sum_i F_ii (Q_b(W) - W)_i^2 + sum over inputs sum_j F_jj (Q_b(A) - A)_j^2

F is the Fisher information of the model's own predictive distribution, estimated label-free
from first-order gradients only: the gradient of a loss whose targets are *sampled from the
model* (a class drawn from its softmax where the model classifies, i.e. ``ctx.calib_labels``
exist; unit Gaussian noise on every output otherwise, whose Fisher is the Gauss-Newton matrix
J^T J). Sampled targets make the per-sample gradients zero-mean, so the square of the batch
gradient estimates the per-sample diagonals without cross terms. Unlike the Hessian trace
(``hessian``: tr(H) / n x ||Q(X) - X||^2) the error is weighted element by element, and no
double backward is needed. Activation diagonals are kept per element of the calibration
batches, so activation terms weight each element's quantization error by its own Fisher value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from lcpaq.hw_targets.target import Target
from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import QuantLayer, find_layers
from lcpaq.ir.meta import ACT_RANGE, FLOAT_BITS, QUANT_SCHEME, SENSITIVITY, QuantScheme, Sensitivity
from lcpaq.ir.weight_codes import WEIGHT_CODES
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext
from lcpaq.passes.quant_scheme import act_spec, weight_spec
from lcpaq.passes.sensitivity_terms import act_error, float_leaves


class _Perturbed(fx.Interpreter):
    """Runs the graph with trainable weight copies, adding a zero offset that requires grad to
    every named activation (its gradient is the loss's gradient w.r.t. that activation)."""

    def __init__(self, gm: fx.GraphModule, weights: dict[str, torch.Tensor], act_names: set[str]) -> None:
        super().__init__(gm)
        self.weights, self.act_names = weights, act_names
        self.offsets: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}

    def fetch_attr(self, target: str) -> Any:
        return self.weights[target] if target in self.weights else super().fetch_attr(target)

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.act_names and isinstance(out, torch.Tensor) and out.is_floating_point():
            self.values[n.name] = out.detach()
            self.offsets[n.name] = torch.zeros_like(out, requires_grad=True)
            out = out + self.offsets[n.name]
        return out


def _sampled_loss(out: Any, classify: bool, gen: torch.Generator) -> torch.Tensor:
    """A loss whose gradient is a draw of the score function: targets sampled from the model."""
    leaves = float_leaves(out)
    if classify:
        logits = leaves[0].reshape(-1, leaves[0].shape[-1])
        labels = torch.multinomial(torch.softmax(logits.detach().double(), -1), 1, generator=gen).squeeze(1)
        return torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    return sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in leaves)


@dataclass
class FisherDiagonals:
    """Per-sample Fisher diagonals: per weight tensor (by target name), and per activation node
    (by name) on each calibration batch, with that batch's activation values."""

    weights: dict[str, torch.Tensor]
    acts: dict[str, list[torch.Tensor]]
    values: dict[str, list[torch.Tensor]]
    samples: int
    rel_err: float
    _w_terms: dict[tuple, float] = field(default_factory=dict, repr=False)
    _a_terms: dict[tuple, float] = field(default_factory=dict, repr=False)
    _traces: dict[str, float] = field(default_factory=dict, repr=False)

    @classmethod
    def measure(cls, gm: fx.GraphModule, batches: tuple, classify: bool, samples: int, seed: int,
                progress: bool = False) -> "FisherDiagonals":
        layers = find_layers(gm)
        names = list(dict.fromkeys(str(layer.weight.target) for layer in layers if layer.weight is not None))
        act_names = list(dict.fromkeys(a.name for layer in layers for a in layer.act_inputs))
        weights = {n: get_attr(gm, n).detach().clone().requires_grad_(True) for n in names}
        w_diag = {n: torch.zeros_like(w) for n, w in weights.items()}
        a_diag: dict[str, list[torch.Tensor]] = {n: [] for n in act_names}
        values: dict[str, list[torch.Tensor]] = {n: [] for n in act_names}
        gen = torch.Generator().manual_seed(seed)
        totals = []
        for s in tqdm(range(samples), desc="fisher samples", disable=not progress, leave=False):
            total = 0.0
            for b, batch in enumerate(batches):
                runner = _Perturbed(gm, weights, set(act_names))
                out = runner.run(*batch)
                n = max(float_leaves(out)[0].shape[0], 1)
                present = [a for a in act_names if a in runner.offsets]
                wrt = [*weights.values(), *(runner.offsets[a] for a in present)]
                grads = torch.autograd.grad(_sampled_loss(out, classify, gen), wrt, allow_unused=True)
                for name, g in zip(names, grads):
                    if g is not None:
                        w_diag[name] += g.detach() ** 2 / (n * samples * len(batches))
                        total += float((g.detach() ** 2).sum()) / n
                for name, g in zip(present, grads[len(names):]):
                    g2 = torch.zeros_like(runner.values[name]) if g is None else g.detach() ** 2 / (n * samples)
                    if s == 0:
                        a_diag[name].append(g2)
                        values[name].append(runner.values[name])
                    else:
                        a_diag[name][b] += g2
            totals.append(total / len(batches))
        mean = sum(totals) / len(totals)
        spread = math.sqrt(sum((t - mean) ** 2 for t in totals) / (len(totals) - 1)) if len(totals) > 1 else 0.0
        rel = spread / math.sqrt(len(totals)) / mean if mean > 0 else 0.0
        return cls(w_diag, a_diag, values, samples, rel)

    def sensitivities(
        self, gm: fx.GraphModule, layers: list[QuantLayer], target: Target, scheme: QuantScheme,
    ) -> dict[str, Sensitivity]:
        """Every layer's Fisher-weighted errors at each width ``target`` offers it, under
        ``scheme`` and the graph's calibrated ranges (terms kept per tensor, spec and range)."""
        out = {}
        for layer in layers:
            weight_terms: list[tuple[int, float]] = []
            w_trace = 0.0
            if layer.weight is not None:
                name = str(layer.weight.target)
                w_trace = self._trace(name, [self.weights[name]])
                for b in (b for b in target.weight_bits(layer.kind) if b != FLOAT_BITS):
                    weight_terms.append((b, self._weight_term(gm, name, weight_spec(layer, b, scheme))))
            act_terms: dict[int, float] = {}
            a_trace = 0.0
            ranges = ACT_RANGE.get(layer.node)
            for index, node in enumerate(layer.act_inputs):
                a_trace += self._trace(node.name, self.acts.get(node.name, []))
                for b in (b for b in target.act_bits if b != FLOAT_BITS):
                    r = ranges.get(index, b)
                    act_terms[b] = act_terms.get(b, 0.0) + self._act_term(node.name, act_spec(b, scheme), r.lo, r.hi)
            out[layer.name] = Sensitivity(w_trace, a_trace, tuple(weight_terms), tuple(sorted(act_terms.items())),
                                          self.samples, self.rel_err)
        return out

    def _trace(self, name: str, diagonals: list[torch.Tensor]) -> float:
        """A diagonal's sum (averaged over batches), kept per name."""
        if name not in self._traces:
            self._traces[name] = sum(float(d.sum()) for d in diagonals) / max(len(diagonals), 1)
        return self._traces[name]

    def _weight_term(self, gm: fx.GraphModule, name: str, spec: Any) -> float:
        key = (name, spec)
        if key not in self._w_terms:
            w = get_attr(gm, name)  # the object itself: the shared codes key on it
            self._w_terms[key] = float((self.weights[name] * (WEIGHT_CODES.get(w, spec).fake - w.detach()) ** 2).sum())
        return self._w_terms[key]

    def _act_term(self, node: str, spec: Any, lo: float, hi: float) -> float:
        key = (node, spec, lo, hi)
        if key not in self._a_terms:
            self._a_terms[key] = act_error(self.values.get(node, []), spec, lo, hi, weights=self.acts.get(node, []))
        return self._a_terms[key]


@register_pass
@dataclass(frozen=True)
class FisherSensitivity(Pass):
    """Writes every layer's Fisher-weighted sensitivity (see the module docstring) at each
    width the target offers, the quantizers being those ``lcpaq.quant_scheme`` gives; an
    alternative to ``hessian`` that the ILP reads the same way. ``samples`` sampled-target
    gradients on each of the first ``batches`` calibration batches, seeded by ``ctx.seed``.

    Reads: ``lcpaq.act_range``, ``lcpaq.quant_scheme``. Writes: ``lcpaq.sensitivity``."""

    name = "fisher"
    reads = (ACT_RANGE, QUANT_SCHEME)
    writes = (SENSITIVITY,)
    samples: int = 8
    batches: int = 2

    def __post_init__(self) -> None:
        if self.samples < 1 or self.batches < 1:
            raise ValueError(f"samples and batches must be >= 1, got {self.samples} and {self.batches}")

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        fisher = FisherDiagonals.measure(gm, ctx.batches()[: self.batches], ctx.calib_labels is not None, self.samples,
                                         ctx.seed, ctx.progress)
        layers = find_layers(gm)
        for name, sens in fisher.sensitivities(gm, layers, ctx.target, QUANT_SCHEME.get(gm)).items():
            SENSITIVITY.set(next(layer.node for layer in layers if layer.name == name), sens)
        return PassResult(gm, False)
