"""The measurements of docs/onnx_export.md, in one run: per model, lcpaq's QDQ ONNX exports
(uniform W8A8, and an ILP-mixed assignment with int4 weights) against lcpaq's own fake-quant
forward in ONNX Runtime, their file sizes against the fp32 ONNX model, and ORT latency against
ORT's own ``quantize_static`` int8 model and fp32::

    python -m lcpaq.tools.bench_onnx_export --out docs/onnx_export.md

Latencies are ORT CPU medians at batch 1 with 2 intra-op threads, all graph optimizations, taken
back to back in one process; the host's CPU is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from lcpaq.backends.onnx.export import export_onnx, ort_check
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.host import host_cpu_name
from lcpaq.ir.fileio import atomic_write_text
from lcpaq.tools.api import load_bundle, quantize
from lcpaq.tools.bench_common import median_ms
from lcpaq.tools.ort_baselines import TRANSFORMER_EXCLUDE, TRANSFORMER_OP_TYPES, export_onnx as export_fp32
from lcpaq.tools.ort_baselines import input_names, ort_session, quantize_onnx_int8

#: The ILP-mixed budget per model: low enough that some weights go to 4 bits.
MIXED = {"resnet18": "size=0.15x", "mobilenetv2": "size=0.18x", "minilm": "size=0.57x"}  # MiniLM: its float embedding is 0.52x


def fused_kernels(path: Path) -> str:
    """``integer/total``: the conv, matmul and gemm ops ORT runs as integer kernels after its
    graph optimizations (QLinearConv, QLinearMatMul, MatMulInteger...), of all of them."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no hardware-specific layouts
    options.optimized_model_filepath = str(path.with_suffix(".ort.onnx"))
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    compute = [op for op in ops if any(k in op for k in ("Conv", "MatMul", "Gemm"))]
    integer = [op for op in compute if op.startswith("QLinear") or "Integer" in op or "QAttention" in op or "NBits" in op]
    return f"{len(integer)}/{len(compute)}"


def _ort_ms(path: Path, x: list[Any], repeat: int) -> float:
    runner = ort_session(path, threads=2)
    feed = runner.feed(tuple(t.numpy() for t in x))
    return median_ms(lambda: runner.session.run(None, feed), warmup=5, repeat=repeat)


def bench_model(name: str, tmp: Path, repeat: int) -> list[dict[str, Any]]:
    bundle = load_bundle(name)
    x = [t[:1] for t in bundle.example_inputs]
    fp32 = export_fp32(bundle.model, tuple(x), tmp / f"{name}.fp32.onnx")
    transformer = name == "minilm"
    int8 = quantize_onnx_int8(fp32, [tuple(t[:1] for t in b) for b in bundle.calib_batches], tmp / f"{name}.int8.onnx",
                              op_types=TRANSFORMER_OP_TYPES if transformer else None, exclude=TRANSFORMER_EXCLUDE if transformer else None)
    rows = [{"model": name, "export": "fp32 ONNX (torch exporter)", "mb": fp32.stat().st_size / 1e6, "ms": _ort_ms(fp32, x, repeat)},
            {"model": name, "export": "ORT quantize_static int8" + (" (MatMul/Gemm, FFN down-projections fp32)" if transformer else ""),
             "mb": int8.stat().st_size / 1e6, "ms": _ort_ms(int8, x, repeat), "fused": fused_kernels(int8)}]
    target = load_target("x86-host")
    for label, options in (("lcpaq W8A8", {"bits": "w8a8"}), (f"lcpaq ILP {MIXED[name]}", {"budget": [MIXED[name]]})):
        gm = quantize(model=bundle, target=target, build=False, **options).results[0].graph_module
        path = tmp / f"{name}.{label.split()[1]}.onnx"
        info = export_onnx(gm, x, path, input_names=input_names(bundle.model, len(x)))
        check = ort_check(path, gm, x, repeats=repeat)
        types = ", ".join(f"{n} {t}" for t, n in info["code_types"].items())
        rows.append({"model": name, "export": f"{label} ({types})", "mb": info["bytes"] / 1e6, "ms": _ort_ms(path, x, repeat),
                     "fused": fused_kernels(path),
                     "diff_exact": check["max_abs_diff_exact"], "diff_opt": check.get("max_abs_diff_optimized"),
                     "sqnr": check["sqnr_db_exact"], "sqnr_fq": check["sqnr_db_fake_quant"]})
    for r in rows:
        r["size_vs_fp32"] = r["mb"] / rows[0]["mb"]
    return rows


NOTES = """How to read it:
- **Latency.** Compare the rows of one run. On this shared 2-core host, absolute latencies move
  between runs of the command.
- **Max diff, as written.** ONNX Runtime with its graph optimizations off computes the Q/DQ
  arithmetic as written. Rounding (half to even) and the Clip that reproduces lcpaq's
  saturation match lcpaq, so a difference comes only from float summation order. A conv or
  matmul sums in another order than torch, and an activation exactly at a rounding boundary
  can flip one code downstream. The SQNR against fp32 is then the same.
- **Max diff, ORT-optimized.** ORT fuses DQ -> op -> Q patterns into its integer kernels
  (QLinearConv...), which requantize in their own arithmetic. These are not lcpaq's numbers.
- **Integer kernels in ORT.** These are the conv, matmul and gemm ops that ORT's optimizer
  fused into integer kernels, of all of them (counted in its optimized graph at the extended
  level).
  - lcpaq quantizes each layer's inputs: a Q/DQ after the previous layer's ReLU or residual
    add, where the integer graph requantizes.
  - ORT fuses only a Q directly after the op, so a conv that feeds a residual add or a float
    op stays a float conv, and ORT dequantizes its weights on every call (it does not fold
    DequantizeLinear).
  - That is why lcpaq's QDQ files run slower in ORT than ORT's own `quantize_static` model,
    which puts a Q/DQ on every op output. Fast ONNX Runtime inference is not yet what this
    export is for: it carries lcpaq's mixed precisions exactly to toolchains that compile
    Q/DQ themselves (TensorRT, OpenVINO, NPU SDKs).
"""


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = ["# ONNX QDQ export: checked by ONNX Runtime", "",
             f"Measured by `{command}` on {host_cpu_name()} ({os.cpu_count()} logical CPUs), ONNX Runtime CPU, batch 1, "
             "2 intra-op threads, all graph optimizations; medians, taken back to back in one process.", "",
             "| model | export | size (MB) | vs fp32 | ORT latency (ms) | integer kernels in ORT | max diff vs lcpaq fake-quant (as written) "
             "| (ORT-optimized) | SQNR vs fp32 (dB): ORT / lcpaq |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sqnr = f"{r['sqnr']:.2f} / {r['sqnr_fq']:.2f}" if "sqnr" in r else "-"
        lines.append(f"| {r['model']} | {r['export']} | {r['mb']:.2f} | {r['size_vs_fp32']:.2f}x | {r['ms']:.3f} | {r.get('fused', '-')} | "
                     f"{f(r.get('diff_exact'), '.3g')} | {f(r.get('diff_opt'), '.3g')} | {sqnr} |")
    return "\n".join(lines) + "\n\n" + NOTES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcpaq.tools.bench_onnx_export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,minilm")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    command = "python -m lcpaq.tools.bench_onnx_export" + (f" --out {args.out}" if args.out else "")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows += bench_model(name, Path(tmp), args.repeat)
            print(f"{name}: done", file=sys.stderr, flush=True)
    text = markdown(rows, command)
    if args.out:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
