import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lcpaq.hw_targets.target import Target
from lcpaq.ir import capture, find_layers
from lcpaq.backends.latency_table import LatencyTable
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.meta import ASSIGNMENT, BITS, PARETO, BitAssignment
from lcpaq.passes import Pipeline
from lcpaq.passes.budgets import format_quantity, parse_budget
from lcpaq.passes.ilp import problem_from_graph
from lcpaq.passes.ilp_problem import TOLERANCE, AssignmentProblem, Infeasible
from tests.conftest import make_ctx

ANALYSE = "fold-bn,shape-prop,cost,calibrate,hessian{probes=8}"


@st.composite
def problems(draw):
    n_layers = draw(st.integers(1, 5))
    widths = [(2, 8), (4, 8), (8, 8), (8, 16), (4, 16)]
    candidates, sens, size, bops = [], [], [], []
    for _ in range(n_layers):
        cands = draw(st.lists(st.sampled_from(widths), min_size=1, max_size=4, unique=True))
        candidates.append([BitAssignment(w, a) for w, a in cands])
        floats = st.integers(0, 10_000).map(lambda v: v / 100)  # costs on a grid, as bytes and BOPs are
        sens.append(np.array([draw(floats) for _ in cands]))
        size.append(np.array([draw(floats) for _ in cands]))
        bops.append(np.array([draw(floats) for _ in cands]))
    group = tuple(range(min(2, n_layers))) if draw(st.booleans()) and n_layers >= 2 else None
    fixed = draw(st.floats(0, 10))
    problem = AssignmentProblem([f"l{i}" for i in range(n_layers)], candidates, sens, {"size": size, "bops": bops},
                                {"size": fixed}, [group] if group else [])

    def binding(per_layer: list[np.ndarray], offset: float) -> float:
        """A limit between the least and the most the layers can sum to: mostly feasible, binding."""
        lo, hi = sum(v.min() for v in per_layer), sum(v.max() for v in per_layer)
        return offset + lo + draw(st.floats(0.0, 1.0)) * (hi - lo)

    return problem, {"size": binding(size, fixed), "bops": binding(bops, 0.0)}


def _brute_force(problem: AssignmentProblem, budgets: dict[str, float]) -> float | None:
    best = None
    for picks in itertools.product(*(range(len(c)) for c in problem.candidates)):
        if any(len({problem.candidates[l][picks[l]].a_bits for l in g}) > 1 for g in problem.groups):
            continue
        totals = problem.evaluate(list(picks))
        if any(totals[q] > limit + TOLERANCE * max(abs(limit), 1e-30) for q, limit in budgets.items()):
            continue
        value = sum(problem.sensitivity[l][c] for l, c in enumerate(picks))
        best = value if best is None else min(best, value)
    return best


@settings(max_examples=150, deadline=None)
@given(problems())
def test_ilp_optimum_equals_brute_force(case) -> None:
    problem, budgets = case
    expected = _brute_force(problem, budgets)
    try:
        solution = problem.solve(budgets)
    except Infeasible:
        assert expected is None
        return
    assert expected is not None
    assert solution.sensitivity == pytest.approx(expected, abs=1e-6)
    for quantity, limit in budgets.items():
        assert solution.totals[quantity] <= limit + TOLERANCE * max(abs(limit), 1e-30)


def _analysed(block, target):
    x = torch.randn(4, 3, 8, 8)
    gm = capture(block, (x[:1],))
    ctx = make_ctx(target, x[:1])
    return Pipeline.from_spec(ANALYSE)(gm, ctx).graph_module, ctx


def test_groups_share_activation_width(block, x86) -> None:
    gm, ctx = _analysed(block, x86)
    problem = problem_from_graph(gm, x86)
    # a BOPs budget between uniform A8 and A16 makes activation widths a real choice
    Pipeline.from_spec("ilp{bops=1.5int8}")(gm, ctx)
    bits = {layer.name: BITS.get(layer.node) for layer in find_layers(gm)}
    assert bits["c1"].a_bits == bits["c2"].a_bits and bits["fc"].a_bits == bits["fc2"].a_bits
    assert problem.groups == [(0, 1), (2, 3)]
    result = ASSIGNMENT.get(gm)
    assert dict(result.achieved)["bops"] <= result.budgets[0].limit


