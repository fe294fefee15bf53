"""The glue kernels (softmax, layer norm, GELU as TVM PrimFuncs, CPU schedule) are bit-exact
against their integer reference, :mod:`lcpaq.backends.common.integer_glue`.

Each kernel variant is compiled once for the host (LLVM, this machine's CPU) and cached; inputs
come from seeded generators. Parameters are those a model's scales give (``quantize_multiplier``
of the real factors), and the inputs cover the extremes: int32 codes over the whole range
(INT32_MIN is what an additive attention mask produces), uint8 codes with a zero point, constant
rows, rows of tiny spread, last dimensions that are not a multiple of the vector width.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np
import pytest
import torch
import tvm

from lcpaq.backends.common import gelu_kernel
from lcpaq.backends.common import glue_kernels as gk
from lcpaq.backends.common import integer_glue as ig
from lcpaq.backends.common.integer_ref import INT32_MAX, INT32_MIN, quantize_multiplier
from lcpaq.backends.x86.vnni import host_target

_LIMITS = {"uint8": (0, 255), "int8": (-128, 127), "int32": (INT32_MIN, INT32_MAX)}
_TORCH = {"uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32}


@functools.lru_cache(maxsize=None)
def _kernel(maker: Callable[..., Any], *args: Any) -> Any:
    """``maker(*args)`` scheduled with :func:`schedule_glue` and compiled for the host (once per variant)."""
    return tvm.compile(gk.schedule_glue(maker(*args)).mod, target=host_target())


def _run(maker: Callable[..., Any], args: tuple[Any, ...], inputs: list[torch.Tensor], out_dtype: str) -> torch.Tensor:
    shape = tuple(inputs[0].shape)
    arrays = [tvm.runtime.tensor(t.numpy()) for t in inputs] + [tvm.runtime.tensor(np.zeros(shape, out_dtype))]
    _kernel(maker, *args)["main"](*arrays)
    return torch.from_numpy(arrays[-1].numpy())


def _codes(gen: torch.Generator, shape: tuple[int, ...], dtype: str, lo: int | None = None,
           hi: int | None = None) -> torch.Tensor:
    qlo, qhi = _LIMITS[dtype]
    lo, hi = qlo if lo is None else lo, qhi if hi is None else hi
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int64).to(_TORCH[dtype])


def _out_params(out_dtype: str, fixed_bits: int, out_scale: float, out_zp: int) -> tuple[int, int, int, int, int]:
    """``(out_mult, out_shift, out_zp, qmin, qmax)``: codes at ``out_scale`` of a value at 2^-fixed_bits,
    or, for int32 outputs, the fixed-point value itself (multiplier 1)."""
    if out_dtype == "int32":
        return 2**30, 30, 0, INT32_MIN, INT32_MAX
    mult, shift = quantize_multiplier(2.0**-fixed_bits / out_scale)
    return (mult, shift, out_zp, *_LIMITS[out_dtype])


def _assert_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    bad = (got.to(torch.int64) != want.to(torch.int64)).nonzero()
    if bad.numel():
        at = tuple(bad[0].tolist())
        raise AssertionError(f"{len(bad)} codes differ, first at {at}: got {int(got[at])}, want {int(want[at])}")
    assert np.array_equal(got.numpy(), want.numpy())


# -- softmax ------------------------------------------------------------------------------------

def _check_softmax(x: torch.Tensor, in_dtype: str, x_zp: int, scale: float, out_dtype: str, out_zp: int = 0) -> torch.Tensor:
    mult, shift = quantize_multiplier(scale * 2**ig.EXP_FRAC / math.log(2))
    out = _out_params(out_dtype, ig.PROB_BITS, 1 / 255 if out_dtype == "uint8" else 1 / 127, out_zp)
    args = (tuple(x.shape), in_dtype, x_zp, mult, shift, *out, out_dtype)
    want = ig.qsoftmax(x, x_zp, mult, shift, *out, out_dtype)
    got = _run(gk.softmax_func, args, [x], out_dtype)
    _assert_equal(got, want)
    return got


@pytest.mark.parametrize("shape", [(2, 3, 4, 32), (5, 7), (3, 50), (2, 2, 3, 19)])
def test_softmax_random_int32_codes(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    x = _codes(gen, shape, "int32", -3000, 3000)
    got = _check_softmax(x, "int32", 0, 2e-3, "uint8")
    assert int(got.max()) > 0


def test_softmax_full_int32_range_and_attention_mask() -> None:
    """Codes over all of int32, and rows where an additive mask pushed most codes to INT32_MIN
    (``max - x`` past 2^31 is clamped): the masked entries' probabilities are 0."""
    gen = torch.Generator().manual_seed(1)
    x = _codes(gen, (4, 6, 40), "int32")
    x[0, 0, :] = INT32_MIN
    x[0, 1, :] = INT32_MAX
    x[0, 2, ::2] = INT32_MIN
    x[0, 2, 1] = INT32_MAX
    x[1, :, 20:] = INT32_MIN + torch.arange(20, dtype=torch.int32)
    x[2] = x[2] // 2**16  # a few thousand: a real spread of probabilities
    got = _check_softmax(x, "int32", 0, 1e-3, "uint8", out_zp=3)
    assert (got[0, 0] == got[0, 0, 0]).all()
    for scale in (1e-6, 0.5):
        _check_softmax(x, "int32", 0, scale, "uint8")
    _check_softmax(x, "int32", 0, 1e-3, "int32")


