import dataclasses
import itertools
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.hw_targets.target import Target
from lcpaq.ir import capture, find_layers
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.meta import ASSIGNMENT, PARETO, QSPEC, SENSITIVITY, BitAssignment
from lcpaq.passes import Pipeline
from lcpaq.passes.budgets import budget_options, parse_budget
from lcpaq.passes.ilp_problem import TOLERANCE, AssignmentProblem, Infeasible
from tests.conftest import make_ctx

ANALYSE = "fold-bn,shape-prop,cost,quant-scheme,calibrate,hessian{probes=8}"

# The residual block of conftest, by hand: (weights, biases) per layer (c1's 8 biases come from
# the folded batch norm), MACs at 8x8 inputs, quantized activation elements, and the two groups
# of layers that read one activation.
PARAMS = {"c1": (8 * 3 * 3 * 3, 8), "c2": (8 * 3, 8), "fc": (4 * 8, 4), "fc2": (4 * 8, 4)}
MACS = {"c1": 8 * 8 * 8 * 27, "c2": 8 * 8 * 8 * 3, "fc": 4 * 8, "fc2": 4 * 8}
ACTS = {"c1": 3 * 8 * 8, "c2": 3 * 8 * 8, "fc": 8, "fc2": 8}
GROUPS = [("c1", "c2"), ("fc", "fc2")]
FP32_SIZE = 4 * sum(w + b for w, b in PARAMS.values())  # 1312 bytes
INT8_BOPS = 64 * sum(MACS.values())


def hand_totals(choice: dict[str, BitAssignment]) -> dict[str, float]:
    return {
        "size": sum(PARAMS[n][0] * b.w_bits / 8 + PARAMS[n][1] * 4 for n, b in choice.items()),
        "bops": float(sum(MACS[n] * b.w_bits * b.a_bits for n, b in choice.items())),
        "act_memory": max(ACTS[n] * b.a_bits / 8 for n, b in choice.items()),
    }


def brute_force(gm, candidates: list[BitAssignment], fits, objective=None) -> tuple[float, dict[str, BitAssignment]]:
    """The least objective (total sensitivity by default) over every assignment of
    ``candidates`` to the block's layers that respects the groups and ``fits``."""
    sens = {layer.name: SENSITIVITY.get(layer.node) for layer in find_layers(gm)}
    objective = objective or (lambda choice: sum(sens[n].of(b) for n, b in choice.items()))
    best, best_choice = None, None
    for combo in itertools.product(candidates, repeat=len(sens)):
        choice = dict(zip(sens, combo))
        if any(choice[a].a_bits != choice[b].a_bits for a, b in GROUPS) or not fits(choice):
            continue
        value = objective(choice)
        if best is None or value < best:
            best, best_choice = value, choice
    assert best is not None
    return best, best_choice


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
    # layers reading one weight tensor: one weight width (a pair that may overlap the group)
    tied = tuple(sorted(draw(st.sets(st.integers(0, n_layers - 1), min_size=2, max_size=2)))) if n_layers >= 2 and draw(st.booleans()) else None
    fixed = draw(st.floats(0, 10))
    problem = AssignmentProblem([f"l{i}" for i in range(n_layers)], candidates, sens, {"size": size, "bops": bops},
                                {"size": fixed}, [group] if group else [], [tied] if tied else [])

    def binding(per_layer: list[np.ndarray], offset: float) -> float:
        """A limit between the least and the most the layers can sum to: mostly feasible, binding."""
        lo, hi = sum(v.min() for v in per_layer), sum(v.max() for v in per_layer)
        return offset + lo + draw(st.floats(0.0, 1.0)) * (hi - lo)

    return problem, {"size": binding(size, fixed), "bops": binding(bops, 0.0)}


def _brute_force_problem(problem: AssignmentProblem, budgets: dict[str, float]) -> float | None:
    best = None
    for picks in itertools.product(*(range(len(c)) for c in problem.candidates)):
        if any(len({problem.candidates[l][picks[l]].a_bits for l in g}) > 1 for g in problem.groups):
            continue
        if any(len({problem.candidates[l][picks[l]].w_bits for l in g}) > 1 for g in problem.weight_groups):
            continue
        size = sum(problem.costs["size"][l][c] for l, c in enumerate(picks)) + problem.fixed["size"]
        bops = sum(problem.costs["bops"][l][c] for l, c in enumerate(picks))
        if size > budgets["size"] * (1 + TOLERANCE) or bops > budgets["bops"] + TOLERANCE * max(budgets["bops"], 1e-30):
            continue
        value = sum(problem.sensitivity[l][c] for l, c in enumerate(picks))
        best = value if best is None else min(best, value)
    return best


@settings(max_examples=150, deadline=None, derandomize=True)
@given(problems())
def test_ilp_optimum_equals_brute_force(case) -> None:
    problem, budgets = case
    expected = _brute_force_problem(problem, budgets)
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