def test_candidates_come_from_target(block) -> None:
    narrow = Target("narrow", "", {}, {"conv": (8,), "linear": (8,), "matmul": (8,)}, (4,), (8,))
    gm, ctx = _analysed(block, narrow)
    Pipeline.from_spec("ilp{size=0.2x}")(gm, ctx)
    assert {(b.w_bits, b.a_bits) for b in (BITS.get(layer.node) for layer in find_layers(gm))} <= {(4, 8), (8, 8)}


def test_infeasible_budget_states_smallest_achievable(block, x86) -> None:
    gm, ctx = _analysed(block, x86)
    least = problem_from_graph(gm, x86).minimum("size")
    with pytest.raises(ConfigError) as info:
        Pipeline.from_spec("ilp{size=0.01x}")(gm, ctx)
    message = str(info.value)
    assert message.startswith("pass 'ilp': infeasible budget: size=0.01x asks size <=")
    assert f"the smallest achievable is {format_quantity('size', least)}" in message and "\n" not in message


def test_ilp_needs_a_budget(block, x86) -> None:
    gm, ctx = _analysed(block, x86)
    with pytest.raises(ConfigError, match="needs at least one budget"):
        Pipeline.from_spec("ilp")(gm, ctx)


def test_pareto_front_is_monotone_and_spans_the_range(block, x86) -> None:
    gm, ctx = _analysed(block, x86)
    Pipeline.from_spec("pareto{points=20}")(gm, ctx)
    problem = problem_from_graph(gm, x86)
    for quantity in ("size", "bops"):
        front = PARETO.get(gm).front(quantity)
        assert len(front) >= 3
        xs = [p.achieved for p in front]
        ys = [p.sensitivity for p in front]
        assert xs == sorted(xs) and all(a > b for a, b in zip(ys, ys[1:]))
        assert xs[0] == pytest.approx(problem.minimum(quantity))


@pytest.mark.parametrize(("text", "quantity", "limit"), [
    ("size=0.3x", "size", 0.3 * 1000),
    ("bops=0.5int8", "bops", 0.5 * 64),
    ("size=2MB", "size", 2e6),
    ("size=64KiB", "size", 65536),
    ("bops=1.5G", "bops", 1.5e9),
    ("latency=2.5ms", "latency", 2.5e-3),
    ("act-memory=1kb", "act_memory", 1000),
])
def test_budget_parsing(text: str, quantity: str, limit: float) -> None:
    budget = parse_budget(text, {"size": 1000, "bops": 1024}, {"size": 250, "bops": 64})
    assert budget.quantity == quantity and budget.limit == pytest.approx(limit)