@pytest.mark.parametrize("in_dtype,x_zp,out_dtype", [("uint8", 131, "int32"), ("int8", -3, "int8"), ("uint8", 0, "uint8")])
def test_softmax_8bit_codes(in_dtype: str, x_zp: int, out_dtype: str) -> None:
    gen = torch.Generator().manual_seed(2)
    x = _codes(gen, (3, 5, 24), in_dtype)
    x[0, 0] = _LIMITS[in_dtype][0]
    x[0, 1] = _LIMITS[in_dtype][1]
    _check_softmax(x, in_dtype, x_zp, 0.08, out_dtype, out_zp=-5 if out_dtype == "int8" else 0)


def test_softmax_rank_one() -> None:
    x = _codes(torch.Generator().manual_seed(3), (33,), "int32", -500, 500)
    _check_softmax(x, "int32", 0, 0.01, "uint8")


# -- layer norm ---------------------------------------------------------------------------------

def _check_layer_norm(x: torch.Tensor, in_dtype: str, x_zp: int, x_scale: float, out_dtype: str, out_zp: int = 0,
                      frac: int = 20, eps: int | None = None, seed: int = 0) -> torch.Tensor:
    n = x.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    out_scale = 0.05 if out_dtype != "int32" else 1e-4
    gamma = 1 + 0.3 * torch.randn(n, generator=gen, dtype=torch.float64)
    beta = 0.2 * torch.randn(n, generator=gen, dtype=torch.float64)
    g = torch.round(gamma / out_scale * 2**frac).to(torch.int64)
    b = torch.round(beta / out_scale * 2**frac).to(torch.int64)
    if eps is None:
        eps = round(1e-12 * n * n * 2 ** (2 * ig.LN_SQRT_BITS) / x_scale**2)
    qmin, qmax = _LIMITS[out_dtype]
    args = (tuple(x.shape), in_dtype, x_zp, frac, eps, out_zp, qmin, qmax, out_dtype)
    want = ig.qlayer_norm(x, x_zp, g, b, frac, eps, out_zp, qmin, qmax, out_dtype)
    got = _run(gk.layer_norm_func, args, [x, g, b], out_dtype)
    _assert_equal(got, want)
    return got


