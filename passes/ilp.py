"""ilp: choose each layer's precision by integer linear programming under budgets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import find_layers, precision_groups
from lcpaq.ir.meta import ASSIGNMENT, COST, QSPEC, QUANT_SCHEME, SENSITIVITY, AssignmentResult, BitAssignment, Budget
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.budgets import LATENCY, QUANTITIES, BudgetSpec, format_quantity, parse_budget
from lcpaq.passes.context import PassContext
from lcpaq.passes.cost_model import LAYER_QUANTITIES, fixed_costs, layer_quantities, load_table, reference_totals
from lcpaq.passes.ilp_problem import AssignmentProblem, Infeasible
from lcpaq.passes.quant_scheme import assign

#: Quantities the objective may trade against sensitivity (those with an fp32 reference).
TRADEABLE = LAYER_QUANTITIES


def problem_from_graph(gm: fx.GraphModule, target: Target, table: LatencyTable | None = None) -> AssignmentProblem:
    """The assignment problem of a costed, sensitivity-annotated graph; candidates per layer
    are those the target offers for the layer's op kind, priced by the cost model. With a
    latency ``table``, each candidate's latency is the table's, and candidates it has no
    measurement for are left out."""
    layers = find_layers(gm)
    index = {layer.name: i for i, layer in enumerate(layers)}
    candidates, sens = [], []
    costs: dict[str, list[np.ndarray]] = {q: [] for q in LAYER_QUANTITIES + ((LATENCY,) if table is not None else ())}
    for layer in layers:
        cost, s = COST.get(layer.node), SENSITIVITY.get(layer.node)
        cands = list(target.candidates(layer.kind))
        if table is not None:
            timed = [(c, _seconds(table, layer.name, c)) for c in cands]
            cands = [c for c, sec in timed if sec is not None]
            if not cands:
                raise ConfigError(f"latency table for {table.model} has no usable entry for layer {layer.name!r}")
            costs[LATENCY].append(np.array([sec for _, sec in timed if sec is not None]))
        candidates.append(cands)
        sens.append(np.array([s.of(c) for c in cands]))
        values = [layer_quantities(layer, cost, c) for c in cands]
        for q in LAYER_QUANTITIES:
            costs[q].append(np.array([v[q] for v in values]))
    groups = [tuple(index[n] for n in g) for g in precision_groups(layers)]
    return AssignmentProblem([layer.name for layer in layers], candidates, sens, costs, fixed_costs(gm, table), groups)


def _seconds(table: LatencyTable, layer: str, bits: BitAssignment) -> float | None:
    try:
        return table.seconds(layer, bits)
    except ConfigError:
        return None


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
    Budgets are checked when the pass is built, before any work.

    Reads: ``lcpaq.cost``, ``lcpaq.sensitivity``, ``lcpaq.quant_scheme``. Writes:
    ``lcpaq.qspec`` on every layer (the chosen bits under the scheme) and ``lcpaq.assignment``
    on the graph. An infeasible budget is a one-line error stating the smallest achievable
    value of each constrained quantity."""

    name = "ilp"
    reads = (COST, SENSITIVITY, QUANT_SCHEME)
    writes = (QSPEC, ASSIGNMENT)
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
        self.budget_specs()
        if self.latency and not self.table:
            raise ConfigError(
                "a latency budget needs a latency table: run `lcpaq profile --model M --target T --out table.json` "
                "and give it with --latency-table (ilp{table=...})"
            )

    def budget_specs(self) -> list[BudgetSpec]:
        """The budgets given (``size=0.3x``...), parsed; a malformed one is a ConfigError."""
        return [parse_budget(f"{q}={getattr(self, q)}") for q in QUANTITIES if getattr(self, q)]

    def tradeoff_weights(self) -> dict[str, float]:
        """``tradeoff=bops:0.1+size:0.5``: soft terms added to the objective, each weight w
        costing w x (mean total sensitivity) per fp32-model's worth of that quantity."""
        weights = {}
        for item in filter(None, self.tradeoff.split("+")):
            quantity, _, value = item.partition(":")
            if quantity not in TRADEABLE:
                raise ValueError(f"tradeoff on {quantity!r}: choose {', '.join(TRADEABLE)}")
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

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        table = load_table(self.table, ctx.target)
        fp32, int8 = reference_totals(gm, table)
        budgets = [spec.resolve(fp32, int8) for spec in self.budget_specs()]
        if not budgets:
            raise ConfigError("needs at least one budget, for example ilp{size=0.3x} or ilp{bops=0.5int8}")
        problem = problem_from_graph(gm, self.candidates_target(ctx.target), table)
        objective = _objective(problem, self.tradeoff_weights(), fp32)
        try:
            solution = problem.solve({b.quantity: b.limit for b in budgets}, objective)
        except Infeasible:
            raise ConfigError(_infeasible_message(problem, budgets)) from None
        assign(gm, dict(zip(problem.names, solution.choice)))
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
