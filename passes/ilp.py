"""ilp: choose each layer's precision by integer linear programming under budgets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import find_layers, precision_groups
from lcpaq.backends.latency_table import LatencyTable
from lcpaq.ir.meta import ASSIGNMENT, BITS, COST, FLOAT_BITS, MODEL_COST, SENSITIVITY, AssignmentResult, BitAssignment, Budget
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.budgets import format_quantity, parse_budget
from lcpaq.passes.context import PassContext
from lcpaq.passes.ilp_problem import AssignmentProblem, Infeasible

def problem_from_graph(gm: fx.GraphModule, target: Target, table: LatencyTable | None = None) -> AssignmentProblem:
    """The assignment problem of a costed, sensitivity-annotated graph; candidates per layer
    are those the target offers for the layer's op kind. With a latency ``table``, each
    candidate's latency is the table's, and candidates it has no measurement for are left out."""
    layers = find_layers(gm)
    index = {layer.name: i for i, layer in enumerate(layers)}
    candidates, sens, size, bops, act, latency = [], [], [], [], [], []
    for layer in layers:
        cost, s = COST.get(layer.node), SENSITIVITY.get(layer.node)
        cands = list(target.candidates(layer.kind))
        if table is not None:
            timed = [(c, _seconds(table, layer.name, c)) for c in cands]
            cands = [c for c, sec in timed if sec is not None]
            if not cands:
                raise ConfigError(f"latency table for {table.model} has no usable entry for layer {layer.name!r}")
            latency.append(np.array([sec for _, sec in timed if sec is not None]))
        candidates.append(cands)
        sens.append(np.array([s.of(c) for c in cands]))
        size.append(np.array([cost.weight_bytes(c.w_bits) if layer.weight is not None else 0.0 for c in cands]))
        bops.append(np.array([float(cost.bops(c.w_bits, c.a_bits)) for c in cands]))
        act.append(np.array([cost.act_bytes(c.a_bits) for c in cands]))
    totals = MODEL_COST.get(gm)
    groups = [tuple(index[n] for n in g) for g in precision_groups(layers)]
    costs = {"size": size, "bops": bops, "act_memory": act}
    fixed = {"size": (totals.params - totals.quantizable_params) * 4.0}
    if table is not None:
        costs["latency"], fixed["latency"] = latency, table.fixed_seconds
    return AssignmentProblem([layer.name for layer in layers], candidates, sens, costs, fixed, groups)


def _seconds(table: LatencyTable, layer: str, bits: BitAssignment) -> float | None:
    try:
        return table.seconds(layer, bits)
    except ConfigError:
        return None


def load_table(path: str, target: Target) -> LatencyTable | None:
    return LatencyTable.load(path, target) if path else None


def reference_totals(gm: fx.GraphModule, table: LatencyTable | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Totals of the fp32 model and of uniform INT8 (W8A8), the references of ``0.3x`` and
    ``0.5int8`` budgets; latency ones from ``table`` when given."""
    layers = find_layers(gm)
    costs = [COST.get(layer.node) for layer in layers]
    totals = MODEL_COST.get(gm)
    rest = (totals.params - totals.quantizable_params) * 4.0
    fp32 = {
        "size": float(totals.fp32_bytes),
        "bops": float(sum(c.bops(32, 32) for c in costs)),
        "act_memory": float(max((c.act_bytes(32) for c in costs), default=0.0)),
    }
    int8 = {
        "size": rest + sum(c.weight_bytes(8) if layer.weight is not None else 0.0 for c, layer in zip(costs, layers)),
        "bops": float(sum(c.bops(8, 8) for c in costs)),
        "act_memory": float(max((c.act_bytes(8) for c in costs), default=0.0)),
    }
    if table is not None:
        float_bits = BitAssignment(FLOAT_BITS, FLOAT_BITS)
        fp32["latency"] = table.total({layer.name: float_bits for layer in layers})
        int8["latency"] = table.total({layer.name: _int8(layer.kind) for layer in layers})
    return fp32, int8


def _int8(kind: str) -> BitAssignment:
    return BitAssignment(8, FLOAT_BITS) if kind == "embedding" else BitAssignment(8, 8)


