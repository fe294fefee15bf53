"""What the CUDA family builds for the built-in models, read from the binaries: per model and
NVIDIA target, the lcpaq kernels, the CUDA functions in the fatbin, those with tensor-core
instructions and how many (SASS by ``cuobjdump``), the nodes left in float, build and export
times and the library's size. Runs without a GPU::

    python -m lcpaq.tools.cuda_builds --models resnet18,mobilenetv2,minilm --targets nvidia-sm90,nvidia-sm75

prints the markdown table of docs/gpu_latency.md.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from lcpaq.backends.common.build import build_model
from lcpaq.backends.cuda import fatbin
from lcpaq.hw_targets.host import host_cpu_name
from lcpaq.hw_targets.target import load_target
from lcpaq.tools.api import load_bundle, quantize

HEADER = ("| model | target | lcpaq kernels | CUDA functions | with IMMA | IMMA instructions | float nodes | build + export | library |\n"
          "|---|---|---:|---:|---:|---|---:|---|---:|")


def row(name: str, target_name: str, out: Path) -> str:
    bundle, target = load_bundle(name), load_target(target_name)
    gm = quantize(model=bundle, target=target, bits="w8a8", build=False).results[0].graph_module
    t0 = time.perf_counter()
    built = build_model(gm, [x[:1] for x in bundle.example_inputs], target)
    t1 = time.perf_counter()
    path = built.export(out / f"{name}-{target_name}.so")
    t2 = time.perf_counter()
    sass = "\n".join(fatbin.disassemble(b) for b in built.executable.fatbins.values())
    functions = sass.split("Function : ")[1:]
    imma = re.findall(r"\bIMMA\.[\w.]+", sass)
    with_imma = sum(1 for f in functions if re.search(r"\bIMMA\.", f))
    return (f"| {name} | {target_name} | {built.kernels} | {len(functions)} | {with_imma} | {len(imma)} ({', '.join(sorted(set(imma)))}) "
            f"| {len(built.float_fallbacks)} | {t1 - t0:.1f} s + {t2 - t1:.1f} s | {os.path.getsize(path) / 1e6:.1f} MB |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcpaq.tools.cuda_builds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2,minilm")
    parser.add_argument("--targets", default="nvidia-sm90,nvidia-sm75")
    args = parser.parse_args(argv)
    print(f"build machine: {host_cpu_name()} ({os.cpu_count()} logical CPUs)\n\n{HEADER}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for target in args.targets.split(","):
                print(row(name, target, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