def _chosen(gm) -> dict[str, BitAssignment]:
    return {layer.name: QSPEC.get(layer.node).bits for layer in find_layers(gm)}


NARROW = Target("narrow", "", {}, {"conv": (8,), "linear": (8,), "matmul": (8,)}, (4,), (8,))


@pytest.mark.parametrize(("target", "ilp", "widths", "acts", "fits"), [
    ("x86", "size=0.2x", range(2, 9), (8,), lambda t: t["size"] <= 0.2 * FP32_SIZE),
    ("x86", "size=0.3x,w_range=4-6", range(4, 7), (8,), lambda t: t["size"] <= 0.3 * FP32_SIZE),
    ("narrow", "size=0.2x", (4, 8), (8,), lambda t: t["size"] <= 0.2 * FP32_SIZE),
    # activation widths are a real choice here, and layers reading one tensor must agree
    ("sim", "bops=1.5int8,w_range=8-8,a_bits=4:8:16", (8,), (4, 8, 16), lambda t: t["bops"] <= 1.5 * INT8_BOPS),
    ("sim", "size=0.3x,act_memory=160,w_range=6-8,a_bits=4:8:16", (6, 7, 8), (4, 8, 16),
     lambda t: t["size"] <= 0.3 * FP32_SIZE and t["act_memory"] <= 160),
])
def test_ilp_finds_the_brute_force_optimum_of_the_block(block, x86, sim, target, ilp, widths, acts, fits) -> None:
    tgt = {"x86": x86, "sim": sim, "narrow": NARROW}[target]
    gm, ctx = _analysed(block, tgt)
    Pipeline.from_spec(f"ilp{{{ilp}}}")(gm, ctx)
    candidates = [BitAssignment(w, a) for w in widths for a in acts]
    best, _ = brute_force(gm, candidates, lambda choice: fits(hand_totals(choice)))
    result, chosen = ASSIGNMENT.get(gm), _chosen(gm)
    assert result.sensitivity == pytest.approx(best, rel=1e-9)
    assert set(chosen.values()) <= set(candidates) and all(chosen[a].a_bits == chosen[b].a_bits for a, b in GROUPS)
    achieved = dict(result.achieved)
    assert achieved == pytest.approx(hand_totals(chosen))
    assert fits(achieved)


def test_infeasible_budget_states_smallest_achievable(block, x86) -> None:
    """The least size on x86-host: every weight at 2 bits, int32 biases: 304 / 4 + 24 x 4 bytes."""
    gm, ctx = _analysed(block, x86)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_spec("ilp{size=0.01x}")(gm, ctx)
    assert str(info.value) == "pass 'ilp': infeasible budget: size=0.01x asks size <= 13 B, the smallest achievable is 172 B"


def test_ilp_needs_a_budget(block, x86) -> None:
    gm, ctx = _analysed(block, x86)
    with pytest.raises(ConfigError, match="needs at least one budget"):
        Pipeline.from_spec("ilp")(gm, ctx)


def test_bops_tradeoff_minimises_the_weighted_objective(block, x86) -> None:
    """tradeoff=bops:10 adds 10 x (sum over layers of their mean candidate sensitivity) per
    fp32 model's BOPs to the objective; the ILP's choice must minimise exactly that."""
    gm, ctx = _analysed(block, x86)
    Pipeline.from_spec("ilp{size=0.5x}")(gm, ctx)
    free = dict(ASSIGNMENT.get(gm).achieved)["bops"]
    Pipeline.from_spec("ilp{size=0.5x,tradeoff=bops:10}")(gm, ctx)
    candidates = [BitAssignment(w, 8) for w in range(2, 9)]
    sens = {layer.name: SENSITIVITY.get(layer.node) for layer in find_layers(gm)}
    scale = sum(np.mean([sens[n].of(c) for c in candidates]) for n in sens)
    fp32_bops = 1024 * sum(MACS.values())

    def objective(choice):
        return sum(sens[n].of(b) for n, b in choice.items()) + 10 * scale * hand_totals(choice)["bops"] / fp32_bops

    best, _ = brute_force(gm, candidates, lambda c: hand_totals(c)["size"] <= 0.5 * FP32_SIZE, objective)
    assert objective(_chosen(gm)) == pytest.approx(best, rel=1e-9)
    assert dict(ASSIGNMENT.get(gm).achieved)["bops"] < free