@register_pass
@dataclass(frozen=True)
class ILPAssign(Pass):
    """Minimises total sensitivity subject to every budget given (size, bops, latency,
    act_memory; each absolute, ``Nx`` of fp32 or ``Nint8`` of uniform INT8), with one precision
    per layer from the target's candidates and equal activation widths for layers that read
    the same tensor. Solved exactly by HiGHS (scipy.optimize.milp). ``tradeoff`` adds soft
    cost terms to the objective, for trading budgets against each other; ``w_range`` and
    ``a_bits`` narrow the target's candidates. A latency budget needs ``table``, a latency
    table measured by ``lcpaq profile``; candidates it has no measurement for are left out.

    Reads: ``lcpaq.cost``, ``lcpaq.sensitivity``. Writes: ``lcpaq.bits`` on every layer and
    ``lcpaq.assignment`` on the graph. An infeasible budget is a one-line error stating the
    smallest achievable value of each constrained quantity."""

    name = "ilp"
    reads = (COST, SENSITIVITY)
    writes = (BITS, ASSIGNMENT)
    size: str = ""
    bops: str = ""
    latency: str = ""
    act_memory: str = ""
    tradeoff: str = ""
    w_range: str = ""
    a_bits: tuple[int, ...] = ()
    table: str = ""

    def __post_init__(self) -> None:
        self.tradeoff_weights()  # validates
        self.width_range()

    def tradeoff_weights(self) -> dict[str, float]:
        """``tradeoff=bops:0.1+size:0.5``: soft terms added to the objective, each weight w
        costing w x (mean total sensitivity) per fp32-model's worth of that quantity."""
        weights = {}
        for item in filter(None, self.tradeoff.split("+")):
            quantity, _, value = item.partition(":")
            if quantity not in ("size", "bops", "act_memory"):
                raise ValueError(f"tradeoff on {quantity!r}: choose size, bops or act_memory")
            weights[quantity] = float(value)
        return weights

    def width_range(self) -> tuple[int, int]:
        """``w_range=3-8``: offer the ILP only weight widths in [3, 8] (of the target's)."""
        if not self.w_range:
            return 2, 32
        lo, sep, hi = self.w_range.partition("-")
        if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) > int(hi):
            raise ValueError(f"w_range must be LO-HI, for example 4-8, got {self.w_range!r}")
        return int(lo), int(hi)

    def candidates_target(self, target: Target) -> Target:
        """The target narrowed to ``w_range`` and ``a_bits``; one-line error if nothing is left."""
        lo, hi = self.width_range()
        native = {k: tuple(b for b in v if lo <= b <= hi) for k, v in target.native_weight_bits.items()}
        storage = tuple(b for b in target.storage_weight_bits if lo <= b <= hi)
        acts = tuple(b for b in target.act_bits if not self.a_bits or b in self.a_bits)
        if not acts or not all(native.get(k) or storage for k in ("conv", "linear", "matmul")):
            raise ConfigError(f"w_range={self.w_range or 'any'}, a_bits={self.a_bits or 'any'} leave target {target.name!r} no precision")
        return dataclasses.replace(target, native_weight_bits=native, storage_weight_bits=storage, act_bits=acts)

    def budgets(self, table: LatencyTable | None, fp32: dict[str, float], int8: dict[str, float]) -> list[Budget]:
        """The budgets given, resolved against the fp32 and uniform-INT8 reference totals."""
        if self.latency and table is None:
            raise ConfigError(
                "a latency budget needs a latency table: run `lcpaq profile --model M --target T --out table.json` "
                "and give it with --latency-table (ilp{table=...})"
            )
        texts = [f"{q}={v}" for q, v in (("size", self.size), ("bops", self.bops), ("latency", self.latency), ("act_memory", self.act_memory)) if v]
        return [parse_budget(t, fp32, int8) for t in texts]

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        table = load_table(self.table, ctx.target)
        fp32, int8 = reference_totals(gm, table)
        budgets = self.budgets(table, fp32, int8)
        if not budgets:
            raise ConfigError("needs at least one budget, for example ilp{size=0.3x} or ilp{bops=0.5int8}")
        problem = problem_from_graph(gm, self.candidates_target(ctx.target), table)
        objective = _objective(problem, self.tradeoff_weights(), fp32)
        try:
            solution = problem.solve({b.quantity: b.limit for b in budgets}, objective)
        except Infeasible:
            raise ConfigError(_infeasible_message(problem, budgets)) from None
        for layer, bits in zip(find_layers(gm), solution.choice):
            BITS.set(layer.node, bits)
        ASSIGNMENT.set(gm, AssignmentResult(tuple(budgets), tuple(solution.totals.items()), solution.sensitivity, solution.seconds))
        return PassResult(gm, False)


def _objective(problem: AssignmentProblem, weights: dict[str, float], fp32: dict[str, float]) -> np.ndarray | None:
    if not weights:
        return None
    sens = np.concatenate(problem.sensitivity)
    scale = float(sum(np.mean(s) for s in problem.sensitivity)) or 1.0
    for quantity, w in weights.items():
        sens = sens + w * scale * np.concatenate(problem.costs[quantity]) / max(fp32[quantity], 1e-30)
    return sens


def _infeasible_message(problem: AssignmentProblem, budgets: list[Budget]) -> str:
    parts = []
    for b in budgets:
        least = problem.minimum(b.quantity)
        parts.append(
            f"{b.text} asks {b.quantity} <= {format_quantity(b.quantity, b.limit)}, "
            f"the smallest achievable is {format_quantity(b.quantity, least)}"
        )
    joint = " (each alone is achievable, not all together)" if all(problem.minimum(b.quantity) <= b.limit for b in budgets) else ""
    return "infeasible budget: " + "; ".join(parts) + joint