@pytest.mark.parametrize(("text", "message"), [
    ("speed=2x", "KEY one of size, bops, latency, act_memory"),
    ("size=lots", "must be a number"),
    ("size=3furlongs", "unit 'furlongs' unknown for size"),
])
def test_bad_budgets(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_budget(text, {"size": 1.0}, {"size": 1.0})


def test_width_range_and_activation_widths(block, x86) -> None:
    gm, ctx = _analysed(block, x86)
    Pipeline.from_spec("ilp{size=0.3x,w_range=4-6,a_bits=8}")(gm, ctx)
    bits = [BITS.get(layer.node) for layer in find_layers(gm)]
    assert all(4 <= b.w_bits <= 6 and b.a_bits == 8 for b in bits)
    with pytest.raises(ConfigError, match="leave target 'x86-host' no precision"):
        Pipeline.from_spec("ilp{size=0.3x,a_bits=4}")(gm, ctx)
    with pytest.raises(ConfigError, match="w_range must be LO-HI"):
        Pipeline.from_spec("ilp{size=0.3x,w_range=8-4}")


def test_bops_tradeoff_lowers_bops(block, x86) -> None:
    gm, ctx = _analysed(block, x86)
    Pipeline.from_spec("ilp{size=0.5x}")(gm, ctx)
    free = dict(ASSIGNMENT.get(gm).achieved)["bops"]
    Pipeline.from_spec("ilp{size=0.5x,tradeoff=bops:10}")(gm, ctx)
    traded = ASSIGNMENT.get(gm)
    assert dict(traded.achieved)["bops"] < free
    assert traded.sensitivity >= 0


def _table(path, target: str = "x86-host") -> str:
    """A hand-made latency table for the block: 16-bit layers cost twice their 8-bit time."""
    layers = {"c1": 4e-5, "c2": 1e-5, "fc": 2e-6, "fc2": 2e-6}
    table = LatencyTable(target, "test", "0", "2026-11-21", 0, "block",
                         {name: {"fp32": 3 * s, "w8a8": s, "w16a16": 2 * s} for name, s in layers.items()}, fixed_seconds=1e-5)
    table.save(path)
    return str(path)


def test_latency_budget_reads_the_table(block, x86, tmp_path) -> None:
    gm, ctx = _analysed(block, x86)
    path = _table(tmp_path / "t.json")
    table = LatencyTable.load(path, x86)
    Pipeline.from_spec(f"ilp{{latency=0.07ms,table={path}}}")(gm, ctx)
    bits = {layer.name: BITS.get(layer.node) for layer in find_layers(gm)}
    achieved = dict(ASSIGNMENT.get(gm).achieved)["latency"]
    assert achieved <= 0.07e-3 and achieved == pytest.approx(table.total(bits))
    assert {(b.w_bits, b.a_bits) for b in bits.values()} <= {(w, 8) for w in range(2, 9)} | {(16, 16)}
    assert any(b.w_bits == 16 for b in bits.values())  # the budget leaves room for some 16-bit layers
    Pipeline.from_spec(f"ilp{{latency=1.0int8,table={path}}}")(gm, ctx)
    assert all(BITS.get(layer.node).a_bits == 8 for layer in find_layers(gm))  # only int8 fits


def test_latency_budget_errors(block, x86, tmp_path) -> None:
    gm, ctx = _analysed(block, x86)
    path = _table(tmp_path / "t.json")
    with pytest.raises(ConfigError, match="latency=0.01ms asks latency <= 0.010 ms, the smallest achievable is 0.064 ms"):
        Pipeline.from_spec(f"ilp{{latency=0.01ms,table={path}}}")(gm, ctx)
    with pytest.raises(ConfigError, match="a latency budget needs a latency table"):
        Pipeline.from_spec("ilp{latency=1ms}")(gm, ctx)
    foreign = _table(tmp_path / "arm.json", target="arm-a76")
    with pytest.raises(CorruptFileError, match=f"latency table {foreign} was measured for target 'arm-a76'"):
        Pipeline.from_spec(f"ilp{{latency=1ms,table={foreign}}}")(gm, ctx)


def test_pareto_sweeps_latency_with_a_table(block, x86, tmp_path) -> None:
    gm, ctx = _analysed(block, x86)
    Pipeline.from_spec(f"pareto{{points=10,table={_table(tmp_path / 't.json')}}}")(gm, ctx)
    front = PARETO.get(gm).front("latency")
    assert len(front) >= 2 and front[0].achieved == pytest.approx(6.4e-5)


def test_badly_scaled_instance_is_solved() -> None:
    """Found by hypothesis: a 1e-6 coefficient beside a zero budget made HiGHS's presolve give
    up ("Solve error"); rows are now scaled, and a solver error is retried without presolve."""
    problem = AssignmentProblem(
        ["l0", "l1"], [[BitAssignment(2, 8), BitAssignment(4, 8), BitAssignment(8, 8)], [BitAssignment(8, 8)]],
        [np.zeros(3), np.zeros(1)],
        {"size": [np.array([0.0, 1e-6, 0.0]), np.array([2.0])], "bops": [np.array([1.0, 0.0, 0.0]), np.array([0.0])]},
        {"size": 0.0}, [],
    )
    solution = problem.solve({"size": 2.0, "bops": 0.0})
    assert solution.totals["bops"] == 0.0 and solution.totals["size"] <= 2.0 * (1 + TOLERANCE)
