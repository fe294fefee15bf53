"""Hand schedules of the blocked GEMM kernels of :mod:`lcpaq.backends.common.gemm_te` for a CPU
with a dot-product tensor intrinsic: the inner ``lanes x depth`` block tensorized with the
family's intrinsic (x86 ``vpdpbusd``, Arm ``sdot``), the outer loops parallel, the
requantization epilogue fused per tile and vectorized."""
from __future__ import annotations

from typing import Any

import tvm
from tvm import s_tir

from lcpaq.backends.common.gemm_te import Blocking


def tensorize_dense_block(sch: s_tir.Schedule, block: Any, blocking: Blocking, intrin: str, row_tile: int = 4,
                          epilogue: Any = None, col_blocks: int = 1, unroll: bool = False) -> None:
    """Tile a ``[i, j, k]`` dense block, tensorize its ``lanes x depth`` core with ``intrin`` and
    parallelise the outer loops. An elementwise ``epilogue`` block reading the result is
    computed inside each ``(i_o, j_o)`` tile and vectorized (it must be placed before tensorize).

    Loop order: ``(i_o, j_o) parallel, k_o, i_i, j_m, [lanes x depth -> intrinsic]``: each
    tile keeps ``rows x col_blocks`` accumulators, each loaded weight block serving ``rows``
    rows (:func:`dense_row_tile` of at most ``row_tile``) and each broadcast activation
    ``col_blocks`` output blocks (1 where that does not divide the output blocks). ``unroll`` unrolls ``i_i`` and
    ``j_m``, so the accumulators are independent instructions the core can overlap."""
    i, j, k = sch.get_loops(block)
    m, n = int(sch.get(i).extent), int(sch.get(j).extent)
    row_tile = dense_row_tile(m, row_tile)
    col_blocks = col_blocks if (n // blocking.lanes) % col_blocks == 0 else 1
    io, ii = sch.split(i, [None, row_tile])
    jo, jm, ji = sch.split(j, [None, col_blocks, blocking.lanes])
    ko, ki = sch.split(k, [None, blocking.depth])
    sch.reorder(io, jo, ko, ii, jm, ji, ki)
    fused = sch.fuse(io, jo)
    sch.parallel(fused)
    if epilogue is not None:
        sch.reverse_compute_at(epilogue, fused)
        sch.vectorize(sch.get_loops(epilogue)[-1])
    sch.decompose_reduction(block, ko)
    if unroll:
        sch.unroll(ii)
        sch.unroll(jm)
    sch.tensorize(ji, intrin)


def dense_row_tile(m: int, most: int = 8) -> int:
    """Rows a dense tile computes together: the largest divisor of ``m`` among ``most``,
    ``most / 2``, ... 1."""
    tile = max(most, 1)
    while m % tile:
        tile = max(tile // 2, 1)
    return tile


def schedule_qdense(func: tvm.tirx.PrimFunc, blocking: Blocking, intrin: str, row_tile: int = 4, col_blocks: int = 1,
                    unroll: bool = False) -> s_tir.Schedule:
    """Schedule of :func:`gemm_te.qdense_func`: tensorized core, epilogue fused per tile (tile
    options as :func:`tensorize_dense_block`)."""
    sch = s_tir.Schedule(func)
    tensorize_dense_block(sch, sch.get_sblock("dense"), blocking, intrin, row_tile, sch.get_sblock("requant"), col_blocks, unroll)
    return sch


def schedule_qconv2d(func: tvm.tirx.PrimFunc, blocking: Blocking, intrin: str, col_tile: int = 4, col_blocks: int = 1,
                     unroll: bool = False) -> s_tir.Schedule:
    """Schedule of :func:`gemm_te.qconv2d_func`: ``(n, oh) parallel, ow/tile, o/(lanes x
    col_blocks), kh, kw, c/depth, tile of ow, col_blocks, [lanes x depth -> intrinsic]``;
    padding computed per output row, epilogue fused. ``col_tile`` output columns share each
    loaded weight block and ``col_blocks`` output-channel blocks each broadcast activation (1
    where that does not divide the blocks): ``col_tile x col_blocks`` accumulators a tile,
    unrolled with ``unroll`` so the core can overlap them."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("conv")
    n, oh, ow, o, rh, rw, rc = sch.get_loops(block)
    width, channels = int(sch.get(ow).extent), int(sch.get(o).extent)
    col_tile = col_tile if width % col_tile == 0 else 1
    col_blocks = col_blocks if (channels // blocking.lanes) % col_blocks == 0 else 1
    owo, owi = sch.split(ow, [None, col_tile])
    oo, om, oi = sch.split(o, [None, col_blocks, blocking.lanes])
    rco, rci = sch.split(rc, [None, blocking.depth])
    sch.reorder(n, oh, owo, oo, rh, rw, rco, owi, om, oi, rci)
    sch.parallel(sch.fuse(n, oh))
    epilogue = sch.get_sblock("requant")
    sch.reverse_compute_at(epilogue, oo)
    sch.vectorize(sch.get_loops(epilogue)[-1])
    pad = sch.get_sblock("pad")
    sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))
    sch.decompose_reduction(block, rh)
    if unroll:
        sch.unroll(owi)
        sch.unroll(om)
    sch.tensorize(oi, intrin)
    return sch


def col_tile(width: int, most: int) -> int:
    """Output columns computed together (each loaded weight vector is reused across them, so a
    tile's accumulators must fit in registers): the largest divisor of ``width`` up to ``most``."""
    return max(d for d in range(1, most + 1) if width % d == 0)