@pytest.mark.parametrize("quantity", ["size", "bops"])
def test_pareto_front_is_the_brute_force_frontier(block, x86, quantity: str) -> None:
    eight = dataclasses.replace(x86, native_weight_bits={"conv": (8,), "linear": (8,), "matmul": (8,)}, act_bits=(8,))
    gm, ctx = _analysed(block, eight)  # x86-host's 8-bit activations: every choice is a weight width
    Pipeline.from_spec("pareto{points=20}")(gm, ctx)
    front = PARETO.get(gm).front(quantity)
    sens = {layer.name: SENSITIVITY.get(layer.node) for layer in find_layers(gm)}
    everything = []
    for combo in itertools.product(range(2, 9), repeat=4):
        choice = {n: BitAssignment(w, 8) for n, w in zip(sens, combo)}
        everything.append((hand_totals(choice)[quantity], sum(sens[n].of(b) for n, b in choice.items())))
    least_at = lambda x: min(s for q, s in everything if q <= x * (1 + 1e-9))  # noqa: E731
    assert len(front) >= 3
    assert front[0].achieved == pytest.approx(min(q for q, _ in everything))
    assert front[-1].sensitivity == pytest.approx(min(s for _, s in everything), rel=1e-9)  # all 8-bit
    for point in front:
        assert point.sensitivity == pytest.approx(least_at(point.achieved), rel=1e-9)  # nothing beats it at its cost
    xs, ys = [p.achieved for p in front], [p.sensitivity for p in front]
    assert xs == sorted(xs) and all(a > b for a, b in zip(ys, ys[1:]))


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
    budget = parse_budget(text).resolve({"size": 1000, "bops": 1024}, {"size": 250, "bops": 64})
    assert budget.quantity == quantity and budget.limit == pytest.approx(limit) and budget.text == text


@pytest.mark.parametrize(("text", "message"), [
    ("speed=2x", "KEY one of size, bops, latency, act_memory"),
    ("size=lots", "must be a number"),
    ("size=3furlongs", "unit 'furlongs' unknown for size"),
])
def test_bad_budgets(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_budget(text)
    with pytest.raises(ConfigError, match=message):
        budget_options(["bops=1G", text])


def test_budget_options_refuse_a_repeat_and_a_missing_reference() -> None:
    assert budget_options(["size=0.3x", "act-memory=64KiB"]) == {"size": "0.3x", "act_memory": "64KiB"}
    with pytest.raises(ConfigError, match="budget size is given twice"):
        budget_options(["size=0.3x", "size=1MB"])
    with pytest.raises(ConfigError, match="no fp32 reference for latency"):
        parse_budget("latency=0.5x").resolve({"size": 1.0}, {"size": 1.0})


def test_width_range_errors(block, x86) -> None:
    gm, ctx = _analysed(block, x86)
    with pytest.raises(ConfigError, match="leave target 'x86-host' no precision"):
        Pipeline.from_spec("ilp{size=0.3x,a_bits=4}")(gm, ctx)
    with pytest.raises(ConfigError, match="w_range must be LO-HI"):
        Pipeline.from_spec("ilp{size=0.3x,w_range=8-4}")


LATENCY = {"c1": 4e-5, "c2": 1e-5, "fc": 2e-6, "fc2": 2e-6}
FIXED_SECONDS = 1e-5


def _table(path, target: str) -> str:
    """A hand-made latency table for the block: 16-bit layers cost twice their 8-bit time."""
    table = LatencyTable(target, "test", "0", "2026-11-21", 0, "block",
                         {name: {"fp32": 3 * s, "w8a8": s, "w16a16": 2 * s} for name, s in LATENCY.items()},
                         fixed_seconds=FIXED_SECONDS)
    table.save(path)
    return str(path)


def test_latency_budget_reads_the_table(block, sim, tmp_path) -> None:
    """Under 0.07 ms, from 0.064 ms at W8A8 everywhere: only the fc/fc2 group (+4 us in all)
    can move to 16 bits, and it does, 16 bits being less sensitive; c1 and c2 stay W8A8."""
    gm, ctx = _analysed(block, sim)
    path = _table(tmp_path / "t.json", "sim")
    Pipeline.from_spec(f"ilp{{latency=0.07ms,w_range=8-16,table={path}}}")(gm, ctx)
    chosen = _chosen(gm)
    assert chosen == {"c1": BitAssignment(8, 8), "c2": BitAssignment(8, 8), "fc": BitAssignment(16, 16), "fc2": BitAssignment(16, 16)}
    hand = FIXED_SECONDS + sum(s * (2 if chosen[n].a_bits == 16 else 1) for n, s in LATENCY.items())
    assert dict(ASSIGNMENT.get(gm).achieved)["latency"] == pytest.approx(hand)
    Pipeline.from_spec(f"ilp{{latency=1.0int8,table={path}}}")(gm, ctx)
    assert all(b.a_bits == 8 for b in _chosen(gm).values())  # only int8 fits


def test_latency_budget_errors(block, x86, tmp_path) -> None:
    gm, ctx = _analysed(block, x86)
    path = _table(tmp_path / "t.json", "x86-host")
    with pytest.raises(ConfigError, match="latency=0.01ms asks latency <= 0.010 ms, the smallest achievable is 0.064 ms"):
        Pipeline.from_spec(f"ilp{{latency=0.01ms,table={path}}}")(gm, ctx)
    with pytest.raises(ConfigError, match="a latency budget needs a latency table"):
        Pipeline.from_spec("ilp{latency=1ms}")
    foreign = _table(tmp_path / "arm.json", target="arm-a76")
    with pytest.raises(CorruptFileError, match=f"latency table {foreign} was measured for target 'arm-a76'"):
        Pipeline.from_spec(f"ilp{{latency=1ms,table={foreign}}}")(gm, ctx)


def test_pareto_sweeps_latency_with_a_table(block, sim, tmp_path) -> None:
    """From everything at 8 bits (0.064 ms) to everything at W16A16, the least sensitive
    (1e-5 + 2 x 0.054 ms = 0.118 ms)."""
    gm, ctx = _analysed(block, sim)
    Pipeline.from_spec(f"pareto{{points=10,table={_table(tmp_path / 't.json', 'sim')}}}")(gm, ctx)
    front = PARETO.get(gm).front("latency")
    assert front[0].achieved == pytest.approx(6.4e-5) and front[-1].achieved == pytest.approx(1.18e-4)
    assert {(w, a) for _, w, a in front[-1].assignment} == {(16, 16)}


def test_one_table_load_serves_every_pass(block, sim, tmp_path, monkeypatch) -> None:
    gm, ctx = _analysed(block, sim)
    path = _table(tmp_path / "t.json", "sim")
    loads = []
    original = LatencyTable.load.__func__
    monkeypatch.setattr(LatencyTable, "load", classmethod(lambda cls, *a: loads.append(a) or original(cls, *a)))
    Pipeline.from_spec(f"pareto{{points=4,table={path}}},ilp{{latency=0.07ms,table={path}}},pareto{{table={path}}}")(gm, ctx)
    assert len(loads) == 1
    _table(tmp_path / "t.json", "sim")  # rewritten: a new version of the file is read again
    os.utime(path, ns=(1, 1))
    Pipeline.from_spec(f"ilp{{latency=0.07ms,table={path}}}")(gm, ctx)
    assert len(loads) == 2


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


SIM_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 16)


