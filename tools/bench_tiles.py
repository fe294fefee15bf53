"""The VNNI hand-schedule tiles on this host: every tile variant of the int8 (``vpdpbusd``) and
wide W8A16 (``vpdpwssd``) dense and conv kernels on the shapes of the built-in models, against
the tiles builds use today (this CPU's row of ``backends/x86/tiles.toml``, or its default row).
With ``--write`` the best tile of each kind (lowest geometric-mean time over the shapes) becomes
this CPU's row of that table, so the next build on this microarchitecture uses it.

Each variant is built, checked bit-exact against the current tiles' output, and timed with cold
weights (as inside a whole model), 2 threads.

    TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_tiles --out docs [--write]
"""
from __future__ import annotations

import argparse
import datetime
import math
from dataclasses import replace
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lcpaq.backends.common import wide_te
from lcpaq.backends.common.backend import backend_for
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86 import int16 as k16
from lcpaq.backends.x86.tiles import VnniTiles, target_tiles, write_row
from lcpaq.backends.x86.vnni import build, pack_weight, to_tvm
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.host import host_cpu_name
from lcpaq.tools.bench_common import write_results

#: (m, n, k): MiniLM's linears at batch 1 (32 tokens) and 8, ResNet-18's classifier.
DENSE = ((32, 384, 384), (32, 1536, 384), (32, 384, 1536), (256, 384, 384), (256, 1536, 384), (256, 384, 1536), (1, 1008, 512))
#: (NHWC input, out channels, kernel, stride, padding): ResNet-18's 3x3 convs, MobileNetV2 1x1s.
CONV = (((1, 56, 56, 64), 64, 3, 1, 1), ((1, 28, 28, 128), 128, 3, 1, 1), ((1, 14, 14, 256), 256, 3, 1, 1),
        ((1, 7, 7, 512), 512, 3, 1, 1), ((1, 28, 28, 128), 256, 3, 2, 1), ((1, 112, 112, 16), 96, 1, 1, 0),
        ((1, 56, 56, 144), 32, 1, 1, 0))
#: The wide kernels' shapes (W8A16): fewer, since each takes longer to build.
WIDE_DENSE = ((32, 384, 384), (32, 1536, 384), (256, 384, 384))
WIDE_CONV = (((1, 56, 56, 64), 64, 3, 1, 1), ((1, 14, 14, 256), 256, 3, 1, 1), ((1, 7, 7, 512), 512, 3, 1, 1))
#: Candidate tiles (rows or columns, output blocks), every one unrolled, as builds use them.
DENSE_TILES = ((4, 1), (8, 1), (4, 2), (8, 2), (4, 3), (16, 1))
CONV_TILES = ((7, 1), (7, 2), (8, 2), (4, 2), (4, 4), (14, 1))

Make = Callable[[tuple[int, int]], Any]


def _codes(gen: np.random.Generator, shape: tuple[int, ...], dtype: str) -> Any:
    lo, hi = {"uint8": (0, 256), "int8": (-127, 128), "int16": (-(2**15), 2**15)}[dtype]
    return gen.integers(lo, hi, shape, dtype=dtype)


def _params(n: int, wide: bool) -> list[Any]:
    lo, hi = (-(2**15), 2**15 - 1) if wide else (0, 255)
    return [to_tvm(np.zeros(n, np.int64 if wide else np.int32)), to_tvm(np.full(n, 1 << 20, np.int32)),
            to_tvm(np.full(n, 36 if not wide else 44, np.int32)), to_tvm(np.array([3, 0, lo, hi], np.int32))]


def _run(kernel: Any, args: list[Any]) -> np.ndarray:
    kernel(*args)
    return args[-1].numpy().copy()


#: Interleaved rounds over the candidates; each tile keeps its fastest round.
ROUNDS = 3


