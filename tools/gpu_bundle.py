"""Write a bundle for the GPU machine: built libraries, their inputs and integer references, and
the TVM runtime, for ``tools/gpu_bench.py`` to run and time there.

This machine compiles (TVM, nvcc) and has no GPU; the GPU machine has a GPU and no compiler.
A bundle carries what the second needs from the first::

    python -m lcpaq.tools.gpu_bundle --models resnet18,mobilenetv2,minilm --batches 1,64 --out .gpu_bundle

writes ``.gpu_bundle/runtime/`` (``libtvm_runtime.so``, ``libtvm_runtime_cuda.so`` and the
``apache-tvm-ffi`` wheel for the GPU machine's Python) and one folder per model: for W8A8 and
one ILP-mixed assignment (``--mixed``) at each batch size, the library (``lcpaq build``'s, for
``--target``), the model's distinct example rows and their integer-reference outputs (the
bench tiles both to the batch), and ``manifest.json``, written last. A model folder plus the
runtime is one device call's carry (64 MiB at most: see docs/gpu_latency.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import tvm
import tvm_ffi
from tqdm.auto import tqdm

from lcpaq.backends.common.backend import backend_for
from lcpaq.backends.common.build import build_model
from lcpaq.backends.common.profile import RecordedTimer, profile_model, fit_model_time
from lcpaq.backends.cuda.layer_kernels import LayerKernels
from lcpaq.hw_targets.target import Target, load_target
from lcpaq.ir.errors import ConfigError, CorruptFileError, LcpaqError
from lcpaq.ir.fileio import check_writable
from lcpaq.ir.layers import find_layers
from lcpaq.ir.metrics import first_output
from lcpaq.passes.cost_model import assignment_of, load_table
from lcpaq.tools.api import load_bundle, quantize
from lcpaq.tools.profile import prepared_graph

#: Distinct example rows stored per model (the bench tiles them to the batch).
ROWS = 4
WHEEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lcpaq" / "wheels"


def runtime_bundle(dest: Path, python: str = "3.12") -> list[Path]:
    """TVM's runtime libraries and the ``apache-tvm-ffi`` wheel (this machine's version) for
    CPython ``python`` on manylinux x86-64, copied to ``dest``; the wheel is downloaded once
    into the cache. ConfigError (one line) if pip cannot fetch it."""
    dest.mkdir(parents=True, exist_ok=True)
    libdir = Path(tvm.__file__).parent / "lib"
    copied = []
    for name in ("libtvm_runtime.so", "libtvm_runtime_cuda.so"):
        shutil.copy2(libdir / name, dest / name)
        copied.append(dest / name)
    version, tag = tvm_ffi.__version__, f"cp{python.replace('.', '')}"
    wheels = sorted(WHEEL_CACHE.glob(f"apache_tvm_ffi-{version}-{tag}-*.whl"))
    if not wheels:
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python,
               "--implementation", "cp", "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_24_x86_64",
               "--platform", "manylinux2014_x86_64", "-d", str(WHEEL_CACHE), f"apache-tvm-ffi=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(WHEEL_CACHE.glob(f"apache_tvm_ffi-{version}-{tag}-*.whl"))
        if done.returncode != 0 or not wheels:
            raise ConfigError(f"cannot fetch the apache-tvm-ffi {version} wheel for Python {python}: "
                              f"{(done.stderr.strip().splitlines() or ['pip found none'])[-1]}")
    shutil.copy2(wheels[-1], dest / wheels[-1].name)
    return [*copied, dest / wheels[-1].name]


def example_rows(bundle: Any, rows: int = ROWS) -> list[torch.Tensor]:
    """Up to ``rows`` distinct input rows: the example input, then evaluation and calibration
    rows of the same shape."""
    parts: list[list[torch.Tensor]] = [[x[:1]] for x in bundle.example_inputs]
    for batch in (*bundle.eval_batches, *bundle.calib_batches):
        if len(batch) != len(parts) or any(b.shape[1:] != p[0].shape[1:] for b, p in zip(batch, parts)):
            continue
        for part, x in zip(parts, batch):
            part.append(x)
        if sum(len(x) for x in parts[0]) >= rows:
            break
    return [torch.cat(p)[:rows] for p in parts]


def hf_config(model: torch.nn.Module) -> str | None:
    """The Hugging Face configuration (JSON) of the transformer inside ``model``, if any: enough
    to rebuild the architecture (random weights) on the GPU machine for PyTorch's timings."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if hasattr(config, "to_json_string"):
            return config.to_json_string()
    return None


