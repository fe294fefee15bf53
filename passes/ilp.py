"""ilp: choose each layer's precision by integer linear programming under budgets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import find_layers, precision_groups, weight_groups
from lcpaq.ir.meta import (
    ASSIGNMENT, COST, FLOAT_LAYERS, MODEL_COST, QSPEC, QUANT_SCHEME, SENSITIVITY, AssignmentResult, BitAssignment, Budget,
    FloatLayers,
)
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.budgets import ACT_MEMORY, BOPS, LATENCY, PEAK, QUANTITIES, SIZE, BudgetSpec, format_quantity, parse_budget
from lcpaq.passes.context import PassContext
from lcpaq.passes.cost_model import (
    FP32, LAYER_QUANTITIES, default_act_bits, fixed_costs, layer_quantities, layer_sensitivity, load_table, offered_bits,
    reference_totals,
)
from lcpaq.passes.ilp_problem import AssignmentProblem, Infeasible
from lcpaq.passes.quant_scheme import assign

#: Quantities the objective may trade against sensitivity (those with an fp32 reference).
TRADEABLE = LAYER_QUANTITIES


def problem_from_graph(gm: fx.GraphModule, target: Target, table: LatencyTable | None = None) -> AssignmentProblem:
    """The assignment problem of a costed, sensitivity-annotated graph; candidates per layer
    are those the target offers for the layer's op kind that the layer can be given
    (:func:`~lcpaq.passes.cost_model.offered_bits`: what its backend executes, one weight width
    per shared weight tensor, float alone where nothing else executes), priced by the cost
    model. With a latency ``table``, each candidate's latency is the table's, and candidates it
    has no measurement for are left out."""
    layers = find_layers(gm)
    index = {layer.name: i for i, layer in enumerate(layers)}
    offered, why = offered_bits(gm, layers, {layer.name: target.candidates(layer.kind) for layer in layers})
    candidates, sens = [], []
    costs: dict[str, list[np.ndarray]] = {q: [] for q in LAYER_QUANTITIES + ((LATENCY,) if table is not None else ())}
    for layer in layers:
        cost, s = COST.get(layer.node), SENSITIVITY.get(layer.node)
        cands = offered[layer.name]
        if table is not None:
            timed = [(c, _seconds(table, layer.name, c)) for c in cands]
            cands = [c for c, sec in timed if sec is not None]
            if not cands:
                raise ConfigError(f"latency table for {table.model} has no usable entry for layer {layer.name!r}")
            costs[LATENCY].append(np.array([sec for _, sec in timed if sec is not None]))
        candidates.append(cands)
        sens.append(np.array([layer_sensitivity(cost, s, c) for c in cands]))
        values = [layer_quantities(layer, cost, c) for c in cands]
        for q in LAYER_QUANTITIES:
            costs[q].append(np.array([v[q] for v in values]))
    # A reader kept in float reads the float tensor: it does not share the others' quantizer.
    quantized = [tuple(index[n] for n in g if candidates[index[n]] != [FP32]) for g in precision_groups(layers)]
    groups = [g for g in quantized if len(g) > 1]
    tied = [tuple(index[n] for n in g) for g in weight_groups(gm, layers)]
    return AssignmentProblem([layer.name for layer in layers], candidates, sens, costs, fixed_costs(gm, table), groups, tied, why)


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
    per layer from the target's candidates, equal activation widths for layers that read the
    same tensor and equal weight widths for layers that read the same weight. Solved exactly
    by HiGHS (scipy.optimize.milp). ``tradeoff`` adds soft cost terms to the objective, for
    trading budgets against each other; ``w_range`` and ``a_bits`` narrow the target's
    candidates. Activations stay at the target's fastest native width
    (:func:`~lcpaq.passes.cost_model.default_act_bits`) unless a bops, act_memory or latency
    budget, a bops or act_memory tradeoff, or ``a_bits`` makes them a choice: a size budget
    alone never buys slower activations. A latency budget needs ``table``, a latency table
    measured by ``lcpaq profile``; candidates it has no measurement for are left out. Where a
    layer carries ``lcpaq.executable`` (the backend's answer), only precisions it executes are
    offered, and a layer with none is costed as float. Budgets are checked when the pass is
    built, before any work.

    Reads: ``lcpaq.cost``, ``lcpaq.sensitivity``, ``lcpaq.quant_scheme``. Writes:
    ``lcpaq.qspec`` on every layer (the chosen bits under the scheme), ``lcpaq.assignment`` and
    ``lcpaq.float_layers`` on the graph. An infeasible budget is a one-line error stating the
    smallest achievable value of each constrained quantity and how much of it is kept in
    float."""

    name = "ilp"
    reads = (COST, SENSITIVITY, QUANT_SCHEME)
    writes = (QSPEC, ASSIGNMENT, FLOAT_LAYERS)
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

    def chooses_activations(self) -> bool:
        """Whether activation widths are a choice: a bops, act_memory or latency budget, a bops
        or act_memory tradeoff, or ``a_bits`` asks for them; else they stay at the default."""
        asked = self.bops or self.act_memory or self.latency or self.a_bits
        return bool(asked or {BOPS, ACT_MEMORY} & set(self.tradeoff_weights()))

    def candidates_target(self, target: Target, act_default: int | None = None) -> Target:
        """The target narrowed to ``w_range`` and ``a_bits``, and its activations to
        ``act_default`` unless they are a choice; one-line error if nothing is left."""
        lo, hi = self.width_range()
        native = {k: tuple(b for b in v if lo <= b <= hi) for k, v in target.native_weight_bits.items()}
        storage = tuple(b for b in target.storage_weight_bits if lo <= b <= hi)
        acts = tuple(b for b in target.act_bits if not self.a_bits or b in self.a_bits)
        if act_default in acts and not self.chooses_activations():
            acts = (act_default,)
        if not acts or not all(native.get(k) or storage for k in ("conv", "linear", "matmul")):
            raise ConfigError(f"w_range={self.w_range or 'any'}, a_bits={self.a_bits or 'any'} leave target {target.name!r} no precision")
        return dataclasses.replace(target, native_weight_bits=native, storage_weight_bits=storage, act_bits=acts)

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        table = load_table(self.table, ctx.target)
        fp32, int8 = reference_totals(gm, table)
        budgets = [spec.resolve(fp32, int8) for spec in self.budget_specs()]
        if not budgets:
            raise ConfigError("needs at least one budget, for example ilp{size=0.3x} or ilp{bops=0.5int8}")
        act_default = default_act_bits(ctx.target, find_layers(gm), table)
        problem = problem_from_graph(gm, self.candidates_target(ctx.target, act_default), table)
        objective = _objective(problem, self.tradeoff_weights(), fp32)
        try:
            solution = problem.solve({b.quantity: b.limit for b in budgets}, objective)
        except Infeasible:
            raise ConfigError(_infeasible_message(problem, budgets, len(MODEL_COST.get(gm).float_tensors))) from None
        assign(gm, dict(zip(problem.names, solution.choice)))
        ASSIGNMENT.set(gm, AssignmentResult(tuple(budgets), tuple(solution.totals.items()), solution.sensitivity, solution.seconds))
        FLOAT_LAYERS.set(gm, FloatLayers(tuple(problem.float_reasons.items())))
        return PassResult(gm, False)