def _variants(make: Make, tiles: tuple, args: list[Any], target: Any, current: tuple[int, int]) -> dict[str, Any]:
    """Each candidate's time (the current tile among them; the best of :data:`ROUNDS`
    interleaved rounds), or a mismatch against the current tile's output."""
    ref = _run(build(make(current).mod, target), args)
    kernels = {f"{t[0]}x{t[1]}": build(make(t).mod, target) for t in dict.fromkeys((*tiles, current))}
    row: dict[str, Any] = {lb: math.inf for lb in kernels}
    for lb, kernel in kernels.items():
        if not np.array_equal(_run(kernel, args), ref):
            row[lb] = "MISMATCH"
    for _ in range(ROUNDS):
        for lb, kernel in kernels.items():
            if row[lb] != "MISMATCH":
                row[lb] = min(row[lb], kernel.time_ms(*args, repeat=10, number=5, cold=True))
    return row


def _dense_case(m: int, n: int, k: int, wide: bool, gen: np.random.Generator, tiles: VnniTiles) -> tuple[Make, list[Any]]:
    if wide:
        func = k16.qdense_func(m, n, k, "int16", 8)
        w = torch.from_numpy(_codes(gen, (n, k), "int8").astype(np.int16))
        x, packed = _codes(gen, (m, k), "int16"), wide_te.pack_wide_weight(w, 1, 16)
        make: Make = lambda t: k16.schedule_qdense(func, replace(tiles, wide_dense=t))  # noqa: E731
    else:
        func = t8.qdense_func(m, n, k)
        x, packed = _codes(gen, (m, k), "uint8"), pack_weight(torch.from_numpy(_codes(gen, (n, k), "int8")))
        make = lambda t: t8.schedule_qdense(func, replace(tiles, int8_dense=t))  # noqa: E731
    out = np.zeros((m, n), np.int16 if wide else np.uint8)
    return make, [to_tvm(x), to_tvm(packed), *_params(n, wide), to_tvm(out)]


def _conv_case(case: tuple, wide: bool, gen: np.random.Generator, tiles: VnniTiles) -> tuple[Make, list[Any]]:
    shape, o, kk, s, p = case
    oh, ow = conv_out_size(shape[1], kk, s, p), conv_out_size(shape[2], kk, s, p)
    w = torch.from_numpy(_codes(gen, (o, shape[3], kk, kk), "int8"))
    if wide:
        func = k16.qconv2d_func(shape, o, kk, s, p, "int16", 8)
        x, packed = _codes(gen, shape, "int16"), wide_te.pack_wide_weight(w.to(torch.int16), 1, 16)
        make: Make = lambda t: k16.schedule_qconv2d(func, ow, replace(tiles, wide_conv=t))  # noqa: E731
    else:
        func = t8.qconv2d_func(shape, o, kk, s, p)
        x, packed = _codes(gen, shape, "uint8"), t8.pack_conv_weight(w)
        make = lambda t: t8.schedule_qconv2d(func, ow, replace(tiles, int8_conv=t))  # noqa: E731
    out = np.zeros((1, oh, ow, o), np.int16 if wide else np.uint8)
    return make, [to_tvm(x), to_tvm(packed), *_params(o, wide), to_tvm(out)]


def _conv_key(case: tuple) -> str:
    shape, o, kk, s, _ = case
    return f"{shape[3]}->{o} {kk}x{kk}/{s} at {shape[1]}x{shape[2]}"


def bench(target: Any, tiles: VnniTiles) -> dict[str, Any]:
    """Every kind's shapes x candidate tiles: milliseconds per call (or a mismatch)."""
    gen = np.random.default_rng(0)
    plan = {"int8_dense": (DENSE, DENSE_TILES), "int8_conv": (CONV, CONV_TILES),
            "wide_dense": (WIDE_DENSE, DENSE_TILES), "wide_conv": (WIDE_CONV, CONV_TILES)}
    results: dict[str, Any] = {}
    for kind, (shapes, candidates) in plan.items():
        wide, rows = kind.startswith("wide"), {}
        for case in shapes:
            if kind.endswith("dense"):
                make, args = _dense_case(*case, wide, gen, tiles)
                key, macs = "x".join(map(str, case)), case[0] * case[1] * case[2]
            else:
                make, args = _conv_case(case, wide, gen, tiles)
                key = _conv_key(case)
                macs = int(np.prod(args[-1].shape)) * case[2] ** 2 * case[0][3]
            rows[key] = {"macs": macs, **_variants(make, candidates, args, target, getattr(tiles, kind))}
            print(kind, key, flush=True)
        results[kind] = rows
    return results


