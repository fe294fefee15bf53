"""Benchmark of the adaptive mixed-precision module (issue 3).

1. Quality against size, at equal size, of five ways to assign per-layer weight widths
   (activations fixed at 8 bits so only the assignment differs): uniform, random (8 seeded
   samples at the budget), trace-order greedy (layers with the smallest average Hessian trace
   dropped to their narrowest width first), marginal greedy on HAWQ-V2's criterion (the
   narrowing step adding the least trace x quantization error per byte saved, repeated) and the
   ILP (HAWQ-V3's formulation: the same criterion, solved exactly).
2. Solver cost: one ILP and a 50-point Pareto sweep for ResNet-50.
3. Hessian cost, per layer and in total, for ResNet-18 (224x224) and MiniLM.

Run: ``make bench-assignment`` (``python -m lcpaq.tools.bench_assignment --out docs``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import lcpaq.passes  # noqa: F401  (registers the passes)
from lcpaq.hw_targets.target import Target
from lcpaq.ir.capture import capture
from lcpaq.tools.bench_common import algorithm_target, write_results
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import COST, SENSITIVITY, BitAssignment
from lcpaq.passes import PassContext, Pipeline, calibration_phase, prepare_phase
from lcpaq.passes.fake_quant import FakeQuant
from lcpaq.passes.hessian import HessianSensitivity
from lcpaq.passes.budgets import SIZE
from lcpaq.passes.cost_model import reference_totals
from lcpaq.passes.ilp import problem_from_graph
from lcpaq.passes.quant_scheme import assign
from lcpaq.passes.ilp_problem import AssignmentProblem, Infeasible
from lcpaq.passes.pareto import sweep
from lcpaq.ir.metrics import output_metrics, reference_outputs
from lcpaq.tools.models.zoo import ModelBundle, load_model


def analysed(bundle: ModelBundle, target: Target, probes: int, cache: bool = True) -> tuple[Any, PassContext, float]:
    """Capture, cost, calibrate and annotate sensitivities; returns the Hessian's seconds."""
    from lcpaq.ir.fileio import cache_dir

    ctx = PassContext(target, bundle.example_inputs, bundle.calib_batches, calib_labels=bundle.calib_labels,
                      cache_dir=cache_dir() if cache else None)
    gm = Pipeline(prepare_phase(target) + calibration_phase(target))(capture(bundle.model, bundle.example_inputs), ctx).graph_module
    start = time.perf_counter()
    gm = Pipeline([HessianSensitivity(probes=probes, min_probes=probes)])(gm, ctx).graph_module
    return gm, ctx, time.perf_counter() - start


def evaluate(bundle: ModelBundle, gm: Any, ctx: PassContext, choice: tuple[BitAssignment, ...], reference: list) -> dict[str, float]:
    qgm = copy.deepcopy(gm)
    assign(qgm, {layer.name: bits for layer, bits in zip(find_layers(qgm), choice)})
    qgm = Pipeline([FakeQuant()])(qgm, ctx).graph_module
    metrics = output_metrics(reference, qgm, bundle.eval_batches)
    if bundle.evaluate is not None:
        with torch.no_grad():
            metrics.update(bundle.evaluate(qgm))
    return metrics


def uniform_choice(problem: AssignmentProblem, w_bits: int) -> list[int]:
    picks = []
    for cands in problem.candidates:
        exact = [i for i, c in enumerate(cands) if c.w_bits == w_bits]
        picks.append(exact[0] if exact else max(range(len(cands)), key=lambda i: cands[i].w_bits))
    return picks


def greedy_choice(problem: AssignmentProblem, gm: Any, budget: float) -> list[int] | None:
    """NNCF-style: walk the layers from the smallest average Hessian trace up, giving each its
    narrowest width, until the assignment fits; the last layer gets the widest width that fits."""
    layers = find_layers(gm)
    fits = lambda p: problem.evaluate(p)[SIZE] <= budget  # noqa: E731
    by_width = [sorted(range(len(c)), key=lambda j: c[j].w_bits) for c in problem.candidates]
    picks = [w[-1] for w in by_width]
    for i in sorted(range(len(layers)), key=lambda i: _avg_trace(layers[i])):
        if fits(picks):
            break
        picks[i] = next((j for j in reversed(by_width[i]) if fits(picks[:i] + [j] + picks[i + 1 :])), by_width[i][0])
    return picks if fits(picks) else None


