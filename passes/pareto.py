"""pareto: the frontier of total sensitivity against size, BOPs (and latency, with a table)."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from lcpaq.ir.errors import ConfigError
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import COST, PARETO, SENSITIVITY, ParetoFront, ParetoPoint
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.budgets import BOPS, LATENCY, QUANTITIES, SIZE
from lcpaq.passes.context import PassContext
from lcpaq.passes.cost_model import default_act_bits, load_table
from lcpaq.passes.ilp import problem_from_graph
from lcpaq.passes.ilp_problem import AssignmentProblem, Infeasible


@register_pass
@dataclass(frozen=True)
class ParetoSweep(Pass):
    """For each quantity, solves the ILP at ``points`` budgets spread evenly from the smallest
    achievable value to the largest, and keeps the non-dominated (quantity, sensitivity) points.
    With a latency ``table``, latency is swept too. The size sweep keeps activations at the
    target's fastest native width, as the ILP does under a size budget alone; candidates are
    those the ILP offers (what the backend executes, where ``lcpaq.executable`` says).

    Reads: ``lcpaq.cost``, ``lcpaq.sensitivity``. Writes: ``lcpaq.pareto`` on the graph."""

    name = "pareto"
    reads = (COST, SENSITIVITY)
    writes = (PARETO,)
    points: int = 50
    quantities: tuple[str, ...] = (SIZE, BOPS)
    table: str = ""

    def __post_init__(self) -> None:
        if self.points < 2:
            raise ValueError("points must be >= 2")
        for q in self.quantities:
            if q not in QUANTITIES:
                raise ValueError(f"cannot sweep {q!r}; choose from {', '.join(QUANTITIES)}")

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        start = time.perf_counter()
        table = load_table(self.table, ctx.target)
        if LATENCY in self.quantities and table is None:
            raise ConfigError("sweeping latency needs a latency table (pareto{table=...})")
        problem = problem_from_graph(gm, ctx.target, table)
        quantities = self.quantities + ((LATENCY,) if table is not None and LATENCY not in self.quantities else ())
        by_size = problem
        if SIZE in quantities and len(ctx.target.act_bits) > 1:
            pinned = dataclasses.replace(ctx.target, act_bits=(default_act_bits(ctx.target, find_layers(gm), table),))
            by_size = problem_from_graph(gm, pinned, table)
        fronts = tuple((q, sweep(by_size if q == SIZE else problem, q, self.points)) for q in quantities)
        PARETO.set(gm, ParetoFront(fronts, time.perf_counter() - start))
        return PassResult(gm, False)


def sweep(problem: AssignmentProblem, quantity: str, points: int) -> tuple[ParetoPoint, ...]:
    lo, hi = problem.minimum(quantity), problem.maximum(quantity)
    found: list[ParetoPoint] = []
    for limit in np.linspace(lo, hi, points):
        try:
            sol = problem.solve({quantity: float(limit) * (1 + 1e-9) + 1e-9})
        except Infeasible:
            continue
        assignment = tuple((n, b.w_bits, b.a_bits) for n, b in zip(problem.names, sol.choice))
        found.append(ParetoPoint(float(limit), sol.totals[quantity], sol.sensitivity, assignment))
    return _non_dominated(found)


def _non_dominated(points: list[ParetoPoint]) -> tuple[ParetoPoint, ...]:
    best: list[ParetoPoint] = []
    for p in sorted(points, key=lambda p: (p.achieved, p.sensitivity)):
        if not best or p.sensitivity < best[-1].sensitivity - 1e-15 * max(abs(best[-1].sensitivity), 1.0):
            if best and p.assignment == best[-1].assignment:
                continue
            best.append(p)
    return tuple(best)
