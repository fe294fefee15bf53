"""Measure every quantizable layer of a costed graph on this host, at every precision the target
offers, and collect the results in a :class:`~lcpaq.backends.latency_table.LatencyTable`.

What runs where (batch 1, shapes from the ``lcpaq.shape`` annotations):

* conv2d with groups=1, dilation 1, a square kernel and symmetric stride and padding, and every
  linear layer: fp32 as a TVM float32 kernel, int8 (``w8a8``) as the VNNI kernels of
  :mod:`lcpaq.backends.tvm_int8` (requantization fused). With ``trials=0`` both use fixed
  hand schedules (int8: the untuned VNNI schedule; fp32: outer loops parallel, 16 output
  channels vectorized); with ``trials > 0`` both are tuned by MetaSchedule and the tuning
  databases are kept under ``cache_dir()/tuning``, so a second run reuses them (each checked
  first by :mod:`lcpaq.backends.tuning_db`: a corrupt or foreign one raises CorruptFileError).
* every other layer (depthwise or grouped conv, dilated conv, activation x activation matmul,
  embedding): the layer's own ATen op is timed in fp32 with torch, and that time stands for
  every precision of the layer (there is no integer kernel for it yet).
* precisions without a kernel (int16, mixed widths such as ``w8a16``) reuse the layer's fp32
  time. Each such substitution is listed in the table's ``notes``.

Weight widths the target keeps in storage only get no entry: the table charges them the int8
entry. ``fixed_seconds`` (everything that is not a quantizable layer) is not measured yet: 0.0.
"""
from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import tvm
from tqdm.auto import tqdm
from tvm import s_tir, te

from lcpaq.backends import tvm_int8 as t8
from lcpaq.backends.latency_table import LatencyTable, precision_key
from lcpaq.backends.tvm_vnni import DEPTH, LANES, Kernel, build, pack_weight, to_tvm
from lcpaq.hw_targets.host import host_cpu_name, host_support
from lcpaq.hw_targets.target import Target
from lcpaq.ir.capture import get_attr
from lcpaq.ir.errors import ConfigError, PassContractError
from lcpaq.ir.fileio import cache_dir
from lcpaq.ir.layers import CONV_OPS, QuantLayer, find_layers
from lcpaq.ir.meta import COST, SHAPE

aten = torch.ops.aten
INT8 = "w8a8"


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _pair(v: Any) -> int | None:
    """An int from an int or a pair of equal ints, else None."""
    if isinstance(v, int):
        return v
    if isinstance(v, (list, tuple)) and v and all(x == v[0] for x in v) and isinstance(v[0], int):
        return int(v[0])
    return None


def conv_geometry(node: fx.Node) -> dict[str, int] | None:
    """stride, padding, dilation, groups of a 2-d conv node when each is one int (symmetric), else None."""
    a = list(node.args)
    if node.target is aten.convolution.default:  # (x, w, b, stride, padding, dilation, transposed, out_pad, groups)
        if a[6]:
            return None
        vals = (a[3], a[4], a[5], a[8])
    elif node.target is aten.conv2d.default:  # (x, w, b=None, stride=1, padding=0, dilation=1, groups=1)
        defaults = [None, None, None, 1, 0, 1, 1]
        a = a + defaults[len(a):]
        vals = tuple(node.kwargs.get(k, a[i]) for i, k in zip(range(3, 7), ("stride", "padding", "dilation", "groups")))
    else:
        return None
    ints = [_pair(v) for v in vals]
    if any(v is None for v in ints):
        return None
    return dict(zip(("stride", "padding", "dilation", "groups"), ints))


def _fp32_conv_func(shape: tuple[int, int, int, int], out_channels: int, kernel: int, stride: int, padding: int) -> tvm.tirx.PrimFunc:
    """NHWC float32 conv2d with HWIO weights (output channels innermost, so the 16 vectorized output
    channels load contiguously) and zero padding: ``tvm_tune.fp32_conv2d_func`` plus a stride."""
    b, h, w_, c = shape
    x = te.placeholder(shape, "float32", name="X")
    wt = te.placeholder((kernel, kernel, c, out_channels), "float32", name="W")
    oh, ow = t8.conv_out_size(h, kernel, stride, padding), t8.conv_out_size(w_, kernel, stride, padding)
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


