"""End-to-end latency of lcpaq builds against PyTorch eager and ONNX Runtime (fp32, int8 QDQ),
at batch 1 and 8, with quality scored on held-out inputs; then the latency table's
predictions checked on mixed configurations that did not calibrate it.

Per model, in one run (``THREADS`` threads everywhere): eager fp32, ORT fp32, ORT int8 QDQ with
each recipe (:mod:`lcpaq.tools.ort_baselines`; for MiniLM ORT's default MatMul/Gemm set and the
best recipe, which keeps the FFN down-projections in fp32), and the lcpaq W8A8 build (VNNI
kernels; tuned with ``--trials`` per kernel for the ``--tune`` models) at each batch. Quality is
the cosine of each held-out row's output to eager fp32 (held-out: never in calibration; MiniLM:
quotations of Debian's ``fortunes`` package, images: seeded random images); lcpaq builds are
checked bit-exact against their integer reference on every held-out row. Results go to
``e2e_latency.md/.json`` under ``--out``, one section per host family (CPU vendor and LLVM CPU):
a run replaces its own family's section and keeps the others.

    TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_e2e --trials 32 --tune resnet18 --out docs
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import tvm

from lcpaq.backends.common.backend import backend_for
from lcpaq.backends.common.build import build_model
from lcpaq.backends.common.integer_glue import GLUE_OPS
from lcpaq.backends.common.integerize import integerize
from lcpaq.backends.common.measure import measure_latency
from lcpaq.backends.x86.tiles import target_tiles
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.host import default_target_name, host_cpu_name, host_features
from lcpaq.ir.errors import LcpaqError
from lcpaq.ir.layers import find_layers, precision_groups
from lcpaq.ir.meta import COST
from lcpaq.ir.metrics import first_output
from lcpaq.passes.cost_model import assignment_of
from lcpaq.passes.pipeline import Pipeline, calibration_phase, uniform_phase
from lcpaq.tools.bench_common import median_ms, write_results
from lcpaq.tools.bench_e2e_report import report
from lcpaq.tools.models import minilm
from lcpaq.tools.models.corpus import fortune_sentences
from lcpaq.tools.models.zoo import ModelBundle, load_model
from lcpaq.tools.ort_baselines import TRANSFORMER_EXCLUDE, TRANSFORMER_OP_TYPES, export_onnx, ort_session, quantize_onnx_int8, with_batch
from lcpaq.tools.profile import prepared_graph, profile
from lcpaq.tools.vnni_peak import measure_peak

THREADS = 2
#: Idle time before each backend's timed block: OpenMP (torch) and ORT worker threads keep
#: spinning for up to ~200 ms after their last call and would slow whichever backend came next.
PAUSE_S = 0.3
ISA = ("avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8")
Inputs = tuple[torch.Tensor, ...]


def machine_info() -> dict[str, Any]:
    """The CPU as the benchmark saw it: model, logical CPUs, LLVM's name for it, ISA features."""
    flags = host_features()
    target = load_target(default_target_name())
    tvm_target = backend_for(target).tvm_target(target)
    mcpu = str(tvm_target.attrs.get("mcpu", "?"))
    tiles = target_tiles(tvm_target).cpu if backend_for(target).name == "x86-vnni" else None
    cpu = host_cpu_name()
    vendor = "AMD" if "AMD" in cpu else "Intel" if "Intel" in cpu else cpu.split()[0]
    return {"cpu": cpu, "family": f"{vendor} {mcpu}", "logical_cpus": os.cpu_count(), "llvm_mcpu": mcpu,
            "features": [f for f in ISA if f in flags], "amx_exposed": "amx_int8" in flags, "tiles_row": tiles,
            "tvm": str(tvm.__version__), "torch": torch.__version__, "date": datetime.date.today().isoformat()}


def held_out(bundle: ModelBundle, rows: int) -> Inputs:
    """``rows`` inputs never used for calibration: for MiniLM, quotations from the fortunes
    corpus; otherwise Gaussian inputs shaped like the example, from a seed no calibration uses."""
    if bundle.name == "minilm":
        model, tokenizer = minilm.load()
        return tuple(minilm.encode(tokenizer, fortune_sentences(rows)))
    gen = torch.Generator().manual_seed(20261122)
    return tuple(torch.randn(rows, *x.shape[1:], generator=gen) for x in bundle.example_inputs)


def _rows(x: Inputs, start: int, n: int) -> Inputs:
    return tuple(t[start : start + n] for t in x)


