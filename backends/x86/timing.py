"""How the x86 backend times one quantizable layer for ``lcpaq profile`` (batch 1, shapes from the
``lcpaq.shape`` annotations), on the same kernels a build runs:

* conv2d with groups=1, no dilation, a square kernel and one stride and padding, and every
  linear layer: fp32 on :mod:`lcpaq.backends.x86.fp32`, ``w8a8`` on the VNNI kernels of
  :mod:`lcpaq.backends.x86.int8` (requantization fused). Hand schedules with ``trials=0``; with
  ``trials > 0`` tuned by MetaSchedule, records kept in the tuning cache shared with builds.
  ``w8a16``, ``w16a8`` and ``w16a16`` on the ``vpdpwssd`` kernels of :mod:`lcpaq.backends.x86.int16`
  (hand schedules, as builds use them).
* depthwise convs: ``w8a8`` on the AVX-512 depthwise kernel; other grouped convs (square):
  ``w8a8`` on the windowed VNNI conv of :mod:`lcpaq.backends.x86.int8_grouped`; fp32 for both
  as a build runs a float grouped conv: one Relax conv2d through the backend's pipeline.
* every other layer (dilated or non-square conv, activation x activation matmul, embedding): the
  layer's ATen op in fp32 with torch, standing for every precision.

Kernels are timed with their weights flushed from the caches before each call, as inside a
whole model, whose weights are read once per inference. A layer whose 8-bit weights keep its
accumulators small is timed with the int32 requantization a build gives it.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax, s_tir

from lcpaq.backends.common.backend import LayerTimer
from lcpaq.backends.common.cpu_pipeline import compile_module
from lcpaq.backends.common.integer_layers import conv_kind
from lcpaq.backends.common.layer_ops import float_op, one_op_module
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import round_up
from lcpaq.backends.common.tuning import cached_schedule, tuning_dir
from lcpaq.backends.common import gemm_te
from lcpaq.backends.common import integer_ref as ir
from lcpaq.backends.common import wide_te
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86 import int16 as k16
from lcpaq.backends.x86 import int8_depthwise as dw
from lcpaq.backends.x86 import int8_grouped as gw
from lcpaq.backends.x86.fp32 import fp32_conv_func, fp32_dense_func, schedule_fp32_conv, schedule_fp32_dense
from lcpaq.backends.x86.tiles import target_tiles
from lcpaq.backends.x86.tune import tuning_rules
from lcpaq.backends.x86.vnni import DEPTH, LANES, Kernel, build, pack_weight, to_tvm
from lcpaq.ir.capture import get_attr
from lcpaq.ir.layers import QuantLayer
from lcpaq.ir.meta import SHAPE
from lcpaq.ir.precision import QuantSpec
from lcpaq.ir.quantizer import quantize, weight_qparams

aten = torch.ops.aten
INT8 = "w8a8"
#: The wide kernels' precision keys: (activation code type, weight bits) of each.
WIDE = {"w8a16": ("int16", 8), "w16a8": ("uint8", 16), "w16a16": ("int16", 16)}


def _shape(node: fx.Node) -> tuple[int, ...]:
    return SHAPE.require(node, "shape-prop").shape


def _narrow(gm: fx.GraphModule, layer: QuantLayer) -> bool:
    """Whether a build gives this 8-bit layer an int32 requantization: its weights' per-channel
    8-bit codes over every uint8 input keep the accumulator bound small enough
    (``integer_ref.narrow_multiplier_bits``; the bias, unknown here, is left out)."""
    w = get_attr(gm, layer.weight_name).detach().float().flatten(1)
    spec = QuantSpec(8, symmetric=True, ch_axis=0)
    codes = quantize(w, *weight_qparams(w, spec), spec)
    return ir.narrow_multiplier_bits(int(codes.abs().sum(1).max()) * 255) is not None


class X86LayerTimer(LayerTimer):
    """Builds (or tunes) the kernels of one layer and times them: median over ``repeats`` of
    ``number`` calls."""

    def __init__(self, tvm_target: tvm.target.Target, trials: int, repeats: int, number: int, seed: int) -> None:
        self.tvm_target, self.trials, self.repeats, self.number = tvm_target, trials, repeats, number
        self.tiles = target_tiles(tvm_target)  # the hand schedules' tiles, as a build uses them
        self.gen = torch.Generator().manual_seed(seed)
        self.depthwise: list[str] = []
        self.grouped: list[str] = []
        self.torch_layers: list[str] = []

    # -- kernels and clocks --------------------------------------------------------------------
    def kernel(self, tag: str, func: tvm.tirx.PrimFunc, schedule: Callable[[tvm.tirx.PrimFunc], s_tir.Schedule], int8: bool) -> Kernel:
        if self.trials <= 0:
            return build(schedule(func).mod, self.tvm_target)
        work_dir = tuning_dir(self.tvm_target, tag, self.trials)
        return build(cached_schedule(func, self.trials, self.tvm_target, tuning_rules(int8), work_dir).mod, self.tvm_target)

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

    # -- layers --------------------------------------------------------------------------------
    def measure(self, gm: fx.GraphModule, layer: QuantLayer) -> dict[str, float]:
        kind = conv_kind(gm, layer)
        if kind is not None and kind[0] == "dense":
            return self._conv(gm, layer, kind[1])
        if kind is not None and kind[0] == "grouped":
            self.grouped.append(layer.name)
            return self._grouped(gm, layer, kind[1])
        if kind is not None:
            self.depthwise.append(layer.name)
            return self._depthwise(gm, layer, kind[1])
        if layer.kind == "linear" and layer.node.target is aten.linear.default:
            return self._linear(gm, layer)
        self.torch_layers.append(layer.name)
        return {"fp32": self._torch_fp32(gm, layer)}

    def _conv(self, gm: fx.GraphModule, layer: QuantLayer, geo: dict[str, int]) -> dict[str, float]:
        """fp32 and w8a8 seconds of a groups=1 square conv (channels padded as the kernels need)."""
        gen = self.gen
        _, c, h, w_ = _shape(layer.act_inputs[0])
        o, _, k, _ = get_attr(gm, layer.weight_name).shape
        s, p = geo["stride"], geo["padding"]
        c4, o16 = round_up(c, DEPTH), round_up(o, LANES)
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w_, k, s, p)
        tag = f"conv-{c4}x{h}x{w_}-o{o16}-k{k}s{s}p{p}"
        narrow = _narrow(gm, layer)
        q_func = t8.qconv2d_func((1, h, w_, c4), o16, k, s, p, narrow=narrow)
        q_kernel = self.kernel(f"{tag}-int8" + ("-n32" if narrow else ""), q_func,
                               lambda f: t8.schedule_qconv2d(f, ow, self.tiles), int8=True)
        w_q = torch.randint(-127, 128, (o16, c4, k, k), generator=gen, dtype=torch.int8)
        q_args = [
            to_tvm(torch.randint(0, 256, (1, h, w_, c4), generator=gen, dtype=torch.uint8)), to_tvm(t8.pack_conv_weight(w_q)),
            *self._channel_params(o16, narrow), to_tvm(np.zeros((1, oh, ow, o16), np.uint8)),
        ]
        f_kernel = self.kernel(f"{tag}-fp32", fp32_conv_func((1, h, w_, c), o16, k, s, p), schedule_fp32_conv, int8=False)
        f_args = [
            to_tvm(torch.randn(1, h, w_, c, generator=gen)), to_tvm(torch.randn(k, k, c, o16, generator=gen)),
            to_tvm(np.zeros((1, oh, ow, o16), np.float32)),
        ]
        wide = {key: self._wide_seconds(k16.schedule_qconv2d(k16.qconv2d_func((1, h, w_, c4), o16, k, s, p, act, bits), ow, self.tiles),
                                        (1, h, w_, c4), (o16, c4, k, k), act, bits, (1, oh, ow, o16))
                for key, (act, bits) in WIDE.items()}
        return {"fp32": self.tvm_seconds(f_kernel, f_args), INT8: self.tvm_seconds(q_kernel, q_args), **wide}

    def _wide_seconds(self, sch: s_tir.Schedule, x_shape: tuple[int, ...], w_shape: tuple[int, ...], act: str, bits: int,
                      out_shape: tuple[int, ...]) -> float:
        """Seconds of a wide kernel on random codes of its widths (int16 output codes)."""
        gen, n = self.gen, w_shape[0]
        x = (torch.randint(-(2**15), 2**15, x_shape, generator=gen, dtype=torch.int32).to(torch.int16) if act == "int16"
             else torch.randint(0, 256, x_shape, generator=gen, dtype=torch.uint8))
        top = 2**15 - 1 if bits > 8 else 127
        w_q = torch.randint(-top, top + 1, w_shape, generator=gen, dtype=torch.int32).to(torch.int16)
        args = [
            to_tvm(x), to_tvm(wide_te.pack_wide_weight(w_q, wide_te.parts_of(act, bits), LANES)),
            to_tvm(gemm_te.channel_params(gemm_te.bias_eff(w_q, 3, None), 1, 1, n, n, "int64")[0]), to_tvm(torch.randint(2**20, 2**21, (n,), generator=gen, dtype=torch.int32)),
            to_tvm(torch.full((n,), 40, dtype=torch.int32)), to_tvm(t8.Requant(3, -(2**15), 2**15 - 1, "int16").qp(3, act)),
            to_tvm(np.zeros(out_shape, np.int16)),
        ]
        return self.tvm_seconds(build(sch.mod, self.tvm_target), args)

    def _linear(self, gm: fx.GraphModule, layer: QuantLayer) -> dict[str, float]:
        """fp32 and w8a8 seconds of a linear layer: rows = the input's elements per sample / K."""
        gen = self.gen
        in_shape, out_shape = _shape(layer.act_inputs[0]), _shape(layer.node)
        k, n = in_shape[-1], out_shape[-1]
        m = max(1, int(np.prod(in_shape[1:-1]))) if len(in_shape) > 2 else 1
        k4, n16 = round_up(k, DEPTH), round_up(n, LANES)
        tag = f"dense-m{m}-n{n16}-k{k4}"
        narrow = _narrow(gm, layer)
        q_kernel = self.kernel(f"{tag}-int8" + ("-n32" if narrow else ""), t8.qdense_func(m, n16, k4, narrow=narrow),
                               lambda f: t8.schedule_qdense(f, self.tiles), int8=True)
        q_args = [
            to_tvm(torch.randint(0, 256, (m, k4), generator=gen, dtype=torch.uint8)),
            to_tvm(pack_weight(torch.randint(-127, 128, (n16, k4), generator=gen, dtype=torch.int8))),
            *self._channel_params(n16, narrow), to_tvm(np.zeros((m, n16), np.uint8)),
        ]
        f_kernel = self.kernel(f"{tag}-fp32", fp32_dense_func(m, n16, k), schedule_fp32_dense, int8=False)
        f_args = [to_tvm(torch.randn(m, k, generator=gen)), to_tvm(torch.randn(k, n16, generator=gen)),
                  to_tvm(np.zeros((m, n16), np.float32))]
        wide = {key: self._wide_seconds(k16.schedule_qdense(k16.qdense_func(m, n16, k4, act, bits), self.tiles), (m, k4), (n16, k4), act, bits, (m, n16))
                for key, (act, bits) in WIDE.items()}
        return {"fp32": self.tvm_seconds(f_kernel, f_args), INT8: self.tvm_seconds(q_kernel, q_args), **wide}

    def _depthwise(self, gm: fx.GraphModule, layer: QuantLayer, geo: dict[str, int]) -> dict[str, float]:
        """w8a8 seconds on the AVX-512 depthwise kernel (hand schedule, as the build uses), and
        fp32 seconds as a build runs it (:meth:`_relax_fp32`)."""
        gen = self.gen
        _, c, h, w_ = _shape(layer.act_inputs[0])
        k = get_attr(gm, layer.weight_name).shape[2]
        s, p = geo["stride"], geo["padding"]
        c16 = round_up(c, LANES)
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w_, k, s, p)
        narrow = _narrow(gm, layer)
        kernel = build(dw.schedule_qdepthwise(dw.qdepthwise_func((1, h, w_, c16), k, s, p, narrow=narrow)).mod, self.tvm_target)
        args = [
            to_tvm(torch.randint(0, 256, (1, h, w_, c16), generator=gen, dtype=torch.uint8)),
            to_tvm(torch.randint(-127, 128, (k, k, c16), generator=gen, dtype=torch.int8)),
            *self._channel_params(c16, narrow), to_tvm(np.zeros((1, oh, ow, c16), np.uint8)),
        ]
        return {"fp32": self._relax_fp32(gm, layer), INT8: self.tvm_seconds(kernel, args)}

    def _grouped(self, gm: fx.GraphModule, layer: QuantLayer, geo: dict[str, int]) -> dict[str, float]:
        """w8a8 seconds on the windowed VNNI conv (hand schedule, as the build uses; inputs
        already regrouped), and fp32 seconds as a build runs it (:meth:`_relax_fp32`)."""
        gen = self.gen
        _, c, h, w_ = _shape(layer.act_inputs[0])
        o, _, k, _ = get_attr(gm, layer.weight_name).shape
        s, p = geo["stride"], geo["padding"]
        plan = gw.group_plan(c, o, geo["groups"])
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w_, k, s, p)
        func = gw.qgrouped_func((1, h, w_, plan.in_channels), plan, k, s, p)
        kernel = build(t8.schedule_qconv2d(func, ow, self.tiles).mod, self.tvm_target)
        n = plan.out_channels
        w_q = torch.randint(-127, 128, (n // LANES, k, k, plan.win // DEPTH, LANES, DEPTH), generator=gen, dtype=torch.int8)
        args = [
            to_tvm(torch.randint(0, 256, (1, h, w_, plan.in_channels), generator=gen, dtype=torch.uint8)), to_tvm(w_q),
            *self._channel_params(n), to_tvm(np.zeros((1, oh, ow, n), np.uint8)),
        ]
        return {"fp32": self._relax_fp32(gm, layer), INT8: self.tvm_seconds(kernel, args)}

    def _channel_params(self, n: int, narrow: bool = False) -> list[Any]:
        """Bias, multipliers and shifts of the kind the integer lowering makes (narrow: 10-bit)."""
        bias = torch.randint(-5000, 5000, (n,), generator=self.gen, dtype=torch.int32)
        top, shift = (2**10, 18) if narrow else (2**30, 38)
        mult = torch.randint(top // 2, top, (n,), generator=self.gen, dtype=torch.int32)
        return [to_tvm(bias), to_tvm(mult), to_tvm(torch.full((n,), shift, dtype=torch.int32)), to_tvm(t8.Requant(3).qp(5))]

    def _relax_fp32(self, gm: fx.GraphModule, layer: QuantLayer) -> float:
        """Seconds of the layer as one float Relax op (its real weight shape, random values)
        compiled by the backend's pipeline, as a build runs a float layer with no fp32 kernel
        of its own; the time evaluator at batch 1."""
        x_shape = _shape(layer.act_inputs[0])
        random = lambda shape: torch.randn(shape, generator=self.gen).numpy()  # noqa: E731
        ex = compile_module(one_op_module(float_op(gm, layer, random), x_shape), self.tvm_target)
        vm = relax.VirtualMachine(ex, tvm.cpu())
        x = to_tvm(torch.randn(x_shape, generator=self.gen))
        vm["main"](x)
        evaluator = vm.time_evaluator("main", tvm.cpu(), number=self.number, repeat=self.repeats)
        return float(np.median(evaluator(x).results))

    def _torch_fp32(self, gm: fx.GraphModule, layer: QuantLayer) -> float:
        """Seconds of the layer's own ATen op on random inputs of its annotated shapes (batch 1),
        with its real weights; integer inputs (embedding indices) are zeros."""

        def value(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if a.op == "get_attr":
                    return get_attr(gm, str(a.target))
                s = SHAPE.require(a, "shape-prop")
                shape = (1, *s.shape[1:]) if s.shape else s.shape
                dtype = getattr(torch, s.dtype)
                return torch.randn(shape, generator=self.gen).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
            if isinstance(a, (list, tuple)):
                return type(a)(value(x) for x in a)
            return a

        args, kwargs = value(tuple(layer.node.args)), {k: value(v) for k, v in layer.node.kwargs.items()}
        return self.torch_seconds(lambda: layer.node.target(*args, **kwargs))

    def notes(self) -> list[str]:
        notes = [
            "TVM kernels are timed with their weights flushed from the caches before each call (as in a whole model, "
            "whose weights are read once per inference)",
            "conv (groups=1, square kernel) and linear layers: fp32 and w8a8 timed as TVM kernels "
            + ("with fixed hand schedules (untuned)" if self.trials <= 0 else f"tuned by MetaSchedule ({self.trials} trials each)")
            + "; w8a8 = u8 x s8 -> s32 on AVX-512 VNNI with fused requantization",
            "weights narrower than 8 bits run on the int8 kernels (codes held in int8): they cost the w8 entry",
            "w8a16, w16a8, w16a16 (conv with groups=1, linear): int16 pairs on AVX-512 VNNI vpdpwssd, exact int64 sums, "
            "hand schedules; depthwise and grouped convs have 8-bit kernels only (their 16-bit entries are the fp32 time)",
        ]
        if self.depthwise:
            notes.append(f"depthwise convs: w8a8 on the AVX-512 depthwise kernel (hand schedule), fp32 = one Relax conv2d through the build pipeline: {', '.join(self.depthwise)}")
        if self.grouped:
            notes.append(f"grouped convs: w8a8 on the windowed VNNI conv (hand schedule), fp32 = one Relax conv2d through the build pipeline: {', '.join(self.grouped)}")
        if self.torch_layers:
            notes.append(f"timed in fp32 with torch, every precision = fp32 time (no TVM kernel): {', '.join(self.torch_layers)}")
        return notes