def marginal_choice(problem: AssignmentProblem, budget: float) -> list[int] | None:
    """HAWQ-V2's criterion, greedily: from the widest assignment, repeatedly take the one-step
    narrowing (a layer, or a group of layers that share a weight width, to its next narrower
    width) that adds the least sensitivity (trace x quantization error: the ILP's own terms) per
    byte saved, until the assignment fits. The ILP (HAWQ-V3's formulation) solves the same
    objective exactly; this is what a careful greedy gets."""
    by_width = [sorted(range(len(c)), key=lambda j: c[j].w_bits) for c in problem.candidates]
    grouped = {l for g in problem.weight_groups for l in g}
    units = [tuple(g) for g in problem.weight_groups] + [(l,) for l in range(len(by_width)) if l not in grouped]
    level = [len(w) - 1 for w in by_width]
    picks = lambda lv: [by_width[l][v] for l, v in enumerate(lv)]  # noqa: E731
    size = lambda lv: problem.evaluate(picks(lv))[SIZE]  # noqa: E731
    while size(level) > budget:
        best, best_rate = None, float("inf")
        for unit in units:
            if any(level[l] == 0 for l in unit):
                continue
            lower = list(level)
            for l in unit:
                lower[l] -= 1
            saved = size(level) - size(lower)
            added = sum(problem.sensitivity[l][by_width[l][lower[l]]] - problem.sensitivity[l][by_width[l][level[l]]] for l in unit)
            rate = added / saved if saved > 0 else float("inf")
            if rate < best_rate:
                best, best_rate = lower, rate
        if best is None:
            return None
        level = best
    return picks(level)


def _avg_trace(layer: Any) -> float:
    """Average Hessian trace per weight (per activation element for a weightless matmul)."""
    sens, cost = SENSITIVITY.get(layer.node), COST.get(layer.node)
    if layer.weight is None:
        return sens.act_trace / max(cost.act_elems, 1)
    return sens.weight_trace / max(cost.params, 1)


def random_choices(problem: AssignmentProblem, budget: float, n: int, seed: int) -> list[list[int]]:
    """Random walks from the widest assignment: lower a random layer one step until it fits."""
    rng = random.Random(seed)
    out = []
    by_width = [sorted(range(len(c)), key=lambda j: problem.candidates[l][j].w_bits) for l, c in enumerate(problem.candidates)]
    for _ in range(n):
        level = [len(w) - 1 for w in by_width]
        while problem.evaluate([by_width[l][level[l]] for l in range(len(level))])[SIZE] > budget:
            movable = [l for l, v in enumerate(level) if v > 0]
            if not movable:
                break
            level[rng.choice(movable)] -= 1
        picks = [by_width[l][level[l]] for l in range(len(level))]
        if problem.evaluate(picks)[SIZE] <= budget:
            out.append(picks)
    return out


