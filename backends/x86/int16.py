"""Wide (16-bit) integer dense and conv2d on AVX-512 VNNI ``vpdpwssd`` (int16 pairs -> int32),
exact in int64: the kernels of :mod:`lcpaq.backends.common.wide_te` with their x86 schedules.

TVM 0.27 has no int16 dot-product intrinsic for x86; :data:`WIDE_INTRIN` is ours: two int16
activation codes broadcast to all 16 lanes, a ``16 x 2`` int16 weight block, 16 int32 sums, one
``vpdpwssd`` (pairs multiplied exactly, sum wrapping: the chunk sizes keep it from wrapping).

Schedules: tiles of rows (dense) or output columns (conv) x output-channel blocks, parallel over
tiles (dense) or ``(n, oh)`` (conv); per tile, for every part and chunk, the chunk's int32 sums
are computed in a tile-sized buffer (tensorized, unrolled) and added to the int64 accumulators;
the requantization epilogue is fused per tile.
"""
from __future__ import annotations

from typing import Any

import tvm
from tvm import s_tir
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from lcpaq.backends.common import gemm_schedule
from lcpaq.backends.common.wide_te import DEPTH, wide_conv2d_func, wide_dense_func
from lcpaq.backends.x86.tiles import VnniTiles, target_tiles
from lcpaq.backends.x86.vnni import LANES

#: Name under which the int16 pair intrinsic is registered.
WIDE_INTRIN = "lcpaq_dot_16x2_vpdpwssd"


