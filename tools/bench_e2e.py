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
from typing import Any

import numpy as np
import torch

THREADS = 2


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def lcpaq_row(bundle: Any, gm: Any, trials: int, ref: np.ndarray, table: Any = None) -> dict[str, Any]:
    """Build ``gm``, check it, and time it: a row of the results table (or the reason it failed)."""
    from lcpaq.backends.build import build_model
    from lcpaq.backends.measure import measure_latency
    from lcpaq.hw_targets import load_target
    from lcpaq.ir.errors import LcpaqError
    from lcpaq.tools.deploy import assignment_of

    x = [t[:1] for t in bundle.example_inputs]
    start = time.perf_counter()
    try:
        built = build_model(gm, x, load_target("x86-host"), trials=trials)
    except LcpaqError as exc:
        return {"built": False, "reason": str(exc)}
    build_s = time.perf_counter() - start
    y = np.asarray(built.run(*x))
    with torch.no_grad():
        ref_int = built.integer_graph(*x)
    ref_int = (ref_int[0] if isinstance(ref_int, (tuple, list)) else ref_int).numpy()
    lat = measure_latency(built, x, repeats=30, number=5)
    row = {
        "built": True, "median_ms": lat.median * 1e3, "p10_ms": lat.p10 * 1e3, "p90_ms": lat.p90 * 1e3,
        "bit_exact": bool(np.array_equal(y, ref_int)), "max_diff_vs_integer_ref": float(np.abs(y - ref_int).max()), "cosine": _cosine(y, ref), "max_abs_err": float(np.abs(y - ref).max()),
        "kernels": built.kernels, "build_s": build_s, "trials": trials,
        "tuned_kept": sum(v == "tuned" for v in (built.schedule_choices or {}).values()),
        "tuned_kernels": len(built.schedule_choices or {}),
    }
    if table is not None:
        row["predicted_ms"] = table.total(assignment_of(gm)) * 1e3
    return row


def bench_model(name: str, trials: int, repeat: int, tmp: Path) -> dict[str, Any]:
    from lcpaq.tools.api import quantize
    from lcpaq.tools.models.zoo import load_model
    from lcpaq.tools.ort_baselines import ort_baselines

    bundle = load_model(name)
    x = tuple(t[:1] for t in bundle.example_inputs)
    calib = [b if isinstance(b, (tuple, list)) else (b,) for b in bundle.calib_batches]
    from lcpaq.tools.ort_baselines import TRANSFORMER_OP_TYPES

    # ORT's default int8 set on a transformer also quantizes Add/Softmax around the -inf mask (cosine ~0.3):
    # quantize its MatMul/Gemm only, as lcpaq does (linear layers)
    op_types = TRANSFORMER_OP_TYPES if name == "minilm" else None
    rows: dict[str, Any] = ort_baselines(bundle.model, x, calib, tmp, threads=THREADS, repeat=repeat, name=name, op_types=op_types)
    with torch.no_grad():
        out = bundle.model(*x)
    ref = (out[0] if isinstance(out, (tuple, list)) else out).numpy()
    result = quantize(bundle, bits="w8a8", build=False)
    rows["lcpaq-w8a8"] = lcpaq_row(bundle, result.results[0].graph_module, 0, ref)
    if trials > 0:
        rows[f"lcpaq-w8a8 tuned ({trials} trials/kernel)"] = lcpaq_row(bundle, result.results[0].graph_module, trials, ref)
    return rows


def bench_mixed(name: str, budget: str, trials: int, tmp: Path) -> dict[str, Any]:
    """Profile (hand schedules), ILP under a latency budget, build: measured vs predicted."""
    from lcpaq.tools.api import quantize
    from lcpaq.tools.models.zoo import load_model
    from lcpaq.tools.profile import profile

    bundle = load_model(name)
    table = profile(bundle, "x86-host", trials=0)
    path = tmp / f"{name}.latency.json"
    table.save(path)
    with torch.no_grad():
        ref = bundle.model(*(t[:1] for t in bundle.example_inputs)).numpy()
    rows = {}
    for label, kwargs in (("w8a8", {"bits": "w8a8"}), (f"ILP latency={budget}", {"budget": [f"latency={budget}"], "probes": 16})):
        result = quantize(bundle, latency_table=path, build=False, **kwargs)
        gm = result.results[0].graph_module
        row = lcpaq_row(bundle, gm, trials, ref, table)
        from lcpaq.tools.deploy import assignment_of

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
        "(TVM_NUM_THREADS, torch.set_num_threads, ORT intra_op_num_threads). Latency: median of 30 runs.", "",
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
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--mixed", default="resnet18", help="model for the mixed-precision check ('' to skip)")
    parser.add_argument("--budget", default="0.7x", help="latency budget of the mixed-precision check")
    parser.add_argument("--out", type=Path, help="write e2e_latency.md and .json here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    torch.set_num_threads(THREADS)
    from lcpaq.tools.bench_common import write_results

    results: dict[str, Any] = {"models": {}, "trials": args.trials}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:
            trials = args.trials if name in args.tune.split(",") else 0
            results["models"][name] = bench_model(name, trials, args.repeat, Path(tmp))
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