def quality_benchmark(name: str, probes: int, widths: tuple[int, ...], metric: str) -> dict[str, Any]:
    bundle = load_model(name)
    target = algorithm_target(act_bits=(8,))
    gm, ctx, hessian_s = analysed(bundle, target, probes, cache=False)  # time the real computation
    problem = problem_from_graph(gm, target)
    reference = reference_outputs(bundle.model, bundle.eval_batches)
    sens_of = lambda picks: sum(problem.sensitivity[l][c] for l, c in enumerate(picks))  # noqa: E731
    rows = []
    for w in widths:
        uni = uniform_choice(problem, w)
        budget = problem.evaluate(uni)[SIZE]
        entry: dict[str, Any] = {"budget_bytes": budget, "uniform_bits": w}
        methods = {"uniform": uni, "greedy": greedy_choice(problem, gm, budget), "marginal": marginal_choice(problem, budget)}
        try:
            methods["ilp"] = problem.index_of(list(problem.solve({SIZE: budget * (1 + 1e-9)}).choice))
        except Infeasible:
            methods["ilp"] = None
        for method, picks in methods.items():
            if picks is None:
                entry[method] = None
                continue
            choice = tuple(problem.candidates[l][c] for l, c in enumerate(picks))
            m = evaluate(bundle, gm, ctx, choice, reference)
            entry[method] = {"size": problem.evaluate(picks)[SIZE], "sensitivity": sens_of(picks), metric: m[metric],
                             "sqnr_db": m["sqnr_db"], "bits": sorted({c.w_bits for c in choice})}
        samples = []
        for picks in random_choices(problem, budget, 8, seed=w):
            choice = tuple(problem.candidates[l][c] for l, c in enumerate(picks))
            samples.append({"size": problem.evaluate(picks)[SIZE], "sensitivity": sens_of(picks),
                            metric: evaluate(bundle, gm, ctx, choice, reference)[metric]})
        entry["random"] = samples
        rows.append(entry)
        print(f"{name} W{w}: " + ", ".join(f"{k} {v[metric]:.4f}" for k, v in entry.items() if isinstance(v, dict)), flush=True)
    return {"model": name, "metric": metric, "probes": probes, "hessian_seconds": hessian_s,
            "layers": len(problem.names), "rows": rows}


def solver_benchmark() -> dict[str, Any]:
    bundle = load_model("resnet50")
    bundle = dataclasses.replace(bundle, calib_batches=bundle.calib_batches[:1])
    full = algorithm_target()
    four = dataclasses.replace(full, name="4 candidates", native_weight_bits={k: (8,) for k in full.native_weight_bits},
                               storage_weight_bits=(4,), act_bits=(8, 16))
    gm, _, _ = analysed(bundle, full, probes=2, cache=False)
    out = {}
    for target in (four, full):
        problem = problem_from_graph(gm, target)
        fp32 = reference_totals(gm)[0][SIZE]
        times = []
        for fraction in (0.14, 0.17, 0.2, 0.23, 0.26):  # W4 everywhere is 12.5 % of fp32
            start = time.perf_counter()
            problem.solve({SIZE: fraction * fp32})
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
        front = sweep(problem, SIZE, 50)
        sweep_s = time.perf_counter() - start
        out[target.name] = {"layers": len(problem.names), "candidates_per_layer": len(problem.candidates[0]),
                            "variables": problem.n, "ilp_seconds_max": max(times), "ilp_seconds_median": sorted(times)[2],
                            "sweep50_seconds": sweep_s, "front_points": len(front)}
        print(f"solver {target.name}: {out[target.name]}", flush=True)
    return out


def hessian_benchmark(probes: int) -> dict[str, Any]:
    out = {}
    for name in ("resnet18", "minilm"):
        bundle = load_model(name)
        if name == "resnet18":
            bundle = dataclasses.replace(bundle, calib_batches=bundle.calib_batches[:1])
        gm, _, seconds = analysed(bundle, algorithm_target(), probes, cache=False)
        layers = len(find_layers(gm))
        batch = bundle.calib_batches[0][0].shape
        out[name] = {"layers": layers, "probes": probes, "batches": min(2, len(bundle.calib_batches)), "batch_shape": list(batch),
                     "seconds": seconds, "seconds_per_probe": seconds / probes, "seconds_per_layer": seconds / layers}
        print(f"hessian {name}: {out[name]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="folder for the markdown, JSON and plots (default docs)")
    parser.add_argument("--quick", action="store_true", help="fewer probes and widths (a smoke run)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's pytree deprecation, on deepcopy
    out = Path(args.out)
    torch.manual_seed(0)
    probes = 8 if args.quick else 64
    results = {
        "machine": {"torch": torch.__version__, "threads": torch.get_num_threads()},
        "quality": [quality_benchmark("resnet-digits", probes, (2, 3, 4, 5, 6) if not args.quick else (3, 4), "accuracy"),
                    quality_benchmark("minilm", probes // 2, (3, 4, 5, 6, 8) if not args.quick else (4,), "cosine")],
        "solver": solver_benchmark(),
        "hessian": hessian_benchmark(4 if args.quick else 16),
    }
    from lcpaq.tools.bench_report import render

    write_results(out, "assignment_benchmark", results, render(results, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
