"""ResNet-18 fp32 (1x3x224x224, 2 threads) lowered four ways, median latencies in one run.

(a) PyTorch eager, (b) ONNX Runtime (``torch.onnx.export``), (c) TVM Relax imported from
``torch.export`` and built with the default pipeline (untuned), (d) TVM Relax through
``relax.pipeline.static_shape_tuning_pipeline`` (MetaSchedule, small trial budget; ``--trials 0``
skips it). Every backend's output is compared with eager before it is timed.

    .venv/bin/python -m lcpaq.tools.bench_relax_resnet18 --trials 64 --out docs/relax_lowering.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lcpaq.hw_targets.host import default_target_name
from lcpaq.tools.bench_common import median_ms as _median_ms

THREADS = 2


def _target(name: str) -> tuple[Any, Any]:
    """(TVM target, device) of a hardware target, as its backend builds for and runs on it."""
    from lcpaq.backends.common.backend import backend_for
    from lcpaq.hw_targets import load_target

    target = load_target(name)
    backend = backend_for(target)
    return backend.tvm_target(target), backend.device(target).dev


def bench_eager(model: torch.nn.Module, x: torch.Tensor, warmup: int, repeat: int) -> tuple[float, np.ndarray]:
    with torch.no_grad():
        ref = model(x).numpy()
        return _median_ms(lambda: model(x), warmup, repeat), ref


def bench_onnxruntime(model: torch.nn.Module, x: torch.Tensor, warmup: int, repeat: int, tmp: Path) -> tuple[float, np.ndarray]:
    import onnxruntime as ort

    path = tmp / "resnet18.onnx"
    try:  # TorchScript exporter: no onnxscript needed.
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    except TypeError:
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    out = sess.run(None, feed)[0]
    return _median_ms(lambda: sess.run(None, feed), warmup, repeat), out


def import_relax(model: torch.nn.Module, x: torch.Tensor) -> tuple[Any, dict]:
    """``torch.export`` (static shapes) -> Relax IRModule with weights detached as params."""
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad():
        ep = torch.export.export(model, (x,))
    mod = from_exported_program(ep, keep_params_as_input=True)
    mod, params = relax.frontend.detach_params(mod)
    return mod, params


def _run_vm(ex: Any, params: dict, x: torch.Tensor, dev: Any, warmup: int, repeat: int) -> tuple[float, np.ndarray]:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, dev)
    args = [tvm.runtime.tensor(x.numpy(), dev)] + [tvm.runtime.tensor(p.numpy(), dev) for p in params["main"]]
    out = vm["main"](*args)
    y = (out if hasattr(out, "numpy") else out[0]).numpy()  # from_exported_program's main returns a tuple
    return _median_ms(lambda: vm["main"](*args), warmup, repeat), y


def bench_relax_default(mod: Any, params: dict, x: torch.Tensor, target: Any, dev: Any, warmup: int, repeat: int) -> tuple[float, np.ndarray, float]:
    import tvm

    t0 = time.perf_counter()
    ex = tvm.compile(mod, target=target)  # relax_pipeline="default"
    build_s = time.perf_counter() - t0
    ms, y = _run_vm(ex, params, x, dev, warmup, repeat)
    return ms, y, build_s


def bench_relax_tuned(mod: Any, params: dict, x: torch.Tensor, target: Any, dev: Any, trials: int, per_task: int, warmup: int, repeat: int, work_dir: str) -> tuple[float, np.ndarray, float]:
    import tvm
    from tvm import relax

    t0 = time.perf_counter()
    with target:
        tuned = relax.pipeline.static_shape_tuning_pipeline(
            total_trials=trials, target=target, work_dir=work_dir, max_trials_per_task=per_task
        )(mod)
    ex = tvm.compile(tuned, target=target)
    build_s = time.perf_counter() - t0
    ms, y = _run_vm(ex, params, x, dev, warmup, repeat)
    return ms, y, build_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=64, help="MetaSchedule trials for (d); 0 skips it")
    ap.add_argument("--per-task", type=int, default=4, help="max_trials_per_task for (d)")
    ap.add_argument("--target", default=default_target_name(), help="hardware target (default: this host's, %(default)s)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--out", type=Path, default=None, help="append a markdown results table to this file")
    args = ap.parse_args(argv)

    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    torch.set_num_threads(THREADS)
    from lcpaq.tools.models.zoo import load_model

    bundle = load_model("resnet18")
    model = bundle.model.eval()
    x = bundle.example_inputs[0] if isinstance(bundle.example_inputs, (tuple, list)) else bundle.example_inputs
    x = x[:1].contiguous()
    target, dev = _target(args.target)
    rows: list[tuple[str, str, str, str]] = []

    ms, ref = bench_eager(model, x, args.warmup, args.repeat)
    rows.append(("(a) PyTorch eager", f"{ms:.2f}", "0", "-"))
    print(f"eager: {ms:.2f} ms", flush=True)

    def err(y: np.ndarray) -> str:
        return f"{float(np.abs(y.reshape(ref.shape) - ref).max()):.1e}"

    with tempfile.TemporaryDirectory() as tmp:
        try:
            ms, y = bench_onnxruntime(model, x, args.warmup, args.repeat, Path(tmp))
            rows.append(("(b) ONNX Runtime fp32", f"{ms:.2f}", err(y), "-"))
        except Exception as exc:  # report and carry on
            traceback.print_exc()
            rows.append(("(b) ONNX Runtime fp32", "failed", "-", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
        print(rows[-1], flush=True)

        t0 = time.perf_counter()
        mod, params = import_relax(model, x)
        import_s = time.perf_counter() - t0
        print(f"relax import: {import_s:.1f} s", flush=True)
        try:
            ms, y, build_s = bench_relax_default(mod, params, x, target, dev, args.warmup, args.repeat)
            rows.append(("(c) TVM Relax, default pipeline (untuned)", f"{ms:.2f}", err(y), f"import {import_s:.1f} s + build {build_s:.1f} s"))
        except Exception as exc:
            traceback.print_exc()
            rows.append(("(c) TVM Relax, default pipeline (untuned)", "failed", "-", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
        print(rows[-1], flush=True)

        if args.trials > 0:
            try:
                ms, y, build_s = bench_relax_tuned(mod, params, x, target, dev, args.trials, args.per_task, args.warmup, args.repeat, str(Path(tmp) / "ms"))
                rows.append((f"(d) TVM Relax, static_shape_tuning_pipeline ({args.trials} trials, <= {args.per_task}/task)", f"{ms:.2f}", err(y), f"tune + build {build_s:.1f} s"))
            except Exception as exc:
                traceback.print_exc()
                rows.append((f"(d) TVM Relax, static_shape_tuning_pipeline ({args.trials} trials, <= {args.per_task}/task)", "failed", "-", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
            print(rows[-1], flush=True)

    table = ["| backend | median ms | max abs err vs eager | compile cost |", "|---|---:|---:|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(table)
    print(text)
    if args.out:
        with args.out.open("a") as f:
            f.write(f"\n<!-- {' '.join(sys.argv)} -->\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