#: ``--write`` replaces a CPU's tile only by one at least this much faster (geometric mean), so
#: that run-to-run noise does not churn the table.
MARGIN = 0.95


def _labels(rows: dict[str, Any]) -> list[str]:
    return [lb for lb in next(iter(rows.values())) if lb != "macs"]


def best_tiles(results: dict[str, Any], tiles: VnniTiles) -> dict[str, tuple[tuple[int, int], float]]:
    """Per kind, the tile to use and its geometric mean of time / the current tile's time over the
    shapes: the fastest (a tile that mismatched anywhere is out) if it beats the current tile by
    :data:`MARGIN`, else the current tile (1.0)."""
    best = {}
    for kind, rows in results.items():
        cur = "x".join(map(str, getattr(tiles, kind)))
        means = {lb: math.exp(sum(math.log(r[lb] / r[cur]) for r in rows.values()) / len(rows))
                 for lb in _labels(rows) if all(isinstance(r[lb], float) for r in rows.values())}
        label = min(means, key=means.__getitem__)
        label = label if means[label] <= MARGIN else cur
        best[kind] = (tuple(int(v) for v in label.split("x")), means[label])
    return best


def report(results: dict[str, Any], tiles: VnniTiles, cpu: str, mcpu: str, command: str, written: bool) -> str:
    row = f"its own row `[{tiles.cpu}]`" if tiles.cpu == mcpu else f"the `[{tiles.cpu}]` row (no row for `{mcpu}`)"
    lines = ["# VNNI hand-schedule tiles", "", "Produced by one run of:", "", "```sh", command, "```", "",
             f"on {cpu} (LLVM CPU `{mcpu}`), 2 threads, cold weights; milliseconds per call. Builds on this CPU "
             f"use {row} of `backends/x86/tiles.toml`. A tile is `rows x output "
             "blocks` (dense) or `columns x output blocks` (conv; the columns shrink to a divisor of the width), "
             "each block 16 int32 lanes, unrolled. Every variant's output equals the current tile's. The chosen "
             f"tile is the fastest by geometric mean over the shapes, if at least {1 - MARGIN:.0%} faster than the "
             "current one (else the current one stays).", ""]
    best = best_tiles(results, tiles)
    lines += ["| kind | current tile | chosen tile | its time / current (geometric mean) |", "|---|---|---|---:|"]
    for kind, (tile, mean) in best.items():
        cur = getattr(tiles, kind)
        lines.append(f"| {kind} | {cur[0]}x{cur[1]} | {tile[0]}x{tile[1]} | {mean:.3f} |")
    lines += ["", f"The chosen tiles {'were written as' if written else 'were not written to'} `[{mcpu}]`"
              f"{'' if written else ' (pass --write)'}.", ""]
    for kind, rows in results.items():
        labels = _labels(rows)
        lines += [f"## {kind}", "", f"| shape | {' | '.join(labels)} |", "|---|" + "---:|" * len(labels)]
        for shape, r in rows.items():
            cells = [f"{r[lb]:.3f}" if isinstance(r[lb], float) else r[lb] for lb in labels]
            lines.append(f"| {shape} | {' | '.join(cells)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write x86_tiles.md and .json here")
    parser.add_argument("--write", action="store_true", help="make the best tiles this CPU's row of backends/x86/tiles.toml")
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "2")
    target_data = load_target("x86-host")
    target = backend_for(target_data).tvm_target(target_data)
    mcpu, tiles = str(target.attrs.get("mcpu", "?")), target_tiles(target)
    results = bench(target, tiles)
    if args.write:
        chosen = {kind: tile for kind, (tile, _) in best_tiles(results, tiles).items()}
        source = f"{host_cpu_name()}, 2 threads, bench_tiles {datetime.date.today().isoformat()}"
        write_row(VnniTiles(**chosen, cpu=mcpu, source=source))
    command = "TVM_NUM_THREADS=2 .venv/bin/python -m lcpaq.tools.bench_tiles " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(results, tiles, host_cpu_name(), mcpu, command, args.write)
    print(text)
    if args.out:
        write_results(args.out, "x86_tiles", {"cpu": host_cpu_name(), "llvm_mcpu": mcpu, "tiles_row": tiles.cpu, **results}, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
