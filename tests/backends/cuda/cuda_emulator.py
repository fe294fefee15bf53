"""Run a generated CUDA GEMM kernel on this CPU, to check the tensor-core schedule bit-exact
without a GPU.

The kernel's own CUDA C++ (what nvcc compiles for the GPU) is compiled by g++ against a small
shim: every thread of a block is a ``std::thread``, ``__syncthreads()`` a ``std::barrier``,
``__shared__`` arrays are shared by the block's threads (blocks run one after another), and the
WMMA calls compute what the CUDA programming guide defines for them (fragments of 16 x 16; a
warp-collective call is computed whole by each of its threads, which all pass the same
pointers; ``__dp4a`` sums 4 signed byte products). It checks the schedule (tiling, shared-memory staging, synchronization, fragment
indexing, the fused epilogue), not the hardware: the WMMA semantics are the guide's.
"""
from __future__ import annotations

import ctypes
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

SHIM = r"""
#include <barrier>
#include <cstdint>
#include <thread>
#include <vector>
#define __global__
#define __launch_bounds__(n)
#define __shared__ static
#define __align__(n) alignas(n)
struct dim3_t { int x = 0, y = 0, z = 0; };
static thread_local dim3_t threadIdx, blockIdx;
static std::barrier<>* lcpaq_barrier;
static inline void __syncthreads() { lcpaq_barrier->arrive_and_wait(); }
alignas(64) static unsigned char lcpaq_dyn_smem[1 << 20];
struct int4 { int x, y, z, w; };
static inline int __dp4a(int a, int b, int c) {  // 4 signed bytes of a times those of b, plus c
  int64_t s = c;
  for (int i = 0; i < 4; ++i) s += (int)(signed char)(a >> (8 * i)) * (int)(signed char)(b >> (8 * i));
  return (int)(uint32_t)s;
}
template <class T> static inline T max(T a, T b) { return a > b ? a : b; }
template <class T> static inline T min(T a, T b) { return a < b ? a : b; }
namespace nvcuda { namespace wmma {
struct matrix_a {}; struct matrix_b {}; struct accumulator {}; struct row_major {}; struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment { T x[256]; };
template <class U, class T, class L> static void fill_fragment(fragment<U, 16, 16, 16, T, L>& f, float v) {
  for (int i = 0; i < 256; ++i) f.x[i] = (T)v;
}
static void load_matrix_sync(fragment<matrix_a, 16, 16, 16, signed char, row_major>& f, const signed char* p, unsigned ldm) {
  for (int i = 0; i < 16; ++i) for (int k = 0; k < 16; ++k) f.x[i * 16 + k] = p[i * ldm + k];
}
static void load_matrix_sync(fragment<matrix_b, 16, 16, 16, signed char, col_major>& f, const signed char* p, unsigned ldm) {
  for (int k = 0; k < 16; ++k) for (int n = 0; n < 16; ++n) f.x[k * 16 + n] = p[n * ldm + k];  // element (k, n)
}
static void mma_sync(fragment<accumulator, 16, 16, 16, int>& d, const fragment<matrix_a, 16, 16, 16, signed char, row_major>& a,
                     const fragment<matrix_b, 16, 16, 16, signed char, col_major>& b, const fragment<accumulator, 16, 16, 16, int>& c) {
  int out[256];
  for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) {
    int64_t s = c.x[i * 16 + j];
    for (int k = 0; k < 16; ++k) s += (int)a.x[i * 16 + k] * (int)b.x[k * 16 + j];
    out[i * 16 + j] = (int)(uint32_t)s;
  }
  for (int i = 0; i < 256; ++i) d.x[i] = out[i];
}
static void store_matrix_sync(int* p, const fragment<accumulator, 16, 16, 16, int>& f, unsigned ldm, layout_t) {
  for (int i = 0; i < 16; ++i) for (int j = 0; j < 16; ++j) p[i * ldm + j] = f.x[i * 16 + j];
}
}}  // namespace nvcuda::wmma
"""

LAUNCH = r"""
extern "C" void lcpaq_launch(int grid, int tx, int ty, {params}) {{
  for (int block = 0; block < grid; ++block) {{
    std::barrier<> bar(tx * ty);
    lcpaq_barrier = &bar;
    std::vector<std::thread> threads;
    for (int y = 0; y < ty; ++y) for (int x = 0; x < tx; ++x)
      threads.emplace_back([=] {{ threadIdx.x = x; threadIdx.y = y; blockIdx.x = block; main_kernel({args}); }});
    for (auto& t : threads) t.join();
  }}
}}
"""

_KERNEL = re.compile(r'extern "C" __global__ void __launch_bounds__\(\d+\) main_kernel\(([^)]*)\) \{')


class EmulatedKernel:
    """The ``main_kernel`` of a CUDA module's source, compiled for this CPU."""

    def __init__(self, source: str, workdir: Path | None = None) -> None:
        match = _KERNEL.search(source)
        if match is None:
            raise ValueError("no main_kernel definition in the CUDA source")
        body = source[match.start():]
        body = re.sub(r"extern __shared__ (alignas\(\d+\)|__align__\(\d+\)) (\w+) (\w+)\[\];",
                      r"\2* \3 = (\2*)lcpaq_dyn_smem;", body)
        body = re.sub(r"__shared__ alignas\((\d+)\) ", r"alignas(\1) static ", body)
        self.params = [p.strip() for p in match.group(1).split(",")]
        names = [p.split()[-1] for p in self.params]
        code = SHIM + body + LAUNCH.format(params=", ".join(self.params), args=", ".join(names))
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="lcpaq-cuda-emu-"))
        src, lib = self.dir / "kernel.cc", self.dir / "kernel.so"
        src.write_text(code)
        subprocess.run(["g++", "-std=c++20", "-O1", "-fno-strict-aliasing", "-shared", "-fPIC", "-pthread", "-o", str(lib), str(src)],
                       check=True, capture_output=True, text=True)
        self.lib = ctypes.CDLL(str(lib))
        self.names = names

    def __call__(self, grid: int, threads: tuple[int, int], arrays: dict[str, np.ndarray]) -> None:
        """Launch ``grid`` blocks of ``threads`` = (x, y) threads on ``arrays`` (by parameter
        name without ``_ptr``; written in place)."""
        ptrs = [arrays[n.removesuffix("_ptr")].ctypes.data_as(ctypes.c_void_p) for n in self.names]
        self.lib.lcpaq_launch(ctypes.c_int(grid), ctypes.c_int(threads[0]), ctypes.c_int(threads[1]), *ptrs)