def col_tile(width: int) -> int:
    """Output columns computed together (each loaded weight vector is reused across them): the
    largest divisor of ``width`` up to 8, so a tile's accumulators fit in registers."""
    return max(d for d in range(1, 9) if width % d == 0)


def _schedule_fp32_conv(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
    """(n, oh) parallel, ow/t, o/16, kh, kw, c, t columns (:func:`col_tile`), 16 output channels
    vectorized (O % 16 == 0)."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock("conv")
    n, oh, ow, o, rh, rw, rc = sch.get_loops(block)
    tile = col_tile(int(sch.get(ow).extent))
    owo, owi = sch.split(ow, [None, tile])
    oo, oi = sch.split(o, [None, LANES])
    sch.reorder(n, oh, owo, oo, rh, rw, rc, owi, oi)
    sch.parallel(sch.fuse(n, oh))
    sch.vectorize(oi)
    sch.decompose_reduction(block, rh)
    pad = sch.get_sblock("pad")
    sch.parallel(sch.fuse(*sch.get_loops(pad)[:2]))
    return sch


def _fp32_dense_func(m: int, n: int, k: int) -> tvm.tirx.PrimFunc:
    """``Y[m, n] = X[m, k] @ W[k, n]`` in float32; W is stored K x N so vectorized columns load contiguously."""
    x = te.placeholder((m, k), "float32", name="X")
    w = te.placeholder((k, n), "float32", name="W")
    r = te.reduce_axis((0, k), name="k")
    return te.create_prim_func([x, w, te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[r, j], axis=r), name="dense")])


def _schedule_fp32_dense(func: tvm.tirx.PrimFunc) -> s_tir.Schedule:
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


class _Timer:
    """Builds (or tunes) kernels and times them: median over ``repeats`` of ``number`` calls."""

    def __init__(self, target: Target, trials: int, repeats: int, number: int) -> None:
        self.tvm_target = tvm.target.Target(dict(target.tvm_target))
        self.trials, self.repeats, self.number = trials, repeats, number

    def kernel(self, tag: str, func: tvm.tirx.PrimFunc, schedule: Callable[[tvm.tirx.PrimFunc], s_tir.Schedule], int8: bool) -> Kernel:
        if self.trials <= 0:
            return build(schedule(func).mod, self.tvm_target)
        return _tuned(func, self.trials, int8, cache_dir() / "tuning" / f"{tag}-t{self.trials}")

    def tvm_seconds(self, kernel: Kernel, args: list[Any]) -> float:
        kernel(*args)  # warm-up (and a crash here beats a crash inside the evaluator)
        return kernel.time_ms(*args, repeat=self.repeats, number=self.number, cold=True) / 1e3

    def torch_seconds(self, fn: Callable[[], Any]) -> float:
        with torch.no_grad():
            for _ in range(2):
                fn()
            runs = []
            for _ in range(self.repeats):
                start = time.perf_counter()
                for _ in range(self.number):
                    fn()
                runs.append((time.perf_counter() - start) / self.number)
        return float(np.median(runs))


def _tuned(func: tvm.tirx.PrimFunc, trials: int, int8: bool, work_dir: Path) -> Kernel:
    """A kernel from the tuning database in ``work_dir`` if it has a schedule for ``func``; else tune
    (``trials`` candidates) with :func:`lcpaq.backends.tvm_tune.tune`, recording into ``work_dir``.
    The database is checked first (:func:`lcpaq.backends.tuning_db.open_database`): a corrupt or
    foreign one raises CorruptFileError naming its path instead of being used or overwritten."""
    from lcpaq.backends import tvm_tune as tt

    return build(tt.cached_schedule(func, trials, int8, work_dir).mod, tt.tuning_target())


def _shape(node: fx.Node) -> tuple[int, ...]:
    s = SHAPE.get(node)
    if s is None:
        raise PassContractError(f"node {node.name} has no lcpaq.shape annotation; run shape-prop first")
    return s.shape


def _conv_tvm(timer: _Timer, gm: fx.GraphModule, layer: QuantLayer, geo: dict[str, int], gen: torch.Generator) -> dict[str, float]:
    """fp32 and w8a8 seconds of a groups=1 square conv, at batch 1 (channels padded as the kernels need)."""
    _, c, h, w_ = _shape(layer.act_inputs[0])
    o, _, k, _ = get_attr(gm, layer.weight_name).shape
    s, p = geo["stride"], geo["padding"]
    c4, o16 = _round_up(c, DEPTH), _round_up(o, LANES)
    oh, ow = t8.conv_out_size(h, k, s, p), t8.conv_out_size(w_, k, s, p)
    tag = f"conv-{c4}x{h}x{w_}-o{o16}-k{k}s{s}p{p}"
    q_func = t8.qconv2d_func((1, h, w_, c4), o16, k, s, p)
    q_sched = lambda f: t8.schedule_qconv2d(f, t8.vnni_col_tile(ow))  # noqa: E731  (the build's schedule)
    q_kernel = timer.kernel(f"{tag}-int8", q_func, q_sched, int8=True)
    w_q = torch.randint(-127, 128, (o16, c4, k, k), generator=gen, dtype=torch.int8)
    q_args = [
        to_tvm(torch.randint(0, 256, (1, h, w_, c4), generator=gen, dtype=torch.uint8)), to_tvm(t8.pack_conv_weight(w_q)),
        *_channel_params(o16, gen), to_tvm(np.zeros((1, oh, ow, o16), np.uint8)),
    ]
    f_kernel = timer.kernel(f"{tag}-fp32", _fp32_conv_func((1, h, w_, c), o16, k, s, p), _schedule_fp32_conv, int8=False)
    f_args = [
        to_tvm(torch.randn(1, h, w_, c, generator=gen)), to_tvm(torch.randn(k, k, c, o16, generator=gen)),
        to_tvm(np.zeros((1, oh, ow, o16), np.float32)),
    ]
    return {"fp32": timer.tvm_seconds(f_kernel, f_args), INT8: timer.tvm_seconds(q_kernel, q_args)}


def _linear_tvm(timer: _Timer, layer: QuantLayer, gen: torch.Generator) -> dict[str, float]:
    """fp32 and w8a8 seconds of a linear layer: rows = the input's elements per sample / K."""
    in_shape, out_shape = _shape(layer.act_inputs[0]), _shape(layer.node)
    k, n = in_shape[-1], out_shape[-1]
    m = max(1, int(np.prod(in_shape[1:-1]))) if len(in_shape) > 2 else 1
    k4, n16 = _round_up(k, DEPTH), _round_up(n, LANES)
    tag = f"dense-m{m}-n{n16}-k{k4}"
    q_kernel = timer.kernel(f"{tag}-int8", t8.qdense_func(m, n16, k4), t8.schedule_qdense, int8=True)
    q_args = [
        to_tvm(torch.randint(0, 256, (m, k4), generator=gen, dtype=torch.uint8)),
        to_tvm(pack_weight(torch.randint(-127, 128, (n16, k4), generator=gen, dtype=torch.int8))),
        *_channel_params(n16, gen), to_tvm(np.zeros((m, n16), np.uint8)),
    ]
    f_kernel = timer.kernel(f"{tag}-fp32", _fp32_dense_func(m, n16, k), _schedule_fp32_dense, int8=False)
    f_args = [to_tvm(torch.randn(m, k, generator=gen)), to_tvm(torch.randn(k, n16, generator=gen)), to_tvm(np.zeros((m, n16), np.float32))]
    return {"fp32": timer.tvm_seconds(f_kernel, f_args), INT8: timer.tvm_seconds(q_kernel, q_args)}


def _depthwise_tvm(timer: _Timer, gm: fx.GraphModule, layer: QuantLayer, geo: dict[str, int], gen: torch.Generator) -> dict[str, float]:
    """w8a8 seconds of a depthwise conv on the AVX-512 depthwise kernel (hand schedule, as the
    build uses), and fp32 seconds of the layer's own ATen op."""
    from lcpaq.backends import tvm_int8_depthwise as dw

    _, c, h, w_ = _shape(layer.act_inputs[0])
    k = get_attr(gm, layer.weight_name).shape[2]
    s, p = geo["stride"], geo["padding"]
    c16 = _round_up(c, LANES)
    oh, ow = t8.conv_out_size(h, k, s, p), t8.conv_out_size(w_, k, s, p)
    kernel = build(dw.schedule_qdepthwise(dw.qdepthwise_func((1, h, w_, c16), k, s, p)).mod, timer.tvm_target)
    args = [
        to_tvm(torch.randint(0, 256, (1, h, w_, c16), generator=gen, dtype=torch.uint8)),
        to_tvm(torch.randint(-127, 128, (k, k, c16), generator=gen, dtype=torch.int8)),
        *_channel_params(c16, gen), to_tvm(np.zeros((1, oh, ow, c16), np.uint8)),
    ]
    return {"fp32": _torch_fp32(timer, gm, layer, gen), INT8: timer.tvm_seconds(kernel, args)}


def _depthwise_geometry(gm: fx.GraphModule, layer: QuantLayer) -> dict[str, int] | None:
    """The conv geometry if this is a square depthwise conv (groups == channels), else None."""
    if layer.kind != "conv" or layer.node.target not in CONV_OPS or layer.weight is None:
        return None
    geo = conv_geometry(layer.node)
    weight = get_attr(gm, layer.weight_name)
    if geo is None or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[2] != weight.shape[3] or geo["dilation"] != 1:
        return None
    return geo if geo["groups"] == weight.shape[0] > 1 else None


def _channel_params(n: int, gen: torch.Generator) -> list[Any]:
    bias = torch.randint(-5000, 5000, (n,), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**29, 2**30, (n,), generator=gen, dtype=torch.int32)
    return [to_tvm(bias), to_tvm(mult), to_tvm(torch.full((n,), 38, dtype=torch.int32)), to_tvm(t8.Requant(3).qp(5))]


def _torch_fp32(timer: _Timer, gm: fx.GraphModule, layer: QuantLayer, gen: torch.Generator) -> float:
    """Seconds of the layer's own ATen op on random inputs of its annotated shapes (batch 1),
    with its real weights; integer inputs (embedding indices) are zeros."""

    def value(a: Any) -> Any:
        if isinstance(a, fx.Node):
            if a.op == "get_attr":
                return get_attr(gm, str(a.target))
            s = SHAPE.get(a)
            if s is None:
                raise PassContractError(f"node {a.name} has no lcpaq.shape annotation; run shape-prop first")
            shape = (1, *s.shape[1:]) if s.shape else s.shape
            dtype = getattr(torch, s.dtype)
            return torch.randn(shape, generator=gen).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
        if isinstance(a, (list, tuple)):
            return type(a)(value(x) for x in a)
        return a

    args, kwargs = value(tuple(layer.node.args)), {k: value(v) for k, v in layer.node.kwargs.items()}
    return timer.torch_seconds(lambda: layer.node.target(*args, **kwargs))


def precision_keys(target: Target, kind: str) -> list[str]:
    """The keys a layer of ``kind`` gets: fp32 and every candidate whose weights are computed at
    their own width (storage-only widths are charged the int8 entry by the table)."""
    keys = {precision_key(b) for b in target.candidates(kind) if b.w_bits not in target.storage_weight_bits}
    return ["fp32", *sorted(keys - {"fp32"})]


def check_host(target: Target) -> None:
    """Raise ConfigError unless ``target`` is a local TVM target whose CPU features this host has."""
    if target.device != "local" or not target.tvm_target:
        raise ConfigError(f"target {target.name!r} is not this machine (device {target.device!r}); profile runs on a local target such as x86-host")
    support = host_support(target)
    if not support.ok:
        raise ConfigError(f"cannot profile for target {target.name!r} here: {support}")


def _tvm_able_conv(gm: fx.GraphModule, layer: QuantLayer) -> dict[str, int] | None:
    """The conv geometry if the TVM kernels can run this layer, else None."""
    if layer.kind != "conv" or layer.node.target not in CONV_OPS or layer.weight is None:
        return None
    geo = conv_geometry(layer.node)
    weight = get_attr(gm, layer.weight_name)
    if geo is None or weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        return None
    return geo if geo["groups"] == 1 and geo["dilation"] == 1 else None


def profile_model(
    gm: fx.GraphModule, target: Target, model_name: str = "", trials: int = 0, repeats: int = 10, number: int = 5,
    progress: bool = True, seed: int = 0,
) -> LatencyTable:
    """Time every quantizable layer of a costed graph (``lcpaq.shape`` and ``lcpaq.cost``
    annotations, from ``prepare_phase``) on this host, at batch 1.

    Guarantees: every layer of ``find_layers(gm)`` has an entry for ``fp32`` and for every
    precision the target computes for its kind (:func:`precision_keys`), each a positive number
    of seconds (median of ``repeats`` runs of ``number`` calls); how each was obtained is in the
    table's ``notes``. Raises ConfigError if ``target`` is not this host or the host lacks its
    CPU features, PassContractError if the graph is not annotated."""
    check_host(target)
    layers = find_layers(gm)
    missing = [layer.name for layer in layers if not COST.has(layer.node)]
    if missing:
        raise PassContractError(f"profile needs lcpaq.cost on every layer (missing on {', '.join(missing[:3])}); run the prepare phase first")
    if repeats < 1 or number < 1:
        raise ConfigError(f"repeats and number must be >= 1, got {repeats} and {number}")
    timer = _Timer(target, trials, repeats, number)
    gen = torch.Generator().manual_seed(seed)
    entries: dict[str, dict[str, float]] = {}
    torch_layers: list[str] = []
    depthwise: list[str] = []
    reused: set[str] = set()
    bar = tqdm(layers, desc="profile", unit="layer", disable=not progress)
    for layer in bar:
        bar.set_postfix_str(layer.name)
        geo = _tvm_able_conv(gm, layer)
        dw_geo = _depthwise_geometry(gm, layer)
        if geo is not None:
            measured = _conv_tvm(timer, gm, layer, geo, gen)
        elif dw_geo is not None:
            measured = _depthwise_tvm(timer, gm, layer, dw_geo, gen)
            depthwise.append(layer.name)
        elif layer.kind == "linear" and layer.node.target is aten.linear.default:
            measured = _linear_tvm(timer, layer, gen)
        else:
            measured = {"fp32": _torch_fp32(timer, gm, layer, gen)}
            torch_layers.append(layer.name)
        row = {}
        for key in precision_keys(target, layer.kind):
            if key not in measured and layer.name not in torch_layers:
                reused.add(key)
            row[key] = float(f"{measured.get(key, measured['fp32']):.4g}")  # 4 digits: timing noise is larger
        entries[layer.name] = row
    notes = [
        "TVM kernels are timed with their weights flushed from the caches before each call (as in a whole model, "
        "whose weights are read once per inference)",
        "conv (groups=1, square kernel) and linear layers: fp32 and w8a8 timed as TVM kernels "
        + ("with fixed hand schedules (untuned)" if trials <= 0 else f"tuned by MetaSchedule ({trials} trials each)")
        + "; w8a8 = u8 x s8 -> s32 on AVX-512 VNNI with fused requantization",
        "fixed_seconds (everything but the quantizable layers) is 0.0 here; `lcpaq profile` measures it on a whole-model build",
        "weights narrower than 8 bits run on the int8 kernels (codes held in int8): they cost the w8 entry",
    ]
    if hasattr(os, "getloadavg"):
        notes.append(f"load average (1 min) when profiling ended: {os.getloadavg()[0]:.2f} on {os.cpu_count()} logical CPUs")
    if reused:
        notes.append(f"no kernel for {', '.join(sorted(reused))}: those entries reuse the layer's fp32 time")
    if depthwise:
        notes.append(f"depthwise convs: w8a8 on the AVX-512 depthwise kernel (hand schedule), fp32 = torch: {', '.join(depthwise)}")
    if torch_layers:
        notes.append(f"timed in fp32 with torch, every precision = fp32 time (no TVM kernel): {', '.join(torch_layers)}")
    return LatencyTable(
        target=target.name, device=f"{host_cpu_name()} ({os.cpu_count()} logical CPUs)", tvm_version=str(tvm.__version__),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), trials=max(trials, 0),
        model=model_name, entries=entries, fixed_seconds=0.0, notes=tuple(notes),
    )


