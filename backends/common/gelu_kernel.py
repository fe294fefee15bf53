"""The TVM kernel of the integer GELU (:func:`lcpaq.backends.common.integer_glue.qgelu`), bit-exact:
``relu(v) - R(|v|)`` with ``R`` a polynomial per segment evaluated in int32, its coefficients
picked by a tree of selects. Scheduled by :func:`lcpaq.backends.common.glue_kernels.schedule_glue`.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import tvm
from tvm import s_tir, te
from tvm import tirx as tir

from lcpaq.backends.common import integer_glue as ig
from lcpaq.backends.common.code_kernels import _dyadic, _i64
from lcpaq.backends.common.glue_kernels import MAX_LANES, Shape, _c, _check_dtypes, _fixed_to_codes, _split


def _i32(v: int) -> Any:
    return tir.const(int(v), "int32")


def _select_row(table: Any, row: Any, col: int) -> Any:
    """``table[row, col]`` for int32 ``row`` in [0, rows) as a tree of selects on the bits of
    ``row``, without the subtrees of absent rows: ``rows - 1`` blends (TVM scalarizes a vector
    gather into one load per lane)."""
    rows = int(table.shape[0])

    def pick(first: int, bits: int) -> Any:  # rows first .. first + 2^bits - 1 (those that exist)
        if bits == 0:
            return table[first, col]
        half = first + (1 << (bits - 1))
        if half >= rows:
            return pick(first, bits - 1)
        bit = (row & _i32(1 << (bits - 1))) != _i32(0)
        return tir.Select(bit, pick(half, bits - 1), pick(first, bits - 1))

    return pick(0, (rows - 1).bit_length())


#: One element's GELU as let-bound stages ``(name, dtype, value(env))`` (``env``: the stages so
#: far, by name) and the output's value(env).
_Stages = tuple[list[tuple[str, str, Callable[[dict], Any]]], Callable[[dict], Any]]


def _gelu_stages(x: Any, table: Any, x_zp: int, mult: int, shift: int, out: tuple) -> _Stages:
    """:func:`integer_glue.qgelu` of the element ``x`` (an int64-castable load). ``seg``, the
    segment, is used only in the selects' conditions: TVM's NarrowDataType memoizes a let
    variable's bound where it is bound but finds it unbound in a condition (which its bound
    analysis does not visit), and refuses the two; ``w`` recomputes the segment (LLVM merges the
    two)."""
    width = ig.GELU_SEG_WIDTH

    def arg(env: dict) -> Any:  # min(|v|, edge - 1) >> GELU_ARG_SHIFT, as int32
        return tir.min(tir.abs(env["v"]), _c(ig.GELU_EDGE - 1)).astype("int32") >> _i32(ig.GELU_ARG_SHIFT)

    stages = [
        ("v", "int64", lambda env: _dyadic(_i64(x) - _c(x_zp), mult, shift)),
        ("a", "int32", arg),
        ("seg", "int32", lambda env: ig.gelu_segment(env["a"])),
        ("w", "int32", lambda env: env["a"] - ig.gelu_segment(env["a"]) * _i32(width) - _i32(width // 2)),
    ]
    stages += [(f"c{k}", "int32", lambda env, k=k: _select_row(table, env["seg"], k)) for k in range(3)]
    # C[3] and C[4]: the low and high halves of the last column (integer_glue.gelu_coefficients)
    stages += [("c34", "int32", lambda env: _select_row(table, env["seg"], 3)),
               ("c3", "int32", lambda env: env["c34"].astype("int16").astype("int32")),
               ("h4", "int32", lambda env: env["c34"] >> _i32(16))]
    for k in range(3, -1, -1):
        stages.append((f"h{k}", "int32",
                       lambda env, k=k: ((env[f"h{k + 1}"] * env["w"]) >> _i32(ig.GELU_SHIFTS[k])) + env[f"c{k}"]))
    stages.append(("y", "int64", lambda env: tir.max(env["v"], _c(0)) - _i64(env["h0"] >> _i32(ig.GELU_OUT_SHIFT))))
    return stages, lambda env: _fixed_to_codes(env["y"], *out)


def _let_expr(stages: _Stages) -> Any:
    """The stages as one expression of nested lets."""
    binds, env = [], {}
    for name, dtype, value in stages[0]:
        var = tir.Var(name, dtype)
        binds.append((var, value(env)))
        env[name] = var
    y = stages[1](env)
    for var, value in reversed(binds):
        y = tir.Let(var, value, y)
    return y


def _unravel(flat: Any, shape: tuple[int, ...]) -> list[Any]:
    """The index of ``shape`` at row-major position ``flat``."""
    index, stride = [], 1
    for d in reversed(shape):
        e = tir.floordiv(flat, _i32(stride)) if stride > 1 else flat
        index.append(tir.floormod(e, _i32(d)) if len(index) < len(shape) - 1 else e)
        stride *= d
    return index[::-1]


def _interleaved(func: tvm.tirx.PrimFunc, shape: tuple[int, ...], stages_of: Callable[[Any, Any], _Stages],
                 streams: int) -> tvm.tirx.PrimFunc:
    """``func`` (one element-wise block reading ``X`` and ``T``, writing its output) recomputed
    as one block over ``n / streams`` positions ``k``, each computing the elements at ``k``, ``k +
    n / streams``, ... (``n`` elements in all, row-major) with their stages bound in turn (stage 1
    of each, then stage 2 of each, ...). An element's work is one long chain of dependent
    instructions; two chains interleaved keep the core busy where one after the other would
    leave it waiting (as twice the vector lanes would, which :func:`schedule_glue` does not use)."""
    realize = func.body.block.body
    while not isinstance(realize, s_tir.SBlockRealize):
        realize = realize.body
    reads = {r.source.name: r.source for r in realize.block.reads}
    x_buf, t_buf = reads["X"], reads["T"]
    (y_buf,) = (r.source for r in realize.block.writes)
    part = math.prod(shape) // streams
    k, vk = tir.Var("k", "int32"), tir.Var("v_k", "int32")
    index = [_unravel(vk + _i32(s * part) if s else vk, shape) for s in range(streams)]
    programs = [stages_of(tir.BufferLoad(x_buf, i), t_buf) for i in index]
    envs: list[dict] = [{} for _ in range(streams)]
    body = []
    for stage in range(len(programs[0][0])):
        for s, (stages, _) in enumerate(programs):
            name, dtype, value = stages[stage]
            var = tir.Var(f"{name}_{s}", dtype)
            body.append(tir.LetStmt(var, value(envs[s])))
            envs[s][name] = var
    body += [tir.BufferStore(y_buf, output(envs[s]), index[s]) for s, (_, output) in enumerate(programs)]

    def whole(b: Any) -> Any:
        return tir.BufferRegion(b, [tvm.ir.Range.from_min_extent(0, d) for d in b.shape])

    iter_var = tir.IterVar(tvm.ir.Range.from_min_extent(0, part), vk, 0)  # data-parallel
    block = s_tir.SBlock([iter_var], [whole(b) for b in reads.values()], [whole(y_buf)], "gelu", tir.SeqStmt(body))
    loop = tir.For(k, _i32(0), _i32(part), tir.ForKind.SERIAL, s_tir.SBlockRealize([k], True, block))
    return func.with_body(s_tir.SBlockRealize([], True, s_tir.SBlock([], [], [], "root", loop)))


def gelu_func(shape: Shape, in_dtype: str, x_zp: int, mult: int, shift: int, out_mult: int, out_shift: int,
              out_zp: int, qmin: int, qmax: int, out_dtype: str) -> tvm.tirx.PrimFunc:
    """``Y = integer_glue.qgelu(X, x_zp, mult, shift, T, out_mult, out_shift, out_zp, qmin, qmax, out_dtype)``;
    params ``[X, T, Y]``, ``T`` int32 ``[GELU_SEGMENTS, 4]`` (:data:`integer_glue.GELU_TABLE`).

    Only the input's dyadic scaling and :func:`integer_glue.fixed_to_codes` are int64; the
    polynomial's argument, segment and coefficients (picked by a tree of selects on the bits of
    the segment) and Horner's rule are int32 (every value there fits, see
    :data:`integer_glue.GELU_TABLE`), so a vector holds twice as many lanes. Where the element
    count is a multiple of ``2 * MAX_LANES``, each iteration computes two elements half the
    tensor apart, their steps interleaved (:func:`_interleaved`; about 1.2x faster on a Zen 5
    core), else one (``te.compute``)."""
    _check_dtypes(in_dtype, out_dtype)
    shape, _, _ = _split(shape)
    x = te.placeholder(shape, in_dtype, name="X")
    table = te.placeholder(tuple(int(v) for v in ig.GELU_TABLE.shape), "int32", name="T")
    out = (out_mult, out_shift, out_zp, qmin, qmax, out_dtype)

    def stages_of(load: Any, t: Any) -> _Stages:
        return _gelu_stages(load, t, x_zp, mult, shift, out)

    y = te.compute(shape, lambda *i: _let_expr(stages_of(x(*i), table)), name="gelu")
    func = te.create_prim_func([x, table, y])
    n = math.prod(shape)
    if n % (2 * MAX_LANES) or n >= 2**31:
        return func
    return _interleaved(func, shape, stages_of, 2)
