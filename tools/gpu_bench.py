"""Run and time lcpaq's built libraries on the GPU machine, with the TVM runtime alone.

The GPU machine has PyTorch and a driver but no TVM and no compiler. ``python -m
lcpaq.tools.gpu_bundle`` writes, here, a bundle: the libraries (their CUDA kernels compiled to
fatbins inside), each one's input and integer-reference output, and ``runtime/`` (TVM's runtime
libraries and the ``apache-tvm-ffi`` wheel for the GPU machine's Python). This script, run there
from a copy of the repository, loads that runtime (no ``tvm`` package), runs every library of
every bundle on ``cuda:0``, checks it against its reference, times it with CUDA events, and times
PyTorch on the same GPU (fp16 eager and ``torch.compile``) on the same architecture:

    python tools/gpu_bench.py --bundle .gpu_bundle --out gpu_bench.json

Per-layer libraries (a bundle written with ``--profile``) are timed the same way; ``python -m
lcpaq.tools.gpu_bundle --table`` turns those timings into a latency table. ``--device cpu`` runs
x86 bundles on this machine's CPU, to check the mechanics anywhere.

This file imports nothing of lcpaq at the top: only numpy, torch and the carried runtime.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import site
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DLPACK = {"cpu": 1, "cuda": 2}


def load_runtime(runtime: Path, device: str) -> Any:
    """``tvm_ffi`` (installed from the carried wheel when missing) with TVM's runtime libraries
    loaded globally (and the CUDA one with the CUDA runtime PyTorch ships, for ``cuda``)."""
    try:
        import tvm_ffi
    except ImportError:
        wheels = sorted(glob.glob(str(runtime / "apache_tvm_ffi-*.whl")))
        if not wheels:
            raise SystemExit(f"gpu_bench: no tvm_ffi here and no apache_tvm_ffi wheel in {runtime}")
        target = Path(tempfile.gettempdir()) / "lcpaq_tvm_ffi"
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target), wheels[-1]],
                       check=True)
        sys.path.insert(0, str(target))
        import tvm_ffi
    if device == "cuda":
        for lib in _cuda_runtime_libs():
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL(str(runtime / "libtvm_runtime.so"), mode=ctypes.RTLD_GLOBAL)
    if device == "cuda":
        ctypes.CDLL(str(runtime / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
    return tvm_ffi


def _cuda_runtime_libs() -> list[str]:
    """libcudart of the CUDA runtime wheels PyTorch depends on (none: the system's is used)."""
    found = []
    for base in [*site.getsitepackages(), site.getusersitepackages()]:
        found += glob.glob(os.path.join(base, "nvidia", "*", "lib", "libcudart.so*"))
    return sorted(found)[:1]


class Library:
    """A built model (Relax VM, ``main``) or a single kernel (``kind = "kernel"``) loaded with
    the bare runtime, on ``device``."""

    def __init__(self, ffi: Any, path: Path, kind: str, device: str) -> None:
        self.mod = ffi.load_module(str(path))
        self.kind = kind
        if kind == "vm":
            self.vm = self.mod["vm_load_executable"]()
            init = [DLPACK[device], 0, 2]  # device, index, pooled allocator
            if device != "cpu":
                init += [DLPACK["cpu"], 0, 2]  # the host, for shape functions
            self.vm["vm_initialization"](*init)
            self.main = self.vm["main"]
        else:
            self.main = self.mod["main"]

    def __call__(self, *args: Any) -> Any:
        return self.main(*args)


def first_tensor(out: Any) -> Any:
    """The first tensor of a VM result (a model with several outputs returns an array)."""
    while not hasattr(out, "__dlpack__"):
        out = out[0]
    return out


def _to_device(torch: Any, ffi: Any, array: np.ndarray, device: str) -> Any:
    return ffi.from_dlpack(torch.from_numpy(np.ascontiguousarray(array)).to(device))


def time_call(torch: Any, fn: Callable[[], Any], device: str, repeats: int, warmup: int = 5) -> list[float]:
    """Seconds of each of ``repeats`` calls (CUDA events on the GPU, perf_counter on the CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def batch_inputs(bundle: Path, entry: dict[str, Any]) -> list[np.ndarray]:
    """The bundle's stored input rows, tiled to the entry's batch."""
    batch = int(entry["batch"])
    inputs = [np.load(bundle / f) for f in entry["inputs"]]
    return [np.concatenate([x] * -(-batch // len(x)))[:batch] for x in inputs]


def run_model(torch: Any, ffi: Any, bundle: Path, entry: dict[str, Any], device: str, repeats: int) -> dict[str, Any]:
    """Load one built model, check it against its integer reference at its batch, and time it."""
    lib = Library(ffi, bundle / entry["library"], "vm", device)
    batch = int(entry["batch"])
    inputs = batch_inputs(bundle, entry)
    reference = np.load(bundle / entry["reference"])
    reference = np.concatenate([reference] * -(-batch // len(reference)))[:batch]
    args = [_to_device(torch, ffi, x, device) for x in inputs]
    out = torch.from_dlpack(first_tensor(lib(*args))).cpu().numpy()
    times = time_call(torch, lambda: lib(*args), device, repeats)
    diff = float(np.abs(out.astype(np.float64) - reference).max()) if out.shape == reference.shape else float("nan")
    return {**entry, "shape": list(out.shape), "bit_exact": bool(out.shape == reference.shape and np.array_equal(out, reference)),
            "max_abs_diff": diff, "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}


def run_kernel(torch: Any, ffi: Any, bundle: Path, entry: dict[str, Any], device: str, repeats: int) -> dict[str, Any]:
    """Time one per-layer library on seeded arguments of the manifest's shapes."""
    lib = Library(ffi, bundle / entry["library"], entry.get("kind", "kernel"), device)
    gen = np.random.default_rng(0)
    args = []
    for shape, dtype in entry["args"]:
        if dtype.startswith("float"):
            a = gen.standard_normal(shape).astype(dtype)
        else:
            a = gen.integers(1, 8, size=shape).astype(dtype)  # as backends/cuda/timing.py: a valid shift, small codes
        args.append(_to_device(torch, ffi, a, device))
    times = time_call(torch, lambda: lib(*args), device, repeats)
    return {**entry, "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}


def torch_model(torch: Any, name: str, bundle: Path, manifest: dict[str, Any]) -> Any:
    """The same architecture for PyTorch, with seeded weights (latency does not depend on their
    values): lcpaq's image models, or a Hugging Face transformer rebuilt from the bundled
    configuration; None for another model."""
    torch.manual_seed(0)
    if name in _image_models():
        return _image_models()[name]()
    if manifest.get("hf_config"):
        from transformers import AutoConfig, AutoModel

        return AutoModel.from_config(AutoConfig.from_pretrained(str(bundle / manifest["hf_config"])))
    return None


def torch_baselines(torch: Any, model: Any, inputs: list[np.ndarray], device: str, repeats: int) -> dict[str, Any]:
    """PyTorch fp16 (on the GPU; fp32 on a CPU) eager and ``torch.compile`` on ``inputs`` (the
    bundle's rows tiled to the batch; float inputs cast to the model's type)."""
    if model is None:
        return {}
    dtype = torch.float16 if device == "cuda" else torch.float32
    model = model.eval().to(device, dtype)
    args = [torch.from_numpy(x).to(device) for x in inputs]
    args = [a.to(dtype) if a.is_floating_point() else a for a in args]
    label = "fp16" if device == "cuda" else "fp32"
    out: dict[str, Any] = {}
    with torch.inference_mode():
        out[f"torch_{label}_eager_ms"] = statistics.median(time_call(torch, lambda: model(*args), device, repeats)) * 1e3
        if device == "cuda":
            try:
                compiled = torch.compile(model)
                out[f"torch_{label}_compile_ms"] = statistics.median(time_call(torch, lambda: compiled(*args), device, repeats, warmup=10)) * 1e3
            except Exception as exc:  # noqa: BLE001 (report, do not stop the run)
                out[f"torch_{label}_compile_error"] = str(exc).splitlines()[0][:200]
    return out


def _image_models() -> dict[str, Callable[[], Any]]:
    """lcpaq's built-in image architectures, importable without installing lcpaq."""
    if "lcpaq" not in sys.modules:
        import types

        try:
            import lcpaq  # noqa: F401
        except ImportError:  # a copy of the repository: its folders are the lcpaq package
            pkg = types.ModuleType("lcpaq")
            pkg.__path__ = [str(ROOT)]
            sys.modules["lcpaq"] = pkg
    from lcpaq.tools.models.mobilenetv2 import mobilenetv2
    from lcpaq.tools.models.resnet import resnet18, resnet_digits

    return {"resnet18": resnet18, "mobilenetv2": mobilenetv2, "resnet-digits": resnet_digits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / ".gpu_bundle", help="bundle folder (runtime/ and one folder per model)")
    parser.add_argument("--out", type=Path, default=Path("gpu_bench.json"))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    import torch

    ffi = load_runtime(args.bundle / "runtime", args.device)
    manifests = sorted(args.bundle.glob("*/manifest.json"))
    if not manifests:
        raise SystemExit(f"gpu_bench: no */manifest.json under {args.bundle}")
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    results: dict[str, Any] = {"device": gpu, "torch": torch.__version__, "models": [], "layers": [], "baselines": {}}
    for manifest in manifests:
        bundle = manifest.parent
        data = json.loads(manifest.read_text())
        for entry in data.get("models", []):
            r = run_model(torch, ffi, bundle, entry, args.device, args.repeats)
            results["models"].append(r)
            predicted = f"  (table predicted {r['predicted_ms']:.3f} ms)" if "predicted_ms" in r else ""
            print(f"{r['model']:<12} {r['config']:<8} b{r['batch']:<3} {r['median_ms']:8.3f} ms  "
                  f"{'bit-exact' if r['bit_exact'] else 'max diff %.3g' % r['max_abs_diff']}{predicted}", flush=True)
            key = f"{r['model']}-b{r['batch']}"
            if key not in results["baselines"]:
                model = torch_model(torch, r["model"], bundle, data)
                base = torch_baselines(torch, model, batch_inputs(bundle, entry), args.device, args.repeats)
                results["baselines"][key] = base
                if base:
                    print(f"{'':<12} torch " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in base.items()), flush=True)
        for entry in data.get("layers", []):
            results["layers"].append(run_kernel(torch, ffi, bundle, entry, args.device, args.repeats))
        if data.get("layers"):
            print(f"{bundle.name}: {len(data['layers'])} layer kernels timed", flush=True)
    results["tvm_package_loaded"] = "tvm" in sys.modules  # the runtime alone ran everything
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