@pytest.mark.parametrize("shape", [(2, 8, 384), (5, 7), (3, 50), (2, 3, 2, 21)])
def test_layer_norm_random_int32_codes(shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    x = _codes(gen, shape, "int32", -(2**20), 2**20)
    got = _check_layer_norm(x, "int32", 0, 1e-4, "uint8", out_zp=120)
    assert int(got.max()) > int(got.min())


def test_layer_norm_extreme_rows() -> None:
    """Full int32 range (INT32_MIN and INT32_MAX in one row), constant rows (the mean exactly
    subtracted: every output is beta), rows of spread below 2^LN_NORM_BITS (shifted left), one
    outlier in a flat row; uint8 and int32 outputs; eps 0 and a large eps."""
    gen = torch.Generator().manual_seed(4)
    x = _codes(gen, (10, 48), "int32")
    x[0] = 7
    x[1] = INT32_MIN
    x[2, ::2], x[2, 1::2] = INT32_MIN, INT32_MAX
    x[3] = _codes(gen, (48,), "int32", -3, 3)
    x[4] = 0
    x[4, 5] = 1
    x[5] = INT32_MAX
    x[5, 0] = INT32_MIN
    x[6] = _codes(gen, (48,), "int32", 100, 101)
    for out_dtype, out_zp in (("uint8", 128), ("int32", 0), ("int8", 0)):
        _check_layer_norm(x, "int32", 0, 3e-3, out_dtype, out_zp)
    for eps in (0, 1, 2**20, ig.LN_MAX_EPS):
        _check_layer_norm(x, "int32", 0, 3e-3, "uint8", 128, eps=eps)
    _check_layer_norm(x, "int32", 0, 3e-3, "int32", frac=12)


@pytest.mark.parametrize("in_dtype,x_zp,out_dtype", [("uint8", 117, "int32"), ("int8", 4, "uint8"), ("uint8", 0, "int8")])
def test_layer_norm_8bit_codes(in_dtype: str, x_zp: int, out_dtype: str) -> None:
    gen = torch.Generator().manual_seed(5)
    x = _codes(gen, (4, 3, 32), in_dtype)
    x[0, 0] = x_zp
    x[0, 1] = _LIMITS[in_dtype][1]
    x[0, 2, 0] = _LIMITS[in_dtype][0]
    _check_layer_norm(x, in_dtype, x_zp, 0.04, out_dtype, out_zp=3 if out_dtype == "uint8" else 0)


def test_layer_norm_rank_one() -> None:
    x = _codes(torch.Generator().manual_seed(6), (17,), "int32", -(2**12), 2**12)
    _check_layer_norm(x, "int32", 0, 1e-3, "uint8", 128)


# -- GELU ---------------------------------------------------------------------------------------

def _check_gelu(x: torch.Tensor, in_dtype: str, x_zp: int, scale: float, out_dtype: str, out_scale: float,
                out_zp: int = 0) -> torch.Tensor:
    mult, shift = quantize_multiplier(scale * 2**ig.GELU_FRAC)
    out = _out_params(out_dtype, ig.GELU_FRAC, out_scale, out_zp)
    args = (tuple(x.shape), in_dtype, x_zp, mult, shift, *out, out_dtype)
    want = ig.qgelu(x, x_zp, mult, shift, ig.GELU_TABLE, *out, out_dtype)
    got = _run(gelu_kernel.gelu_func, args, [x, ig.GELU_TABLE], out_dtype)
    _assert_equal(got, want)
    return got


@pytest.mark.parametrize("shape,out_dtype", [((2, 4, 96), "uint8"), ((5, 7), "int32"), ((3, 50), "uint8"), ((7,), "uint8")])
def test_gelu_random_int32_codes(shape: tuple[int, ...], out_dtype: str) -> None:
    gen = torch.Generator().manual_seed(sum(shape) + 7)
    x = _codes(gen, shape, "int32", -(2**17), 2**17)
    _check_gelu(x, "int32", 0, 5e-5, out_dtype, 0.04, out_zp=5)


def test_gelu_full_int32_range() -> None:
    """All of int32 (``v`` in int64, ``R`` its edge value beyond +-5), at scales that put the
    codes well past the table's edge and ones that keep them inside it."""
    gen = torch.Generator().manual_seed(8)
    special = torch.tensor([[INT32_MIN, INT32_MAX, -1, 0, 1] * 4 + [0] * 44], dtype=torch.int32)
    x = torch.cat([_codes(gen, (2, 64), "int32"), special])
    for scale, out_dtype in ((1e-9, "int32"), (3e-6, "uint8"), (1e-3, "int32"), (1.0, "uint8")):
        _check_gelu(x, "int32", 0, scale, out_dtype, 0.05 if out_dtype == "uint8" else 1.0, out_zp=10)


@pytest.mark.parametrize("in_dtype,x_zp,out_dtype", [("uint8", 128, "uint8"), ("int8", -7, "int8"), ("uint8", 60, "int32")])
def test_gelu_every_8bit_code(in_dtype: str, x_zp: int, out_dtype: str) -> None:
    """Every code, at a scale that crosses every table segment (and the edges at +-5)."""
    lo, hi = _LIMITS[in_dtype]
    x = torch.arange(lo, hi + 1, dtype=torch.int64).to(_TORCH[in_dtype]).reshape(2, 128)
    _check_gelu(x, in_dtype, x_zp, 6.0 / 128, out_dtype, 0.03, out_zp=-20 if out_dtype == "int8" else 15)


def test_gelu_every_segment_boundary() -> None:
    """int32 codes that land on and next to every segment boundary of ``|v|`` (scale
    2^-GELU_FRAC makes ``v`` the code itself) and on the edges ``+-GELU_EDGE``."""
    step = ig.GELU_SEG_WIDTH << ig.GELU_ARG_SHIFT
    edges = torch.arange(-ig.GELU_SEGMENTS - 1, ig.GELU_SEGMENTS + 2) * step
    x = (edges[:, None] + torch.tensor([-17, -1, 0, 1, 16])).flatten().to(torch.int32)
    for codes in (x, torch.cat([x, x[:1]])):  # 95 elements: one stream; 96: two (see gelu_func)
        _check_gelu(codes.reshape(1, -1), "int32", 0, 2.0**-ig.GELU_FRAC, "int32", 1.0)
        _check_gelu(codes.reshape(1, -1), "int32", 0, 2.0**-ig.GELU_FRAC, "uint8", 0.02, out_zp=8)


# -- schedule -----------------------------------------------------------------------------------

def test_schedule_parallel_rows_vectorized_columns() -> None:
    """Rows parallel, the per-row blocks under the row loop, the last dimension vectorized."""
    sch = gk.schedule_glue(gk.layer_norm_func((2, 4, 384), "int32", 0, 20, 1, 0, 0, 255, "uint8"))
    text = sch.mod.script()
    assert "T.parallel(8)" in text and "T.vectorized(16)" in text
    row_loop = sch.get_loops(sch.get_sblock("layer_norm"))[0]
    for name in ("row_sum", "row_recip"):
        assert sch.get(sch.get_loops(sch.get_sblock(name))[0]).same_as(sch.get(row_loop))
    sch = gk.schedule_glue(gelu_kernel.gelu_func((3, 7), "int32", 0, 2**30, 31, 2**30, 31, 0, 0, 255, "uint8"))
    assert "T.vectorized(7)" in sch.mod.script()


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="int64"):
        gk.softmax_func((2, 4), "int64", 0, 2**30, 31, 2**30, 31, 0, 0, 255, "uint8")