def test_a_size_budget_alone_keeps_activations_at_the_fastest_native_width(block, sim) -> None:
    """sim offers activations 2-8 and 16; a size budget prices no activation width, so left free
    the ILP buys 16-bit ones (less sensitive, slower than W8A8). Alone, it keeps every layer at
    8 bits and is the brute-force optimum over weights at A8."""
    gm, ctx = _analysed(block, sim)
    Pipeline.from_spec("ilp{size=0.3x,a_bits=2:3:4:5:6:7:8:16}")(gm, ctx)
    assert any(b.a_bits == 16 for b in _chosen(gm).values())  # what the default must prevent
    Pipeline.from_spec("ilp{size=0.3x}")(gm, ctx)
    assert {b.a_bits for b in _chosen(gm).values()} == {8}
    best, _ = brute_force(gm, [BitAssignment(w, 8) for w in SIM_WEIGHTS], lambda c: hand_totals(c)["size"] <= 0.3 * FP32_SIZE)
    assert ASSIGNMENT.get(gm).sensitivity == pytest.approx(best, rel=1e-9)
    Pipeline.from_spec("ilp{size=0.3x,tradeoff=act_memory:0.001}")(gm, ctx)  # a tradeoff on activations frees them
    assert any(b.a_bits != 8 for b in _chosen(gm).values())
    Pipeline.from_spec("pareto{points=6,quantities=size}")(gm, ctx)
    assert {a for p in PARETO.get(gm).front("size") for _, _, a in p.assignment} == {8}


def test_default_activation_width_comes_from_the_target_or_its_table(block, sim, tmp_path) -> None:
    from lcpaq.passes.cost_model import default_act_bits

    def target(acts: tuple[int, ...]) -> Target:
        return Target("t", "", {}, {"conv": (4, 8), "linear": (4, 8), "matmul": (4, 8)}, (), acts)

    assert default_act_bits(sim) == 8  # 8 where offered (uniform INT8's width) ...
    assert default_act_bits(target((4, 16))) == 4 and default_act_bits(target((16,))) == 16  # ... else the narrowest
    layers = find_layers(_analysed(block, sim)[0])
    for w4a4, expected in ((0.5, 4), (1.5, 8)):  # A4 kernels twice as fast, then half as fast, as A8 ones
        table = LatencyTable("t", "test", "0", "2026-11-21", 0, "block",
                             {n: {"fp32": 3 * s, "w8a8": s, "w4a4": w4a4 * s} for n, s in LATENCY.items()})
        assert default_act_bits(target((4, 8)), layers, table) == expected
