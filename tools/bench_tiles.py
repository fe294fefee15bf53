"""The VNNI hand-schedule tiles measured on this host: every tile variant of the int8 dense and
conv kernels on the shapes of the built-in models, so the constants in
``lcpaq.backends.x86.int8`` (``DENSE_MAX_ROWS``, ``DENSE_COL_BLOCKS``, ``MAX_COL_TILE``,
``CONV_COL_BLOCKS``) can be checked, or chosen per CPU microarchitecture, by one command.

Each variant is built, checked bit-exact against the current default schedule's output, and
timed with cold weights (as inside a whole model), 2 threads.

    TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_tiles --out docs
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lcpaq.backends.common import gemm_schedule
from lcpaq.backends.common.backend import backend_for
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86.vnni import VNNI_BLOCKING, VNNI_INTRIN, build, pack_weight, to_tvm
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.host import host_cpu_name
from lcpaq.tools.bench_common import write_results

#: (m, n, k): MiniLM's linears at batch 1 (32 tokens) and 8, ResNet-18's classifier.
DENSE = ((32, 384, 384), (32, 1536, 384), (32, 384, 1536), (256, 384, 384), (256, 1536, 384), (256, 384, 1536), (1, 1008, 512))
#: (NHWC input, out channels, kernel, stride, padding): ResNet-18's 3x3 convs, MobileNetV2 1x1s.
CONV = (((1, 56, 56, 64), 64, 3, 1, 1), ((1, 28, 28, 128), 128, 3, 1, 1), ((1, 14, 14, 256), 256, 3, 1, 1),
        ((1, 7, 7, 512), 512, 3, 1, 1), ((1, 28, 28, 128), 256, 3, 2, 1), ((1, 112, 112, 16), 96, 1, 1, 0),
        ((1, 56, 56, 144), 32, 1, 1, 0))
#: (rows or columns, output blocks, unrolled)
DENSE_TILES = ((4, 1, False), (4, 1, True), (8, 1, True), (4, 2, True), (8, 2, True), (4, 3, True), (16, 1, True))
CONV_TILES = ((7, 1, False), (7, 1, True), (7, 2, True), (8, 2, True), (4, 2, True), (4, 4, True), (14, 1, True))


def _codes(gen: np.random.Generator, shape: tuple[int, ...], dtype: str) -> Any:
    lo, hi = (0, 256) if dtype == "uint8" else (-127, 128)
    return gen.integers(lo, hi, shape, dtype=dtype)


def _params(n: int) -> list[Any]:
    return [to_tvm(np.zeros(n, np.int32)), to_tvm(np.full(n, 1 << 20, np.int32)), to_tvm(np.full(n, 36, np.int32)),
            to_tvm(np.array([3, 0, 255, 0], np.int32))]


def _time(sch: Any, args: list[Any], target: Any) -> tuple[float, np.ndarray]:
    kernel = build(sch.mod, target)
    kernel(*args)
    out = args[-1].numpy().copy()
    return kernel.time_ms(*args, repeat=10, number=5, cold=True), out


def _variants(make: Callable[..., Any], tiles: tuple, args: list[Any], target: Any, default: Any) -> dict[str, Any]:
    ref_ms, ref = _time(default, args, target)
    row: dict[str, Any] = {"default_ms": ref_ms}
    for a, b, unroll in tiles:
        label = f"{a}x{b}{' unrolled' if unroll else ''}"
        ms, out = _time(make(a, b, unroll), args, target)
        row[label] = ms if np.array_equal(out, ref) else f"MISMATCH ({ms:.3f} ms)"
    return row


def bench(target: Any) -> dict[str, Any]:
    gen = np.random.default_rng(0)
    dense, conv = {}, {}
    for m, n, k in DENSE:
        func = t8.qdense_func(m, n, k)
        args = [to_tvm(_codes(gen, (m, k), "uint8")), to_tvm(pack_weight(torch.from_numpy(_codes(gen, (n, k), "int8")))),
                *_params(n), to_tvm(np.zeros((m, n), np.uint8))]
        make = lambda r, b, u: gemm_schedule.schedule_qdense(func, VNNI_BLOCKING, VNNI_INTRIN, r, b, u)  # noqa: E731
        dense[f"{m}x{n}x{k}"] = {"macs": m * n * k, **_variants(make, DENSE_TILES, args, target, t8.schedule_qdense(func))}
        print("dense", m, n, k, flush=True)
    for shape, o, kk, s, p in CONV:
        func = t8.qconv2d_func(shape, o, kk, s, p)
        oh, ow = conv_out_size(shape[1], kk, s, p), conv_out_size(shape[2], kk, s, p)
        w = torch.from_numpy(_codes(gen, (o, shape[3], kk, kk), "int8"))
        args = [to_tvm(_codes(gen, shape, "uint8")), to_tvm(t8.pack_conv_weight(w)), *_params(o), to_tvm(np.zeros((1, oh, ow, o), np.uint8))]
        make = lambda c, b, u: gemm_schedule.schedule_qconv2d(func, VNNI_BLOCKING, VNNI_INTRIN, c, b, u)  # noqa: E731
        key = f"{shape[3]}->{o} {kk}x{kk}/{s} at {shape[1]}x{shape[2]}"
        conv[key] = {"macs": oh * ow * o * kk * kk * shape[3], **_variants(make, CONV_TILES, args, target, t8.schedule_qconv2d(func, t8.vnni_col_tile(ow)))}
        print("conv", key, flush=True)
    return {"dense": dense, "conv": conv}


def report(results: dict[str, Any], cpu: str, mcpu: str, command: str) -> str:
    lines = ["# VNNI hand-schedule tiles", "", "Produced by one run of:", "", "```sh", command, "```", "",
             f"on {cpu} (LLVM CPU `{mcpu}`), 2 threads, cold weights; milliseconds per call. A tile is "
             "`rows x output blocks` (dense) or `columns x output blocks` (conv), each block 16 int32 lanes; "
             "`default` is the schedule builds use today. Every variant's output equals the default's.", ""]
    for kind, tiles in (("dense", DENSE_TILES), ("conv", CONV_TILES)):
        labels = [f"{a}x{b}{' unrolled' if u else ''}" for a, b, u in tiles]
        lines += [f"## {kind}", "", f"| shape | default | {' | '.join(labels)} |", "|---|" + "---:|" * (len(labels) + 1)]
        for shape, row in results[kind].items():
            cells = [f"{row[lb]:.3f}" if isinstance(row[lb], float) else row[lb] for lb in labels]
            lines.append(f"| {shape} | {row['default_ms']:.3f} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write x86_tiles.md and .json here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    target_data = load_target("x86-host")
    target = backend_for(target_data).tvm_target(target_data)
    mcpu = str(target.attrs.get("mcpu", "?"))
    results = bench(target)
    command = "TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_tiles " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, host_cpu_name(), mcpu, command)
    print(text)
    if args.out:
        write_results(args.out, "x86_tiles", {"cpu": host_cpu_name(), "llvm_mcpu": mcpu, **results}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
