"""Tuned fp32 vs tuned int8 (AVX-512 VNNI) kernels on this machine, in one run.

Kernels: dense 128x768x768 and a 64->64 3x3 conv (stride 1, pad 1) on a 1x56x56 NHWC input.
Both precisions are tuned with MetaSchedule for the same number of trials. The int8 kernels are
the deployable ones (u8 x s8 -> s32 on ``vpdpbusd`` with fused per-channel requantization to u8),
checked bit-exact against ``lcpaq.backends.common.integer_ref`` before they are timed.

    .venv/bin/python -m lcpaq.tools.bench_int8_kernels --trials 48 --out docs/int8_kernels.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lcpaq.backends.common import gemm_te
from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86 import tune as tt
from lcpaq.backends.x86.fp32 import fp32_conv_func, fp32_dense_func
from lcpaq.backends.x86.vnni import Kernel, host_target, pack_weight, to_tvm

DENSE = (128, 768, 768)
CONV = ((1, 56, 56, 64), 64, 3)  # NHWC input, out channels, kernel (stride 1, pad 1)
#: The TVM target the kernels are tuned and built for: this host's CPU.
TARGET = host_target()


def _time(kernel: Kernel, args: list) -> float:
    return kernel.time_ms(*args, repeat=20, number=10)


def bench_dense(trials: int, gen: torch.Generator) -> dict[str, float]:
    m, n, k = DENSE
    x = torch.randint(0, 256, (m, k), generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    b = torch.randint(-5000, 5000, (n,), generator=gen, dtype=torch.int32)
    mult, shift = torch.randint(2**30, 2**31 - 1, (n,), generator=gen), torch.full((n,), 40)
    params = [to_tvm(a) for a in gemm_te.channel_params(gemm_te.bias_eff(w, 3, b), mult, shift, n, n)]
    y8 = to_tvm(np.zeros((m, n), np.uint8))
    int8_args = [to_tvm(x, "uint8"), to_tvm(pack_weight(w)), *params, to_tvm(gemm_te.Requant(3).qp(3)), y8]
    int8 = tt.tune(t8.qdense_func(m, n, k), trials, int8=True, target=TARGET)
    int8(*int8_args)
    if not torch.equal(torch.from_numpy(y8.numpy()), ir.dense(x, 3, w, b, mult, shift, 3)):
        raise AssertionError("tuned int8 dense is not bit-exact against integer_ref")
    fp32 = tt.tune(fp32_dense_func(m, n, k), trials, int8=False, target=TARGET)
    f_args = [to_tvm(x.float().numpy()), to_tvm(w.float().T.contiguous().numpy()), to_tvm(np.zeros((m, n), np.float32))]
    return {"ops": 2.0 * m * n * k, "int8_ms": _time(int8, int8_args), "fp32_ms": _time(fp32, f_args), "vnni": float("vpdpbusd" in int8.asm)}


def bench_conv(trials: int, gen: torch.Generator) -> dict[str, float]:
    shape, o, kk = CONV
    bsz, h, w_, c = shape
    x = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32)
    w = torch.randint(-127, 128, (o, c, kk, kk), generator=gen).to(torch.int8)
    mult, shift = torch.randint(2**30, 2**31 - 1, (o,), generator=gen), torch.full((o,), 41)
    params = [to_tvm(a) for a in gemm_te.channel_params(gemm_te.bias_eff(w, 5, None), mult, shift, o, o)]
    y8 = to_tvm(np.zeros((bsz, h, w_, o), np.uint8))
    int8_args = [to_tvm(x, "uint8"), to_tvm(t8.pack_conv_weight(w)), *params, to_tvm(gemm_te.Requant(7).qp(5)), y8]
    int8 = tt.tune(t8.qconv2d_func(shape, o, kk, 1, 1), trials, int8=True, target=TARGET)
    int8(*int8_args)
    want = ir.conv2d(x.permute(0, 3, 1, 2), 5, w, None, mult, shift, 7, padding=1)
    if not torch.equal(torch.from_numpy(y8.numpy()).permute(0, 3, 1, 2), want):
        raise AssertionError("tuned int8 conv2d is not bit-exact against integer_ref")
    fp32 = tt.tune(fp32_conv_func(shape, o, kk, 1, 1), trials, int8=False, target=TARGET)
    w_hwio = w.float().permute(2, 3, 1, 0).contiguous().numpy()
    f_args = [to_tvm(x.float().numpy()), to_tvm(w_hwio), to_tvm(np.zeros((bsz, h, w_, o), np.float32))]
    ops = 2.0 * bsz * h * w_ * o * c * kk * kk
    return {"ops": ops, "int8_ms": _time(int8, int8_args), "fp32_ms": _time(fp32, f_args), "vnni": float("vpdpbusd" in int8.asm)}


def _machine() -> str:
    from lcpaq.hw_targets.host import host_cpu_name

    config = dict(TARGET.export())
    return f"{host_cpu_name()}, {config.get('num-cores')} cores, TVM target llvm -mcpu={config.get('mcpu')}"


def report(rows: dict[str, dict[str, float]], trials: int, command: str, seconds: float) -> str:
    lines = [
        "# Int8 (VNNI) vs fp32 kernels, tuned with MetaSchedule",
        "",
        f"Command (from the repository root, {seconds / 60:.1f} min): `{command}`",
        "",
        f"Machine: {_machine()}; {trials} trials per kernel.",
        "int8 = u8 x s8 -> s32 on `vpdpbusd` (our `lcpaq_dot_16x4_vnni` intrinsic) with fused per-channel",
        "requantization to u8, checked bit-exact against `integer_ref`; fp32 = plain float32 kernel.",
        "GOPS counts 2 ops per multiply-accumulate for both.",
        "",
        "| kernel | fp32 ms | fp32 GFLOP/s | int8 ms | int8 GOPS | int8 speed-up | vpdpbusd |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        f_g, i_g = r["ops"] / r["fp32_ms"] / 1e6, r["ops"] / r["int8_ms"] / 1e6
        lines.append(
            f"| {name} | {r['fp32_ms']:.3f} | {f_g:.1f} | {r['int8_ms']:.3f} | {i_g:.1f} | {r['fp32_ms'] / r['int8_ms']:.2f}x | {'yes' if r['vnni'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48, help="MetaSchedule trials per kernel (default 48)")
    parser.add_argument("--out", type=Path, default=None, help="write a markdown report here")
    parser.add_argument("--only", choices=["dense", "conv"], default=None, help="run one kernel only")
    args = parser.parse_args(argv)
    if args.trials < 1:
        print("error: --trials must be >= 1", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    rows: dict[str, dict[str, float]] = {}
    if args.only in (None, "dense"):
        rows["dense 128x768x768"] = bench_dense(args.trials, gen)
    if args.only in (None, "conv"):
        rows["conv 64->64 3x3, 56x56"] = bench_conv(args.trials, gen)
    command = ".venv/bin/python -m lcpaq.tools.bench_int8_kernels " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(rows, args.trials, command.strip(), time.time() - start)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