def _objective(problem: AssignmentProblem, weights: dict[str, float], fp32: dict[str, float]) -> np.ndarray | None:
    if not weights:
        return None
    sens = np.concatenate(problem.sensitivity)
    scale = float(sum(np.mean(s) for s in problem.sensitivity)) or 1.0
    for quantity, w in weights.items():
        sens = sens + w * scale * np.concatenate(problem.costs[quantity]) / max(fp32[quantity], 1e-30)
    return sens


def _infeasible_message(problem: AssignmentProblem, budgets: list[Budget], float_tensors: int = 0) -> str:
    parts = []
    for b in budgets:
        least = problem.minimum(b.quantity)
        parts.append(
            f"{b.text} asks {b.quantity} <= {format_quantity(b.quantity, b.limit, least)}, "
            f"the smallest achievable is {format_quantity(b.quantity, least, b.limit)}{_float_part(problem, b.quantity, float_tensors)}"
        )
    joint = " (each alone is achievable, not all together)" if all(problem.minimum(b.quantity) <= b.limit for b in budgets) else ""
    return "infeasible budget: " + "; ".join(parts) + joint


def _float_part(problem: AssignmentProblem, quantity: str, float_tensors: int) -> str:
    """``, of which X is kept in float (...)`` for an additive quantity: the parameters no layer
    stores (size) and the layers offered float alone, which no assignment changes."""
    if quantity in PEAK:
        return ""
    floats = [l for l, name in enumerate(problem.names) if name in problem.float_reasons]
    tensors = float_tensors if quantity == SIZE else 0
    value = (problem.fixed.get(SIZE, 0.0) if tensors else 0.0) + sum(float(problem.costs[quantity][l][0]) for l in floats)
    if value <= 0:
        return ""
    what = " and ".join(
        f"{n} {noun}{'s' * (n != 1)} {where}"
        for n, noun, where in ((tensors, "tensor", "outside quantizable layers"), (len(floats), "layer", "without an integer kernel"))
        if n
    )
    return f", of which {format_quantity(quantity, value)} is kept in float ({what})"
