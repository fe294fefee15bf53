"""Hand schedule of the CUDA GEMM kernels (:mod:`lcpaq.backends.cuda.gemm`) on WMMA tensor cores.

A thread block computes a ``BM x BN`` tile of the output with ``warps_m x warps_n`` warps, each
warp ``frags_m x frags_n`` 16 x 16 accumulator fragments. The reduction advances ``BK`` at a
time: the block's activation and weight slices are copied to shared memory by all its threads
(the activation slice is computed there directly for a conv: the im2col view is never stored;
rows are padded by 16 bytes so that ldmatrix reads them from distinct banks), each warp loads
its fragments and multiplies on the tensor cores. The accumulators go to shared
memory and the block's threads requantize them to global memory, so a kernel writes its int8
(or int32) codes once. :func:`tiles_for` picks the tile from the GEMM's shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import s_tir

from lcpaq.backends.cuda import wmma

WARP = 32


@dataclass(frozen=True)
class Tiles:
    """A block tile: ``frags_m x frags_n`` fragments a warp, ``warps_m x warps_n`` warps a block,
    ``k_frags`` fragments of the reduction per shared-memory stage."""

    warps_m: int
    warps_n: int
    frags_m: int
    frags_n: int
    k_frags: int

    @property
    def block_m(self) -> int:
        return self.warps_m * self.frags_m * wmma.TILE

    @property
    def block_n(self) -> int:
        return self.warps_n * self.frags_n * wmma.TILE

    @property
    def threads(self) -> int:
        return self.warps_m * self.warps_n * WARP


def block_rows(m: int) -> int:
    """Rows of the block tile for a GEMM of ``m`` rows (16 to 128): what ``M`` is padded to."""
    rows = 16
    while rows < min(m, 128):
        rows *= 2
    return rows


def padded_gemm(rows: int, n: int, k: int) -> tuple[int, int, int]:
    """``(M, N, K)`` of the kernel for a GEMM of ``rows x n x k``: rows padded to the block tile,
    output channels and reduction to the 16 of a fragment."""
    return -(-rows // block_rows(rows)) * block_rows(rows), -(-n // wmma.TILE) * wmma.TILE, -(-k // wmma.TILE) * wmma.TILE


def tiles_for(m: int, n: int, k: int) -> Tiles:
    """The tile of an ``m x n x k`` GEMM (``m`` a multiple of :func:`block_rows`, ``n`` and ``k``
    of 16): up to 128 x 64 a block, 2 x 2 fragments a warp, 64 of the reduction a stage."""
    bm = block_rows(m)
    bn = next(b for b in (64, 32, 16) if n % b == 0)
    frags_m, frags_n = min(2, bm // 16), min(2, bn // 16)
    k_frags = next(f for f in (4, 2, 1) if k % (16 * f) == 0)
    return Tiles(bm // (16 * frags_m), bn // (16 * frags_n), frags_m, frags_n, k_frags)


def _cooperative_copy(sch: s_tir.Schedule, block: s_tir.SBlockRV, tiles: Tiles, vector: int) -> None:
    """Spread a shared-memory copy block's two innermost loops over the block's threads."""
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops[-2:])
    if vector > 1:
        _, ty, tx, vec = sch.split(fused, [None, tiles.warps_m * tiles.warps_n, WARP, vector])
        sch.vectorize(vec)
    else:
        _, ty, tx = sch.split(fused, [None, tiles.warps_m * tiles.warps_n, WARP])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")


def stage_activations(sch: s_tir.Schedule, gemm: s_tir.SBlockRV) -> tuple[s_tir.SBlockRV, bool]:
    """The block that stages a GEMM's activations in shared memory, and whether it gathers them:
    a conv's ``im2col`` block itself (computed there, never stored), else a copy of a dense
    layer's input."""
    try:
        im2col = sch.get_sblock("im2col")
    except Exception:  # noqa: BLE001 (a dense layer reads its activations directly)
        return sch.cache_read(gemm, 0, "shared"), False
    sch.set_scope(im2col, 0, "shared")
    return im2col, True


def schedule_gemm(func: tvm.tirx.PrimFunc, tiles: Tiles | None = None) -> s_tir.Schedule:
    """Schedule a GEMM kernel (blocks ``gemm``, ``requant`` and, for a conv, ``im2col``)."""
    sch = s_tir.Schedule(func)
    gemm = sch.get_sblock("gemm")
    i, j, r = sch.get_loops(gemm)
    m, n, k = (int(sch.get(loop).extent) for loop in (i, j, r))
    t = tiles or tiles_for(m, n, k)
    if m % t.block_m or n % t.block_n or k % (16 * t.k_frags):
        raise ValueError(f"a {m}x{n}x{k} GEMM is not a whole number of {t} tiles")
    i0, i1, i2, i3 = sch.split(i, [None, t.warps_m, t.frags_m, 16])
    j0, j1, j2, j3 = sch.split(j, [None, t.warps_n, t.frags_n, 16])
    r0, r1, r2 = sch.split(r, [None, t.k_frags, 16])
    sch.reorder(i0, j0, i1, j1, r0, r1, i2, j2, i3, j3, r2)
    block_xy = sch.fuse(i0, j0)
    sch.bind(block_xy, "blockIdx.x")
    warp = sch.fuse(i1, j1)
    sch.bind(warp, "threadIdx.y")

    # operands: global -> shared (all threads) -> fragments (each warp)
    a_shared, gathered = stage_activations(sch, gemm)
    sch.compute_at(a_shared, r0)
    _cooperative_copy(sch, a_shared, t, 1 if gathered else 16)
    b_shared = sch.cache_read(gemm, 1, "shared")
    sch.compute_at(b_shared, r0)
    _cooperative_copy(sch, b_shared, t, 16)
    # rows padded by 16 bytes: the 8 rows an ldmatrix reads fall in distinct shared-memory banks
    bk = 16 * t.k_frags
    for block in (a_shared, b_shared):
        sch.storage_align(block, 0, axis=0, factor=bk, offset=16 % bk)
    a_frag = sch.cache_read(gemm, 0, "wmma.matrix_a")
    b_frag = sch.cache_read(gemm, 1, "wmma.matrix_b")
    sch.compute_at(a_frag, r1)
    sch.compute_at(b_frag, r1)

    # accumulators: fragments -> shared; the epilogue requantizes the block's tile
    acc = sch.cache_write(gemm, 0, "wmma.accumulator")
    sch.reverse_compute_at(acc, warp)
    sch.set_scope(acc, 0, "shared.dyn")  # its own allocation: never merged with the int8 operands
    requant = sch.get_sblock("requant")
    sch.reverse_compute_at(requant, block_xy)
    _cooperative_copy(sch, requant, t, 1)

    # tensorize
    init = sch.decompose_reduction(gemm, r0)
    sch.tensorize(sch.get_loops(init)[-2], wmma.FILL_INTRIN)
    sch.tensorize(i3, wmma.SYNC_INTRIN)
    for frag, intrin in ((a_frag, wmma.LOAD_A_INTRIN), (b_frag, wmma.LOAD_B_INTRIN)):
        rows, cols = sch.get_loops(frag)[-2:]
        outer, inner = sch.split(rows, [None, 16])
        sch.reorder(outer, inner, cols)
        sch.tensorize(inner, intrin)
    rows, cols = sch.get_loops(acc)[-2:]
    ro, ri = sch.split(rows, [None, 16])
    co, ci = sch.split(cols, [None, 16])
    sch.reorder(ro, co, ri, ci)
    sch.tensorize(ri, wmma.STORE_INTRIN)
    return sch
