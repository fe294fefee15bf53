"""The measured int8 peak of this x86 host: ``vpdpbusd`` (AVX-512 VNNI, 64 u8 x s8 MACs per
instruction on a 512-bit register) issued back to back on independent accumulators by every
thread, so neither latency nor memory limits it; the result is the roofline the end-to-end
benchmark rates lcpaq's int8 builds against.

The kernel is C with intrinsics, compiled here by the system C compiler (``cc``) with OpenMP;
a host without one, or without AVX-512 VNNI, gets a one-line ConfigError.

    .venv/bin/python -m lcpaq.tools.vnni_peak --threads 2
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lcpaq.hw_targets.host import host_cpu_name, host_features
from lcpaq.ir.errors import ConfigError

#: Independent accumulators per thread: more than latency (4-5 cycles) x issue width (2) needs.
ACCUMULATORS = 12

def _source(acc: int) -> str:
    """The peak kernel with ``acc`` accumulators as named variables (registers, not an array
    the compiler may keep in memory)."""
    decl = "\n".join(f"    __m512i c{j} = _mm512_set1_epi32({j} + seed);" for j in range(acc))
    step = "\n".join(f"        c{j} = _mm512_dpbusd_epi32(c{j}, a, b);" for j in range(acc))
    total = " + ".join(f"_mm512_reduce_add_epi32(c{j})" for j in range(acc))
    return f"""
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

static long long kernel(long iters, int seed) {{
{decl}
    __m512i a = _mm512_set1_epi8((char)(seed | 1)), b = _mm512_set1_epi8(3);
    for (long i = 0; i < iters; i++) {{
{step}
        __asm__ volatile("" : "+v"(a));  /* keeps the loop from being folded */
    }}
    return (long long)({total});
}}

int main(int argc, char **argv) {{
    long iters = atol(argv[1]);
    int threads = atoi(argv[2]);
    long long sink = 0;
    kernel(iters / 10, 1);  /* warm up: clocks and AVX-512 license settle */
    double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads) reduction(+:sink)
    sink += kernel(iters, omp_get_thread_num());
    double t = omp_get_wtime() - t0;
    printf("%.6f %lld\\n", t, sink);
    return 0;
}}
"""


def measure_peak(threads: int = 2, iters: int = 20_000_000, runs: int = 5) -> dict[str, float | str | int]:
    """Int8 MACs per second of this host over ``threads`` threads (best of ``runs``), with how it
    was measured. Raises ConfigError (one line) without a C compiler or AVX-512 VNNI."""
    if "avx512_vnni" not in host_features():
        raise ConfigError(f"{host_cpu_name()} has no AVX-512 VNNI: no vpdpbusd peak to measure")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise ConfigError("measuring the VNNI peak needs a C compiler (cc or gcc) on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.c", Path(tmp) / "peak"
        src.write_text(_source(ACCUMULATORS))
        build = subprocess.run([cc, "-O2", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-fopenmp", str(src), "-o", str(exe)],
                               capture_output=True, text=True)
        if build.returncode != 0:
            raise ConfigError(f"the VNNI peak kernel does not compile with {cc}: {build.stderr.strip().splitlines()[-1]}")
        seconds = min(float(subprocess.run([str(exe), str(iters), str(threads)], capture_output=True, text=True,
                                           check=True).stdout.split()[0]) for _ in range(runs))
    macs = threads * iters * ACCUMULATORS * 64
    return {"int8_macs_per_s": macs / seconds, "threads": threads,
            "how": f"{threads} threads x {iters} iterations x {ACCUMULATORS} independent vpdpbusd zmm (64 MACs each), best of {runs}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    try:
        peak = measure_peak(args.threads)
    except ConfigError as exc:
        print(f"vnni_peak: error: {exc}", file=sys.stderr)
        return 2
    print(f"{host_cpu_name()}: {peak['int8_macs_per_s'] / 1e9:.1f} G int8 MAC/s ({peak['how']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
