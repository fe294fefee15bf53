"""End-to-end latency of lcpaq builds against PyTorch eager and ONNX Runtime (fp32, int8 QDQ).

Per model (batch 1, 2 threads everywhere), in one run: eager fp32, ORT fp32 and ORT int8 QDQ
(:mod:`lcpaq.tools.ort_baselines`), then the lcpaq W8A8 build (TVM, VNNI kernels; tuned with
``--trials`` per conv/dense kernel, records cached), checked bit-exactly against its integer
reference. For ResNet-18 also a mixed-precision build chosen by the ILP under a latency budget
from a latency table profiled in the same run (hand schedules, as the build with ``--mixed-trials 0``),
with its measured latency beside the table's prediction.

    TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_e2e --trials 32 --out docs
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lcpaq.backends.common.build import build_model
from lcpaq.backends.common.measure import measure_latency
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.host import default_target_name
from lcpaq.ir.errors import LcpaqError
from lcpaq.ir.metrics import first_output
from lcpaq.passes.cost_model import assignment_of
from lcpaq.tools.api import quantize
from lcpaq.tools.bench_common import median_ms, write_results
from lcpaq.tools.models.zoo import load_model
from lcpaq.tools.ort_baselines import BASELINES, TRANSFORMER_OP_TYPES, compare, export_onnx, ort_session, quantize_onnx_int8
from lcpaq.tools.profile import profile

THREADS = 2


def _first(out: Any) -> np.ndarray:
    return first_output(out).detach().numpy()


def lcpaq_build(bundle: Any, gm: Any, trials: int, ref: np.ndarray, table: Any = None) -> tuple[Any, dict[str, Any]]:
    """Build ``gm`` and check it: (the built model or None, its results row without timing)."""
    x = [t[:1] for t in bundle.example_inputs]
    start = time.perf_counter()
    try:
        built = build_model(gm, x, load_target(default_target_name()), trials=trials)
    except LcpaqError as exc:
        return None, {"built": False, "reason": str(exc)}
    build_s = time.perf_counter() - start
    y = np.asarray(built.run(*x))
    with torch.no_grad():
        ref_int = _first(built.integer_graph(*x))
    choices = built.schedule_choices or {}
    row = {
        "built": True, "bit_exact": bool(np.array_equal(y, ref_int)), "max_diff_vs_integer_ref": float(np.abs(y - ref_int).max()),
        **compare(y, ref), "kernels": built.kernels, "build_s": build_s,
        "trials": trials, "tuned_kept": sum(v == "tuned" for v in choices.values()), "tuned_kernels": len(choices),
    }
    if table is not None:
        row["predicted_ms"] = table.total(assignment_of(gm)) * 1e3
    return built, row


def lcpaq_row(bundle: Any, gm: Any, trials: int, ref: np.ndarray, table: Any = None) -> dict[str, Any]:
    """Build, check and time (TVM's time evaluator) one configuration."""
    built, row = lcpaq_build(bundle, gm, trials, ref, table)
    if built is not None:
        lat = measure_latency(built, [t[:1] for t in bundle.example_inputs], repeats=30, number=5)
        row.update(median_ms=lat.median * 1e3, p10_ms=lat.p10 * 1e3, p90_ms=lat.p90 * 1e3)
    return row


def bench_model(name: str, trials: int, repeat: int, rounds: int, tmp: Path) -> dict[str, Any]:
    """Every backend built first, then timed in ``rounds`` interleaved rounds (each a median of
    ``repeat`` Python-level calls after 5 warm-up calls); the result is the median over rounds, so
    a slow spell of the shared machine hits every backend alike."""

    bundle = load_model(name)
    model = bundle.model.eval()
    x = tuple(t[:1] for t in bundle.example_inputs)
    calib = [b if isinstance(b, (tuple, list)) else (b,) for b in bundle.calib_batches]
    with torch.no_grad():
        ref = _first(model(*x))
    rows: dict[str, dict[str, Any]] = {BASELINES[0]: compare(ref, ref)}
    runners: dict[str, Callable[[], Any]] = {BASELINES[0]: lambda: model(*x)}
    # ORT's default int8 set on a transformer also quantizes Add/Softmax around the -inf mask (cosine ~0.3):
    # quantize its MatMul/Gemm only, as lcpaq does (linear layers and matmuls)
    op_types = TRANSFORMER_OP_TYPES if name == "minilm" else None
    fp32_path = export_onnx(model, x, tmp / f"{name}.fp32.onnx", name=name)
    int8_path = quantize_onnx_int8(fp32_path, calib, tmp / f"{name}.int8.onnx", op_types=op_types)
    for key, path in zip(BASELINES[1:], (fp32_path, int8_path)):
        session = ort_session(path, THREADS)
        feed = session.feed(x)
        rows[key] = compare(session.session.run(None, feed)[0], ref)
        runners[key] = (lambda s, f: lambda: s.run(None, f))(session.session, feed)
    gm = quantize(bundle, bits="w8a8", build=False).results[0].graph_module
    for key, t in (("lcpaq-w8a8", 0), (f"lcpaq-w8a8 tuned ({trials} trials/kernel)", trials)):
        if key != "lcpaq-w8a8" and trials <= 0:
            continue
        built, rows[key] = lcpaq_build(bundle, gm, t, ref)
        if built is not None:
            args = built.inputs(*x)
            runners[key] = (lambda vm, a: lambda: vm["main"](*a))(built.vm, args)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    with torch.no_grad():
        for _ in range(rounds):
            for key, fn in runners.items():
                samples[key].append(median_ms(fn, 5, repeat))
    for key, values in samples.items():
        rows[key].update(median_ms=float(np.median(values)), rounds_ms=[round(v, 3) for v in values])
    return rows


def bench_mixed(name: str, budget: str, trials: int, tmp: Path) -> dict[str, Any]:
    """Profile (hand schedules), ILP under a latency budget, build: measured vs predicted."""
    bundle = load_model(name)
    table = profile(bundle, trials=0)
    path = tmp / f"{name}.latency.json"
    table.save(path)
    with torch.no_grad():
        ref = bundle.model(*(t[:1] for t in bundle.example_inputs)).numpy()
    rows = {}
    for label, kwargs in (("w8a8", {"bits": "w8a8"}), (f"ILP latency={budget}", {"budget": [f"latency={budget}"], "probes": 16})):
        result = quantize(bundle, latency_table=path, build=False, **kwargs)
        gm = result.results[0].graph_module
        row = lcpaq_row(bundle, gm, trials, ref, table)

        counts: dict[str, int] = {}
        for bits in assignment_of(gm).values():
            counts[str(bits)] = counts.get(str(bits), 0) + 1
        row["assignment"] = counts
        rows[label] = row
    return rows


def report(results: dict[str, Any], command: str) -> str:
    lines = [
        "# End-to-end latency: lcpaq builds against PyTorch and ONNX Runtime", "",
        "Produced by one run of:", "", "```sh", command, "```", "",
        f"on this project's 2-core x86-64 machine (AVX-512 VNNI), batch 1, {THREADS} threads for every backend "
        "(TVM_NUM_THREADS, torch.set_num_threads, ORT intra_op_num_threads). Every backend is built first, then "
        "timed in interleaved rounds (each the median of 30 Python-level calls after 5 warm-up calls); the table "
        "gives the median round, `rounds_ms` in the JSON every round. The mixed-precision section times with TVM's "
        "time evaluator, as the latency table does.", "",
    ]
    for name, rows in results["models"].items():
        lines += [f"## {name}", "", "| backend | median ms | vs ORT fp32 | cosine vs eager | note |", "|---|---:|---:|---:|---|"]
        base = rows["ort-fp32"]["median_ms"]
        for key, r in rows.items():
            if not r.get("built", True):
                lines.append(f"| {key} | - | - | - | not built: {r['reason']} |")
                continue
            note = ""
            if key.startswith("lcpaq"):
                exact = "bit-exact" if r["bit_exact"] else f"max diff {r['max_diff_vs_integer_ref']:.1e} (float glue)"
                sched = (f"MetaSchedule {r['trials']} trials/kernel, tuned schedule faster for {r['tuned_kept']} of "
                         f"{r['tuned_kernels']} kernels (else hand)") if r["trials"] else "hand schedules"
                note = f"{exact} vs integer reference; {r['kernels']} kernels; {sched}; built in {r['build_s']:.0f} s"
            lines.append(f"| {key} | {r['median_ms']:.2f} | {base / r['median_ms']:.2f}x | {r['cosine']:.5f} | {note} |")
        lines.append("")
    mixed = results.get("mixed")
    if mixed:
        lines += [f"## Mixed precision on {results['mixed_model']}: measured against the latency table", "",
                  "| configuration | layers | predicted ms (table) | measured ms | measured / predicted | max diff vs integer reference |",
                  "|---|---|---:|---:|---:|---|"]
        for label, r in mixed.items():
            if not r.get("built", True):
                lines.append(f"| {label} | - | - | - | - | not built: {r['reason']} |")
                continue
            layers = ", ".join(f"{n} {k}" for k, n in sorted(r["assignment"].items()))
            lines.append(f"| {label} | {layers} | {r['predicted_ms']:.2f} | {r['median_ms']:.2f} | "
                         f"{r['median_ms'] / r['predicted_ms']:.2f} | {r['max_diff_vs_integer_ref']:.1e} |")
        lines += ["", "Float (fp32, and 16-bit: no integer kernel) layers are not bit-exact against the integer "
                  "reference's float ops, only equal to float rounding; all-integer configurations are bit-exact.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,minilm")
    parser.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per int8 kernel (0: hand schedules)")
    parser.add_argument("--tune", default="resnet18", help="models built with --trials; the others use hand schedules")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per backend per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the median round is reported")
    parser.add_argument("--mixed", default="resnet18", help="model for the mixed-precision check ('' to skip)")
    parser.add_argument("--budget", default="0.7x", help="latency budget of the mixed-precision check")
    parser.add_argument("--out", type=Path, help="write e2e_latency.md and .json here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    torch.set_num_threads(THREADS)

    results: dict[str, Any] = {"models": {}, "trials": args.trials}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:
            trials = args.trials if name in args.tune.split(",") else 0
            results["models"][name] = bench_model(name, trials, args.repeat, args.rounds, Path(tmp))
            print(name, {k: round(v.get("median_ms", float("nan")), 3) for k, v in results["models"][name].items()}, flush=True)
        if args.mixed:
            results["mixed_model"] = args.mixed
            results["mixed"] = bench_mixed(args.mixed, args.budget, 0, Path(tmp))
    command = "TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_e2e " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, command)
    print(text)
    if args.out:
        write_results(args.out, "e2e_latency", results, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
