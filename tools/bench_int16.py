"""16-bit integer layers on x86 (int16 pairs on ``vpdpwssd``, exact int64 sums) against int8 and
fp32, layer by layer of built-in models: the latency tables ``lcpaq profile`` makes, summarised.

Every layer of each model is timed at batch 1 by the x86 layer timer (the kernels a build runs,
hand schedules, weights flushed from the caches before each call), at fp32, W8A8, W8A16, W16A8
and W16A16; layers with no 16-bit kernel (depthwise and grouped convs) carry their fp32 time at
16 bits, as the table does. The kernels' bit-exactness is the test suite's
(``tests/backends/x86/test_int16.py``, ``tests/backends/common/test_build.py``).

    TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_int16 --out docs
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from lcpaq.backends.common.profile import profile_model
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.host import default_target_name
from lcpaq.ir.fileio import atomic_write_json
from lcpaq.tools.bench_common import write_results
from lcpaq.tools.bench_e2e import machine_info
from lcpaq.tools.models.zoo import load_model
from lcpaq.tools.profile import prepared_graph

KEYS = ("fp32", "w8a8", "w8a16", "w16a8", "w16a16")


def bench_model(name: str, repeats: int) -> dict[str, Any]:
    """The model's latency table (no whole-model fit: layers only) and its notes."""
    target = load_target(default_target_name())
    gm, _ = prepared_graph(load_model(name), target)
    table = profile_model(gm, target, model_name=name, repeats=repeats, progress=True)
    return {"layers": table.entries, "notes": list(table.notes), "device": table.device}


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _model_section(name: str, res: dict[str, Any]) -> list[str]:
    rows = res["layers"]
    timed = {n: r for n, r in rows.items() if all(k in r for k in KEYS)}  # an embedding has weight-only keys
    wide = {n: r for n, r in timed.items() if r["w16a16"] != r["fp32"]}
    totals = {k: sum(r[k] for r in timed.values()) * 1e3 for k in KEYS}
    lines = [f"## {name}: {len(rows)} layers, {len(wide)} on 16-bit kernels", "",
             f"Sum over the {len(timed)} layers timed at every precision (ms at batch 1; a layer without a 16-bit kernel "
             "counts its fp32 time there):", "",
             "| " + " | ".join(KEYS) + " |", "|" + "---:|" * len(KEYS), "| " + " | ".join(f"{totals[k]:.3f}" for k in KEYS) + " |", "",
             "Geometric mean over the layers with 16-bit kernels of each time relative to W8A8 and to fp32:", "",
             "| precision | / W8A8 | / fp32 |", "|---|---:|---:|"]
    for k in KEYS[2:]:
        lines.append(f"| {k} | {_geomean([r[k] / r['w8a8'] for r in wide.values()]):.2f} | "
                     f"{_geomean([r[k] / r['fp32'] for r in wide.values()]):.2f} |")
    lines += ["", "Per layer (µs):", "", "| layer | " + " | ".join(KEYS) + " |", "|---|" + "---:|" * len(KEYS)]
    for n, r in rows.items():
        lines.append(f"| {n} | " + " | ".join(f"{r[k] * 1e6:.1f}" if k in r else "-" for k in KEYS) + " |")
    return [*lines, ""]


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = ["# 16-bit integer layers on x86 (vpdpwssd)", "", "Produced by one run of:", "", "```sh", results["command"], "```", "",
             f"on {m['cpu']}, {m['logical_cpus']} logical CPUs (LLVM CPU `{m['llvm_mcpu']}`), TVM {m['tvm']}, {m['date']}.", "",
             "What the kernels do: int16 activation codes (or uint8 for W16A8) times int16 weights, pairs multiplied "
             "exactly by `vpdpwssd` into int32 sums over chunks short enough never to overflow, each chunk widened to "
             "int64; with both sides 16-bit the weights are split into a high and a low byte (two passes). The "
             "requantization multiplier of each channel has as many bits as keep its largest sum times it below 2^62. "
             "Ideal cost: twice W8A8 for W8A16 and W16A8 (half the multiplies per instruction), four times for W16A16.", ""]
    for name, res in results["models"].items():
        lines += _model_section(name, res)
    notes = next(iter(results["models"].values()))["notes"] if results["models"] else []
    lines += ["How the tables were timed:", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,minilm", help="built-in models, comma-separated")
    parser.add_argument("--repeats", type=int, default=10, help="timing repeats per kernel")
    parser.add_argument("--out", type=Path, default=None, help="write int16_kernels.md / .json into this folder")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    command = "TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_int16 " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"command": command.strip(), "machine": machine_info(), "models": {}}
    for name in [m for m in args.models.split(",") if m]:
        results["models"][name] = bench_model(name, args.repeats)
    if args.out is not None:  # the measurements first: a report that fails to render loses nothing
        atomic_write_json(args.out / "int16_kernels.json", results)
    text = report(results)
    if args.out is not None:
        write_results(args.out, "int16_kernels", results, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
