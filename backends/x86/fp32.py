"""The x86 backend's fp32 kernels: NHWC conv2d (HWIO weights) and dense (weights K x N), hand
scheduled with 16 output channels vectorized. Layers left in float run on them in a build, and
``lcpaq profile`` times them, so a mixed-precision build costs what the latency table says;
MetaSchedule tunes the same functions.
"""
from __future__ import annotations

import tvm
from tvm import s_tir, te

from lcpaq.backends.common.gemm_schedule import col_tile
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.x86.vnni import LANES


def fp32_conv_func(shape: tuple[int, int, int, int], out_channels: int, kernel: int, stride: int, padding: int) -> tvm.tirx.PrimFunc:
    """NHWC float32 conv2d with HWIO weights (output channels innermost, so the 16 vectorized output
    channels load contiguously) and zero padding."""
    b, h, w_, c = shape
    x = te.placeholder(shape, "float32", name="X")
    wt = te.placeholder((kernel, kernel, c, out_channels), "float32", name="W")
    oh, ow = conv_out_size(h, kernel, stride, padding), conv_out_size(w_, kernel, stride, padding)
    xp = te.compute(
        (b, h + 2 * padding, w_ + 2 * padding, c),
        lambda n, i, j, ch: tvm.tirx.if_then_else(
            tvm.tirx.all(i >= padding, i < h + padding, j >= padding, j < w_ + padding),
            x[n, i - padding, j - padding, ch], tvm.tirx.const(0.0, "float32"),
        ),
        name="pad",
    )
    rh, rw, rc = te.reduce_axis((0, kernel), "rh"), te.reduce_axis((0, kernel), "rw"), te.reduce_axis((0, c), "rc")
    y = te.compute(
        (b, oh, ow, out_channels),
        lambda n, i, j, o: te.sum(xp[n, i * stride + rh, j * stride + rw, rc] * wt[rh, rw, rc, o], axis=[rh, rw, rc]),
        name="conv",
    )
    return te.create_prim_func([x, wt, y])


#: Most output columns an fp32 conv tile computes together.
MAX_COL_TILE = 8


def schedule_fp32_conv(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    """(n, oh) parallel, ow/t, o/16, kh, kw, c, t columns (:func:`col_tile`), 16 output channels
    vectorized (O % 16 == 0)."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("conv")
    n, oh, ow, o, rh, rw, rc = sch.get_loops(block)
    tile = col_tile(int(sch.get(ow).extent), MAX_COL_TILE)
    owo, owi = sch.split(ow, [None, tile])
    oo, oi = sch.split(o, [None, LANES])
    sch.reorder(n, oh, owo, oo, rh, rw, rc, owi, oi)
    sch.parallel(sch.fuse(n, oh))
    sch.vectorize(oi)
    sch.decompose_reduction(block, rh)
    pad = sch.get_sblock("pad")
    sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))
    return sch


def fp32_dense_func(m: int, n: int, k: int) -> tvm.tirx.PrimFunc:
    """``Y[m, n] = X[m, k] @ W[k, n]`` in float32; W is stored K x N so vectorized columns load contiguously."""
    x = te.placeholder((m, k), "float32", name="X")
    w = te.placeholder((k, n), "float32", name="W")
    r = te.reduce_axis((0, k), name="k")
    return te.create_prim_func([x, w, te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[r, j], axis=r), name="dense")])


def schedule_fp32_dense(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    """(rows/4, n/16) parallel, k, 4 rows, 16 columns vectorized (N % 16 == 0)."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("dense")
    i, j, k = sch.get_loops(block)
    tile = 4 if int(sch.get(i).extent) % 4 == 0 else 1
    io, ii = sch.split(i, [None, tile])
    jo, ji = sch.split(j, [None, LANES])
    sch.reorder(io, jo, k, ii, ji)
    sch.parallel(sch.fuse(io, jo))
    sch.vectorize(ji)
    sch.decompose_reduction(block, k)
    return sch
