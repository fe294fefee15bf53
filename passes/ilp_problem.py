"""The bit-width assignment problem as an integer linear program, solved by scipy's HiGHS.

Variables: one binary x[l, c] per (layer l, candidate precision c); one choice per layer.
Objective: minimise the sum of sensitivities. Constraints: budgets on additive quantities
(size, BOPs, latency), peak ones (activation memory: a per-layer bound, since peak = max),
layers that read the same activation choosing the same activation width, and layers that read
the same weight tensor choosing the same weight width."""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from lcpaq.ir.errors import LcpaqError
from lcpaq.ir.meta import BitAssignment
from lcpaq.passes.budgets import PEAK
from lcpaq.passes.cost_model import aggregate


@dataclass(frozen=True)
class Solution:
    choice: tuple[BitAssignment, ...]
    sensitivity: float
    totals: dict[str, float]
    seconds: float


class Infeasible(Exception):
    pass


class SolverError(LcpaqError):
    """HiGHS failed for a reason other than infeasibility (even after a retry without presolve)."""


_INFEASIBLE = 2  # scipy.optimize.milp's status for a proven infeasible problem
TOLERANCE = 1e-6  #: relative slack of every budget: HiGHS's feasibility tolerance on scaled rows


def _scaled(row: np.ndarray, limit: float, budget: float | None = None) -> LinearConstraint:
    """``row . x <= limit`` divided by the largest of its magnitudes and the whole ``budget``
    (fixed part included): budgets in bytes, BOPs or seconds span 15 orders of magnitude, which
    HiGHS's presolve does not always survive, and what is negligible against the budget stays so."""
    scale = max(float(np.max(np.abs(row), initial=0.0)), abs(limit), abs(budget or 0.0)) or 1.0
    return LinearConstraint(row / scale, -np.inf, limit / scale)


def _milp(c: np.ndarray, constraints: list[LinearConstraint], n: int):
    """Solve; on a solver error (not a verdict), retry once without presolve."""
    with _quiet_stdout():
        res = milp(c, constraints=constraints, integrality=np.ones(n), bounds=Bounds(0, 1))
        if res.status not in (0, _INFEASIBLE):
            res = milp(c, constraints=constraints, integrality=np.ones(n), bounds=Bounds(0, 1), options={"presolve": False})
    return res


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS's C++ core sometimes prints debug lines straight to file descriptor 1."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


@dataclass
class AssignmentProblem:
    """``costs[q][l][c]``: quantity q of layer l at candidate c; ``fixed[q]``: the part of q
    that no choice changes (for example the fp32 parameters outside quantizable layers).
    ``groups``: layers (indices) that must choose one activation width; ``weight_groups``:
    layers that must choose one weight width."""

    names: list[str]
    candidates: list[list[BitAssignment]]
    sensitivity: list[np.ndarray]
    costs: dict[str, list[np.ndarray]]
    fixed: dict[str, float]
    groups: list[tuple[int, ...]]
    weight_groups: list[tuple[int, ...]] = field(default_factory=list)
    #: Layers offered float alone (no integer precision executes for them), with why.
    float_reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.offsets = np.cumsum([0] + [len(c) for c in self.candidates])
        self.n = int(self.offsets[-1])

    def _flat(self, per_layer: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(per_layer) if per_layer else np.zeros(0)

    def _structure(self) -> list[LinearConstraint]:
        rows = lil_matrix((len(self.names), self.n))
        for l in range(len(self.names)):
            rows[l, self.offsets[l] : self.offsets[l + 1]] = 1
        constraints = [LinearConstraint(rows.tocsr(), 1, 1)]
        eq = []
        for groups, width in ((self.groups, lambda c: c.a_bits), (self.weight_groups, lambda c: c.w_bits)):
            for group in groups:
                widths = sorted({width(c) for l in group for c in self.candidates[l]})
                for other in group[1:]:
                    for b in widths:
                        row = np.zeros(self.n)
                        for l, sign in ((group[0], 1.0), (other, -1.0)):
                            for c, cand in enumerate(self.candidates[l]):
                                if width(cand) == b:
                                    row[self.offsets[l] + c] += sign
                        eq.append(row)
        if eq:
            constraints.append(LinearConstraint(np.array(eq), 0, 0))
        return constraints

    def solve(self, budgets: dict[str, float], objective: np.ndarray | None = None) -> Solution:
        """Minimise total sensitivity (or ``objective``) under ``budgets``; raise Infeasible.
        Budgets hold to the solver's tolerance: within one part in a million (``TOLERANCE``)."""
        solution = self._solve_once(budgets, objective)
        for quantity, limit in budgets.items():
            if solution.totals[quantity] > limit + TOLERANCE * max(abs(limit), 1e-30):
                raise SolverError(f"the ILP solver returned {quantity} {solution.totals[quantity]:.9g} over its budget {limit:.9g}")
        return solution

    def _solve_once(self, budgets: dict[str, float], objective: np.ndarray | None) -> Solution:
        start = time.perf_counter()
        constraints = self._structure()
        for quantity, limit in budgets.items():
            if quantity in PEAK:  # the largest layer's value: every layer's choice is bounded
                values = self._flat(self.costs[quantity])
                for l in range(len(self.names)):
                    row = np.zeros(self.n)
                    row[self.offsets[l] : self.offsets[l + 1]] = values[self.offsets[l] : self.offsets[l + 1]]
                    constraints.append(_scaled(row, limit))
            else:
                constraints.append(_scaled(self._flat(self.costs[quantity]), limit - self.fixed.get(quantity, 0.0), limit))
        c = self._flat(self.sensitivity) if objective is None else objective
        res = _milp(c, constraints, self.n)
        if res.status == _INFEASIBLE:
            raise Infeasible(res.message)
        if res.status != 0 or res.x is None:
            raise SolverError(f"the ILP solver (HiGHS) failed on this assignment problem: {res.message}")
        picks = [int(np.argmax(res.x[self.offsets[l] : self.offsets[l + 1]])) for l in range(len(self.names))]
        return self._solution(picks, time.perf_counter() - start)

    def _solution(self, picks: list[int], seconds: float) -> Solution:
        choice = tuple(self.candidates[l][c] for l, c in enumerate(picks))
        sens = float(sum(self.sensitivity[l][c] for l, c in enumerate(picks)))
        return Solution(choice, sens, self.evaluate(picks), seconds)

    def evaluate(self, picks: list[int]) -> dict[str, float]:
        totals = {}
        for quantity, per_layer in self.costs.items():
            values = [per_layer[l][c] for l, c in enumerate(picks)]
            totals[quantity] = aggregate(quantity, values, self.fixed.get(quantity, 0.0))
        return totals

    def index_of(self, assignment: list[BitAssignment]) -> list[int]:
        return [self.candidates[l].index(bits) for l, bits in enumerate(assignment)]

    def minimum(self, quantity: str) -> float:
        """The smallest value of ``quantity`` any assignment reaches (groups respected)."""
        if quantity in PEAK:
            return float(max(np.min(v) for v in self.costs[quantity]))
        return self.solve({}, objective=self._flat(self.costs[quantity])).totals[quantity]

    def maximum(self, quantity: str) -> float:
        if quantity in PEAK:
            return float(max(np.max(v) for v in self.costs[quantity]))
        return self.solve({}, objective=-self._flat(self.costs[quantity])).totals[quantity]