def _cosines(y: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    a, b = y.reshape(len(y), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}


def _outputs(predict: Callable[[Inputs], np.ndarray], data: Inputs, batch: int) -> np.ndarray:
    n = len(data[0]) // batch * batch
    return np.concatenate([np.asarray(predict(_rows(data, i, batch))) for i in range(0, n, batch)])


def lcpaq_build(gm: Any, x: Inputs, trials: int, data: Inputs, glue: str = "integer") -> tuple[Any, dict[str, Any]]:
    """Build ``gm`` at ``x``'s batch (with ``glue``) and check it bit-exact against its integer
    reference on every held-out row: (the built model or None, its results row without timing)."""
    start = time.perf_counter()
    try:
        built = build_model(gm, list(x), load_target(default_target_name()), trials=trials, batch=None, glue=glue)
    except LcpaqError as exc:
        return None, {"built": False, "reason": str(exc)}
    build_s = time.perf_counter() - start
    batch = len(x[0])
    y = _outputs(lambda r: built.run(*r), data, batch)
    with torch.no_grad():
        ref = _outputs(lambda r: first_output(built.integer_graph(*r)).numpy(), data, batch)
    choices = built.schedule_choices or {}
    return built, {
        "built": True, "bit_exact": bool(np.array_equal(y, ref)), "max_diff_vs_integer_ref": float(np.abs(y - ref).max()),
        "kernels": built.kernels, "build_s": build_s, "trials": trials, "glue": glue,
        "integer_glue_ops": sum(n.target in GLUE_OPS for n in built.integer_graph.graph.nodes),
        "tuned_kept": sum(v == "tuned" for v in choices.values()), "tuned_kernels": len(choices), "_outputs": y,
    }


def ort_recipes(name: str) -> dict[str, dict[str, Any]]:
    """ORT int8 QDQ recipes compared: every op type ORT quantizes (CNNs); for a transformer its
    MatMul/Gemm only (the default set also quantizes Add/Softmax around the -inf mask) and the
    best recipe, which also keeps the FFN down-projections (outlier inputs) in fp32."""
    if name != "minilm":
        return {"ort-int8-qdq": {"recipe": "all op types, per-channel weights, MinMax"}}
    return {"ort-int8-qdq": {"recipe": "MatMul/Gemm, per-channel weights, MinMax", "op_types": TRANSFORMER_OP_TYPES},
            "ort-int8-qdq best": {"recipe": "MatMul/Gemm, FFN down-projections fp32 (TRANSFORMER_EXCLUDE)",
                                  "op_types": TRANSFORMER_OP_TYPES, "exclude": TRANSFORMER_EXCLUDE}}


def bench_model(name: str, batches: list[int], trials: int, repeat: int, rounds: int, rows: int, tmp: Path) -> dict[str, Any]:
    """Every backend at every batch, built first, then timed in ``rounds`` interleaved rounds
    (each a median of ``repeat`` calls after 5 warm-up calls); the median round is reported."""
    bundle = load_model(name)
    model = bundle.model.eval()
    data = held_out(bundle, rows)
    calib = [b if isinstance(b, (tuple, list)) else (b,) for b in bundle.calib_batches]
    with torch.no_grad():
        ref = _outputs(lambda r: first_output(model(*r)).numpy(), data, 1)
    predictors: dict[str, Callable[[Inputs], np.ndarray]] = {"torch-eager-fp32": lambda r: first_output(model(*r)).numpy()}
    rows_out: dict[str, dict[str, Any]] = {"torch-eager-fp32": {"recipe": "fp32"}, "ort-fp32": {"recipe": "fp32, all graph optimizations"}}
    fp32_path = export_onnx(model, _rows(data, 0, 1), tmp / f"{name}.fp32.onnx", name=name, dynamic_batch=True)
    paths = {"ort-fp32": fp32_path}
    for key, recipe in ort_recipes(name).items():
        paths[key] = quantize_onnx_int8(fp32_path, calib, tmp / f"{name}.{key.replace(' ', '_')}.onnx",
                                        op_types=recipe.get("op_types"), exclude=recipe.get("exclude"))
        rows_out[key] = {"recipe": recipe["recipe"]}
    gm = _configured(*_prepared(bundle), 8)
    lcpaq_keys = ["lcpaq-w8a8"] + ([f"lcpaq-w8a8 tuned ({trials} trials/kernel)"] if trials > 0 else [])
    variants = {key: (t, "integer") for key, t in zip(lcpaq_keys, (0, trials))}
    if any(n.target in GLUE_OPS for n in integerize(gm, backend_for(load_target(default_target_name())).conventions).graph.nodes):
        variants["lcpaq-w8a8 float glue"] = (0, "float")  # the integer glue's accuracy and speed against float glue
    for key in variants:
        rows_out[key] = {"recipe": "W8A8, per-channel weights, MinMax" + ("; layer norm, softmax, GELU in float32" if key.endswith("float glue") else "")}
    macs = sum(COST.get(layer.node).macs for layer in find_layers(gm) if assignment_of(gm)[layer.name].w_bits <= 8)
    results: dict[str, Any] = {"rows": len(data[0]), "batches": {}, "int8_macs_per_row": macs}
    for batch in batches:
        x = _rows(data, 0, batch)
        for key, path in paths.items():  # static shapes at this batch, as an export at this batch would have
            session = ort_session(with_batch(path, batch, path.with_suffix(f".b{batch}.onnx")), THREADS)
            predictors[key] = (lambda s: lambda r: s.session.run(None, s.feed(r))[0])(session)
        runners: dict[str, Callable[[], Any]] = {k: (lambda f: lambda: f(x))(f) for k, f in predictors.items()}
        per: dict[str, dict[str, Any]] = {k: {} for k in rows_out}
        with torch.no_grad():
            for key, fn in predictors.items():
                per[key].update(_cosines(_outputs(fn, data, batch), ref))
        for key, (t, glue) in variants.items():
            built, per[key] = lcpaq_build(gm, x, t, data, glue)
            if built is not None:
                per[key].update(_cosines(per[key].pop("_outputs"), ref))
                args = built.inputs(*x)
                runners[key] = (lambda vm, a: lambda: vm["main"](*a))(built.vm, args)
        samples: dict[str, list[float]] = {k: [] for k in runners}
        with torch.no_grad():
            for _ in range(rounds):
                for key, fn in runners.items():
                    time.sleep(PAUSE_S)  # the previous backend's worker threads stop spinning first
                    samples[key].append(median_ms(fn, 5, repeat))
        for key, values in samples.items():
            per[key].update(median_ms=float(np.median(values)), rounds_ms=[round(v, 3) for v in values])
        results["batches"][str(batch)] = per
        print(name, f"batch {batch}", {k: round(v.get("median_ms", float("nan")), 3) for k, v in per.items()}, flush=True)
    results["recipes"] = {k: v["recipe"] for k, v in rows_out.items()}
    return results


def _prepared(bundle: ModelBundle) -> tuple[Any, Any]:
    """The model captured and costed for this host's target, with its pass context."""
    return prepared_graph(bundle, load_target(default_target_name()))


def _configured(prepared: Any, ctx: Any, bits: int, keep_float: tuple[str, ...] = (),
                layers: tuple[tuple[str, int, int], ...] = ()) -> Any:
    """A copy of the prepared graph calibrated and at uniform ``bits``, ``keep_float`` layers
    fp32, ``(name, w, a)`` of ``layers`` at their own widths."""
    passes = calibration_phase(ctx.target) + uniform_phase(ctx.target, bits, bits, keep_float=keep_float, layers=layers)
    return Pipeline(passes)(copy.deepcopy(prepared), ctx).graph_module


Config = tuple[int, tuple[str, ...], tuple[tuple[str, int, int], ...]]


def check_configs(gm: Any, target: Any) -> dict[str, Config]:
    """Mixed configurations that calibrated nothing: layers kept fp32, the rest W8A8; and, where
    the target offers 16 bits, 16-bit layers among 8-bit ones (activation widths chosen per
    group of layers reading one tensor, as the ILP must)."""
    layers = find_layers(gm)
    names = [layer.name for layer in layers]
    configs: dict[str, Config] = {
        "first and last layers fp32": (8, (names[0], names[-1]), ()), "every other layer fp32": (8, tuple(names[1::2]), ()),
        "first half fp32": (8, tuple(names[: len(names) // 2]), ()),
    }
    if 16 in target.act_bits:
        grouped = {n for g in precision_groups(layers) for n in g}
        units = sorted([*precision_groups(layers), *((n,) for n in names if n not in grouped)], key=lambda u: names.index(u[0]))
        first = {n for u in units[: len(units) // 2] for n in u}
        configs["W16A16"] = (16, (), ())
        configs["every other layer W16A16, the rest W8A16"] = (8, (), tuple((n, 16 if i % 2 else 8, 16) for i, n in enumerate(names)))
        configs["first half W8A16, the rest W8A8"] = (8, (), tuple((n, 8, 16) for n in names if n in first))
    return configs


def bench_mixed(name: str) -> dict[str, Any]:
    """Profile the model (hand schedules; the fit's two calibration points are the uniform W8A8
    and fp32 builds), then build and time (TVM's time evaluator, as the table does) the two
    calibration points and the check configurations: measured against predicted."""
    bundle = load_model(name)
    table = profile(bundle, trials=0)
    gm0, ctx = _prepared(bundle)
    configs: dict[str, Config] = {"W8A8 (calibration point)": (8, (), ()), "fp32 (calibration point)": (32, (), ())}
    configs.update(check_configs(gm0, ctx.target))
    x = [t[:1] for t in bundle.example_inputs]
    rows: dict[str, Any] = {}
    for label, (bits, keep, own) in configs.items():
        gm = _configured(gm0, ctx, bits, keep, own)
        chosen = assignment_of(gm)
        row: dict[str, Any] = {"predicted_ms": table.total(chosen) * 1e3, "float_layers": sum(b.w_bits == 32 for b in chosen.values()),
                               "wide_layers": sum(16 in (b.w_bits, b.a_bits) for b in chosen.values())}
        try:
            built = build_model(gm, x, ctx.target, trials=0)
        except LcpaqError as exc:
            rows[label] = {**row, "built": False, "reason": str(exc)}
            continue
        row["measured_ms"] = measure_latency(built, x, repeats=30, number=5).median * 1e3
        rows[label] = row
    return {"fixed_ms": table.fixed_seconds * 1e3, "layer_scale": table.layer_scale, "layers": len(table.entries),
            "configs": rows, "fit_note": table.notes[-1]}


def _merged(out: Path | None, machine: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """This run's results beside the other host families' already in ``out``."""
    hosts: dict[str, Any] = {}
    path = out / "e2e_latency.json" if out else None
    if path is not None and path.exists():
        try:
            hosts = json.loads(path.read_text()).get("hosts", {})
        except (OSError, ValueError, AttributeError):
            print(f"warning: {path} is unreadable; writing this host's section only", file=sys.stderr)
    hosts[machine["family"]] = {"machine": machine, **results}
    return {"hosts": dict(sorted(hosts.items()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,minilm")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per int8 kernel (0: hand schedules)")
    parser.add_argument("--tune", default="resnet18", help="models built with --trials; the others use hand schedules")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per backend per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the median round is reported")
    parser.add_argument("--rows", type=int, default=128, help="held-out inputs quality is scored on (a multiple of every batch)")
    parser.add_argument("--mixed", default="resnet18,mobilenetv2", help="models of the latency-table check ('' to skip)")
    parser.add_argument("--out", type=Path, help="write e2e_latency.md and .json here (other host families' sections kept)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    torch.set_num_threads(THREADS)
    batches = [int(b) for b in args.batches.split(",") if b]
    machine = machine_info()
    peaks = []
    try:
        peaks.append(measure_peak(THREADS))
    except LcpaqError as exc:
        print(f"no VNNI peak: {exc}", file=sys.stderr)
    print(f"{machine['cpu']} ({machine['family']}), {machine['logical_cpus']} logical CPUs, features {', '.join(machine['features'])}", flush=True)
    command = "TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_e2e " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"command": command, "trials": args.trials, "models": {}, "mixed": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m for m in args.models.split(",") if m]:
            trials = args.trials if name in args.tune.split(",") else 0
            results["models"][name] = bench_model(name, batches, trials, args.repeat, args.rounds, args.rows, Path(tmp))
    for name in [m for m in args.mixed.split(",") if m]:
        results["mixed"][name] = bench_mixed(name)
    if peaks:  # again at the end: the shared host's clock varies, the higher of the two is the peak
        peaks.append(measure_peak(THREADS))
        machine["vnni_peak"] = {**max(peaks, key=lambda p: p["int8_macs_per_s"]),
                                "runs_g_macs": [round(p["int8_macs_per_s"] / 1e9, 1) for p in peaks]}
    merged = _merged(args.out, machine, results)
    text = report(merged)
    print(text)
    if args.out:
        write_results(args.out, "e2e_latency", merged, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