def model_bundle(name: str, target: Target, batches: Sequence[int], mixed: str, dest: Path, progress: bool = True,
                 profile: bool = False, latency_table: str | None = None) -> dict[str, Any]:
    """Build ``name`` for ``target`` (W8A8 and, unless ``mixed`` is empty, the ILP's assignment
    under that budget, with ``latency_table`` for a latency budget) at each batch size into
    ``dest``, and with ``profile`` its layer kernels
    (:func:`layer_bundle`); returns the manifest (also written, last)."""
    bundle = load_bundle(name, progress)
    table = load_table(latency_table, target) if latency_table else None
    dest.mkdir(parents=True, exist_ok=True)
    rows = example_rows(bundle)
    inputs = []
    for i, x in enumerate(rows):
        np.save(dest / f"input{i}.npy", x.numpy())
        inputs.append(f"input{i}.npy")
    configs = [("w8a8", {"bits": "w8a8"})] + ([("mixed", {"budget": [mixed], "latency_table": latency_table})] if mixed else [])
    entries = []
    bar = tqdm(total=len(configs) * len(batches), desc=f"bundle {name}", unit="build", disable=not progress)
    for label, options in configs:
        result = quantize(model=bundle, target=target, build=False, progress=False, **options)
        gm = result.results[0].graph_module
        for i, batch in enumerate(batches):
            built = build_model(gm, [x[:1] for x in rows], target, batch=batch)
            if i == 0:  # the integer graph is the same at every batch
                with torch.no_grad():
                    np.save(dest / f"{label}-reference.npy", first_output(built.integer_graph(*rows)).numpy())
            lib = built.export(dest / f"{label}-b{batch}.so")
            entries.append({"model": name, "config": label, "label": result.results[0].label, "batch": batch,
                            "library": lib.name, "inputs": inputs, "reference": f"{label}-reference.npy",
                            "kernels": built.kernels, "float_nodes": sorted(built.float_fallbacks)})
            if table is not None and batch == 1:  # the table's prediction, to compare with the bench's time
                entries[-1]["predicted_ms"] = round(table.total(assignment_of(gm)) * 1e3, 4)
            bar.update()
    bar.close()
    manifest = {"target": target.name, "model": name, "models": entries}
    config = hf_config(bundle.model)
    if config is not None:  # the bench rebuilds the architecture for PyTorch's timings
        (dest / "hf").mkdir(exist_ok=True)
        (dest / "hf" / "config.json").write_text(config)
        manifest["hf_config"] = "hf"
    if profile:
        layers = layer_bundle(name, target, dest, progress)
        for entry in layers["layers"]:
            entry["layer_notes"] = layers["layer_notes"]
        manifest["layers"] = layers["layers"]
    tmp = dest / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(dest / "manifest.json")
    return manifest


def layer_bundle(name: str, target: Target, dest: Path, progress: bool = True) -> dict[str, Any]:
    """Every quantizable layer of ``name`` as the CUDA build runs it, at each precision the
    table gets (:class:`~lcpaq.backends.cuda.layer_kernels.LayerKernels`), exported to
    ``dest/layers/``; returns the manifest's ``layers`` entries and notes."""
    gm, _ = prepared_graph(load_bundle(name, progress), target)
    kernels = LayerKernels(backend_for(target).tvm_target(target))
    (dest / "layers").mkdir(parents=True, exist_ok=True)
    entries = []
    for i, layer in enumerate(tqdm(find_layers(gm), desc=f"layers {name}", unit="layer", disable=not progress)):
        for key, kernel in kernels.kernels(gm, layer).items():
            lib = f"layers/{i:03d}-{key}.so"
            kernel.executable.export_library(str(dest / lib))
            entries.append({"model": name, "layer": layer.name, "key": key, "library": lib, "kind": kernel.kind,
                            "args": [[list(shape), dtype] for shape, dtype in kernel.args]})
    return {"layers": entries, "layer_notes": kernels.notes()}