# -- fused adds ---------------------------------------------------------------------------------

def test_fused_mask_and_residual_adds() -> None:
    """A mask add broadcast over heads and queries fused into softmax, a residual add fused into
    layer norm (both saturating terms): the same bits as ``qadd`` then the op."""
    gen = torch.Generator().manual_seed(21)
    scores = _codes(gen, (2, 3, 8, 16), "int32", -40000, 40000)
    mask = torch.zeros(2, 1, 1, 16, dtype=torch.int32)
    mask[0, ..., 11:] = -(2**31 - 128)
    params = (0, 2**30, 30, 0, 2**30, 30, 0, INT32_MIN, INT32_MAX)
    add = gk.FusedAdd((2, 1, 1, 16), "int32", params)
    mult, shift = quantize_multiplier(1e-3 * 2**ig.EXP_FRAC / math.log(2))
    out = _out_params("uint8", ig.PROB_BITS, 1 / 255, 0)
    want = ig.qsoftmax(scores, 0, mult, shift, *out, "uint8", add=(mask, *params))
    _assert_equal(_run(gk.softmax_func, ((2, 3, 8, 16), "int32", 0, mult, shift, *out, "uint8", add), [scores, mask], "uint8"), want)
    assert int(want[0, ..., 11:].max()) == 0

    n = 48
    a, r = _codes(gen, (2, 5, n), "int32"), _codes(gen, (2, 5, n), "uint8")
    params = (0, *quantize_multiplier(0.5), 128, *quantize_multiplier(300.0), 0, INT32_MIN, INT32_MAX)
    g, b = torch.randint(-(2**20), 2**20, (n,), generator=gen), torch.randint(-(2**24), 2**24, (n,), generator=gen)
    add = gk.FusedAdd((2, 5, n), "uint8", params)
    args = ((2, 5, n), "int32", 0, 20, 1000, 7, 0, 255, "uint8", add)
    want = ig.qlayer_norm(a, 0, g, b, 20, 1000, 7, 0, 255, "uint8", add=(r, *params))
    _assert_equal(_run(gk.layer_norm_func, args, [a, r, g, b], "uint8"), want)