@T.prim_func(s_tir=True)
def _dot_16x2_desc(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((16, 2), "int16", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        for i in T.serial(0, 16):
            for k in T.serial(0, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")


@T.prim_func(s_tir=True)
def _dot_16x2_impl(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((16, 2), "int16", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        a_i32 = T.reinterpret(A.vload([0], "int16x2"), dtype="int32")
        a_i16x32 = T.reinterpret(T.broadcast(a_i32, 16), dtype="int16x32")
        b_i16x32 = B.vload([0, 0], dtype="int16x32")
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpwssd.512"),
            C.vload([0], dtype="int32x16"),
            a_i16x32,
            b_i16x32,
            dtype="int32x16",
        )


def register_wide_intrinsic() -> str:
    """Register :data:`WIDE_INTRIN` once (idempotent) and return its name."""
    if TensorIntrin.get(WIDE_INTRIN, allow_missing=True) is None:
        TensorIntrin.register(WIDE_INTRIN, _dot_16x2_desc, _dot_16x2_impl)
    return WIDE_INTRIN


register_wide_intrinsic()


def qdense_func(m: int, n: int, k: int, act_dtype: str, w_bits: int, out_dtype: str = "int16") -> tvm.tirx.PrimFunc:
    """:func:`~lcpaq.backends.common.wide_te.wide_dense_func` with 16 lanes (n % 16 == k % 2 == 0)."""
    return wide_dense_func(m, n, k, LANES, act_dtype, w_bits, out_dtype)


def qconv2d_func(shape: tuple[int, int, int, int], out_channels: int, kernel: int | tuple[int, int], stride: int,
                 padding: int, act_dtype: str, w_bits: int, out_dtype: str = "int16") -> tvm.tirx.PrimFunc:
    """:func:`~lcpaq.backends.common.wide_te.wide_conv2d_func` with 16 lanes."""
    return wide_conv2d_func(shape, out_channels, kernel, stride, padding, LANES, act_dtype, w_bits, out_dtype)


def _tensorize_partial(sch: s_tir.Schedule, part: Any, rows: Any, cols: Any, r: Any, window: tuple[Any, ...] = ()) -> None:
    """The chunk block computed at its tile: ``[window,] r/2, rows, col blocks, [16 x 2 -> vpdpwssd]``."""
    cm, cl = sch.split(cols, [None, LANES])
    ro, ri = sch.split(r, [None, DEPTH])
    sch.reorder(*window, ro, rows, cm, cl, ri)
    sch.decompose_reduction(part, window[0] if window else ro)
    sch.unroll(rows)
    sch.unroll(cm)
    sch.tensorize(cl, WIDE_INTRIN)


def _unroll_update(sch: s_tir.Schedule, rows: Any, cols: Any) -> None:
    """The int64 update of a tile: rows and output blocks unrolled, so that each 16-lane step is
    a contiguous loop LLVM vectorizes (TIR cannot vectorize inside the reduction)."""
    cm, _ = sch.split(cols, [None, LANES])
    sch.unroll(rows)
    sch.unroll(cm)


def _widen_parallel(sch: s_tir.Schedule, name: str, spatial: int) -> None:
    try:
        block = sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - int16 activations: no such stage
        return
    loops = sch.get_loops(block)
    sch.parallel(sch.fuse(*loops[:spatial]))
    if int(sch.get(loops[-1]).extent) % LANES == 0:
        sch.vectorize(loops[-1])


def schedule_qdense(func: tvm.tirx.PrimFunc, tiles: VnniTiles | None = None) -> s_tir.Schedule:
    """Hand schedule of :func:`qdense_func`: ``(row tiles, column tiles) parallel, part, chunk,
    [chunk sums, tensorized], int64 update (vectorized)``, epilogue fused per tile; the tile
    (most rows x output blocks) is ``tiles.wide_dense``, this host's row by default."""
    max_rows, max_blocks = (tiles or target_tiles(None)).wide_dense
    sch = s_tir.Schedule(func)
    acc, part = sch.get_sblock("acc"), sch.get_sblock("partial")
    i, j, rp, rc = sch.get_loops(acc)
    m, n = int(sch.get(i).extent), int(sch.get(j).extent)
    rows = gemm_schedule.dense_row_tile(m, max_rows)
    blocks = max_blocks if (n // LANES) % max_blocks == 0 else 1
    io, ii = sch.split(i, [None, rows])
    jo, ji = sch.split(j, [None, blocks * LANES])
    sch.reorder(io, jo, rp, rc, ii, ji)
    fused = sch.fuse(io, jo)
    sch.parallel(fused)
    epilogue = sch.get_sblock("requant")
    sch.reverse_compute_at(epilogue, fused)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    sch.compute_at(part, rc, preserve_unit_loops=True)
    sch.decompose_reduction(acc, rp)
    _unroll_update(sch, ii, ji)
    loops = sch.get_loops(part)
    _tensorize_partial(sch, part, loops[-3], loops[-2], loops[-1])
    _widen_parallel(sch, "widen", 1)
    return sch


def schedule_qconv2d(func: tvm.tirx.PrimFunc, width: int, tiles: VnniTiles | None = None) -> s_tir.Schedule:
    """Hand schedule of :func:`qconv2d_func`: ``(n, oh) parallel, ow tiles, o tiles, part, kh,
    kw, chunk, [chunk sums, tensorized], int64 update``, padding per output row, epilogue fused;
    the tile (most columns x output blocks) is ``tiles.wide_conv``, this host's row by default."""
    max_cols, max_blocks = (tiles or target_tiles(None)).wide_conv
    sch = s_tir.Schedule(func)
    acc, part = sch.get_sblock("acc"), sch.get_sblock("partial")
    n, oh, ow, o, *reduction = sch.get_loops(acc)  # rp, rh, rw, rc; or rp alone (the window in one chunk)
    channels = int(sch.get(o).extent)
    tile = gemm_schedule.col_tile(width, max_cols)
    blocks = max_blocks if (channels // LANES) % max_blocks == 0 else 1
    owo, owi = sch.split(ow, [None, tile])
    oo, oi = sch.split(o, [None, blocks * LANES])
    sch.reorder(n, oh, owo, oo, *reduction, owi, oi)
    sch.parallel(sch.fuse(n, oh))
    epilogue = sch.get_sblock("requant")
    sch.reverse_compute_at(epilogue, oo)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    sch.compute_at(part, reduction[-1], preserve_unit_loops=True)
    sch.decompose_reduction(acc, reduction[0])
    _unroll_update(sch, owi, oi)
    pad = sch.get_sblock("pad")
    sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))
    loops = sch.get_loops(part)
    if len(reduction) == 1:  # partial loops ..., ow, o, rh, rw, r
        _tensorize_partial(sch, part, loops[-5], loops[-4], loops[-1], (loops[-3], loops[-2]))
    else:
        _tensorize_partial(sch, part, loops[-3], loops[-2], loops[-1])
    return sch