def latency_table(results_path: Path, name: str, target: Target, out: Path) -> Path:
    """The latency table of ``name`` from ``gpu_bench``'s results: its layers' timings and its
    W8A8 batch-1 build's time (for ``fixed_seconds``), written to ``out``."""
    try:
        results = json.loads(results_path.read_text())
        rows = [r for r in results["layers"] if r["model"] == name]
        whole = [r for r in results["models"] if r["model"] == name and r["config"] == "w8a8" and int(r["batch"]) == 1]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"gpu_bench results {results_path} are unreadable: {exc}") from exc
    if not rows or not whole:
        raise ConfigError(f"{results_path} has no layer timings or no W8A8 batch-1 time of {name}: bundle it with --profile --batches 1")
    seconds: dict[str, dict[str, float]] = {}
    for r in rows:
        seconds.setdefault(r["layer"], {})[r["key"]] = r["median_ms"] / 1e3
    notes = [f"timed on {results['device']} by tools/gpu_bench.py (CUDA events, median)", *rows[0].get("layer_notes", [])]
    gm, ctx = prepared_graph(load_bundle(name, False), target)
    table = profile_model(gm, target, model_name=name, progress=False, timer=RecordedTimer(seconds, notes, str(results_path)))
    table = fit_model_time(table, gm, ctx, 0, whole=whole[0]["median_ms"] / 1e3)
    check_writable(out, "--out")
    dataclasses.replace(table, device=str(results["device"])).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcpaq.tools.gpu_bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="nvidia-sm90")
    parser.add_argument("--models", default="resnet18,mobilenetv2,minilm", help="comma-separated built-in models or path/to/file.py:fn")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--mixed", default="size=0.2x", help="budget of the ILP-mixed build ('' for W8A8 only)")
    parser.add_argument("--latency-table", default=None, help="latency table for a latency= --mixed budget")
    parser.add_argument("--profile", action="store_true", help="also the layer kernels, for a latency table")
    parser.add_argument("--table", type=Path, metavar="RESULTS", help="instead: write --model's latency table from gpu_bench's results")
    parser.add_argument("--out", type=Path, default=Path(".gpu_bundle"), help="bundle folder (with --table: the table's file)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    try:
        target = load_target(args.target)
        if target.device not in ("cuda", "local"):  # a local (x86) bundle checks the mechanics: gpu_bench --device cpu
            raise ConfigError(f"target {target.name!r} runs on a board over RPC; the bundle is for nvidia-* targets")
        batches = [int(b) for b in args.batches.split(",") if b]
        if not batches or min(batches) < 1:
            raise ConfigError(f"--batches must be positive integers, got {args.batches!r}")
        names = [m for m in args.models.split(",") if m]
        if args.table is not None:
            if len(names) != 1:
                raise ConfigError("--table writes one model's table: give --models NAME")
            print(f"wrote {latency_table(args.table, names[0], target, args.out)}")
            return 0
        check_writable(args.out / "manifest.json", "--out")
        backend_for(target).check_toolchain(target)
        runtime_bundle(args.out / "runtime")
        for name in names:
            model_bundle(name, target, batches, args.mixed, args.out / Path(name).stem.split(":")[0], args.progress, args.profile,
                         args.latency_table)
    except LcpaqError as exc:
        print(f"gpu_bundle: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}; run on the GPU machine: python tools/gpu_bench.py --bundle {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
