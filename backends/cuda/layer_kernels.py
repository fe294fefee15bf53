"""One quantizable layer as the CUDA build runs it, compiled alone for a latency table.

``w8a8``: the layer's tensor-core GEMM kernel (dense convs as implicit GEMM, linears; the
hand schedule the build uses, requantization fused) or its depthwise kernel (scheduled by the
pipeline's dlight rules, as in a build), on int8 codes at batch 1 and the padded shapes a build
gives it. ``fp32``: the layer as one float Relax op through TVM's CUDA pipeline (how the build
runs a float layer). Each comes back as a :class:`LayerKernel`: the executable (CUDA kernels
compiled to a fatbin, exportable), how to call it, and its argument shapes, so the same kernels
are timed on a local GPU (:mod:`lcpaq.backends.cuda.timing`) or exported into a bundle and timed
on a GPU machine with the runtime alone (``tools/gpu_bench.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax
from tvm.s_tir import dlight as dl

from lcpaq.backends.common import cpu_depthwise as dw
from lcpaq.backends.common.layer_ops import batch1_shape, by_form, float_op, one_op_module
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import round_up
from lcpaq.backends.cuda import gemm, gemm_schedule
from lcpaq.backends.cuda.dp4a import gemm_schedule_for
from lcpaq.backends.cuda.fatbin import CudaExecutable
from lcpaq.backends.cuda.lower_gemm import CHANNEL_MULTIPLE, DEPTHWISE_LANES
from lcpaq.ir.layers import QuantLayer

INT8 = "w8a8"
Args = list[tuple[tuple[int, ...], str]]


@dataclass
class LayerKernel:
    """A compiled layer: ``kind`` ``kernel`` (a PrimFunc ``main`` taking ``args`` with its output
    last) or ``vm`` (a Relax VM whose ``main`` takes ``args``)."""

    executable: CudaExecutable
    kind: str
    args: Args


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    return np.zeros(shape, np.float32)  # a float layer's time does not depend on its weights


def _requant_args(n: int) -> Args:
    return [((n,), "int32"), ((n,), "int32"), ((n,), "int32"), ((4,), "int32")]


class LayerKernels:
    """Builds :class:`LayerKernel` s for the layers of a costed graph, for one CUDA target."""

    def __init__(self, tvm_target: tvm.target.Target) -> None:
        self.target = tvm_target
        self.arch = str(tvm_target.arch)
        self.float_only: list[str] = []

    def _kernel(self, func: tvm.tirx.PrimFunc, schedule: Callable[[Any], Any] | None, args: Args) -> LayerKernel:
        func = func.with_attr("global_symbol", "main")
        if schedule is not None:
            mod = schedule(func).mod
        else:
            with self.target:
                mod = dl.ApplyDefaultSchedule(dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())(tvm.IRModule({"main": func}))
        return LayerKernel(CudaExecutable.compile(tvm.compile(mod, target=self.target), self.arch), "kernel", args)

    def _float(self, op: Callable[[relax.Expr], relax.Expr], x_shape: tuple[int, ...]) -> LayerKernel:
        ex = tvm.compile(one_op_module(op, x_shape), target=self.target)
        return LayerKernel(CudaExecutable.compile(ex, self.arch), "vm", [(x_shape, "float32")])

    def kernels(self, gm: fx.GraphModule, layer: QuantLayer) -> dict[str, LayerKernel]:
        """The layer's kernels by precision key: ``fp32`` always, ``w8a8`` where it has one."""
        return by_form(gm, layer, self._conv, self._depthwise, self._linear, lambda: self._float_only(gm, layer))

    def _float_only(self, gm: fx.GraphModule, layer: QuantLayer) -> dict[str, LayerKernel]:
        self.float_only.append(layer.name)
        return {"fp32": self._float(float_op(gm, layer, _zeros), batch1_shape(layer.act_inputs[0]))}

    def _conv(self, layer: QuantLayer, w: torch.Tensor, geo: dict[str, int]) -> dict[str, LayerKernel]:
        x_shape = batch1_shape(layer.act_inputs[0])
        _, c, h, w_ = x_shape
        o, k, s, p = w.shape[0], w.shape[2], geo["stride"], geo["padding"]
        c_p = round_up(c, CHANNEL_MULTIPLE)
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w_, k, s, p)
        rows = oh * ow
        m_p, n_p, k_p = gemm_schedule.padded_gemm(rows, o, k * k * c_p)
        func = gemm.qconv2d_func((1, h, w_, c_p), n_p, (k, k), s, p, m_p, k_p, "int8")
        args = [((1, h, w_, c_p), "int8"), ((n_p, k_p), "int8"), *_requant_args(n_p), ((m_p, n_p), "int8")]
        wf = relax.const(np.zeros(tuple(w.shape), np.float32))
        return {"fp32": self._float(lambda x: relax.op.nn.conv2d(x, wf, strides=s, padding=p), x_shape),
                INT8: self._kernel(func, gemm_schedule_for(self.arch), args)}

    def _depthwise(self, layer: QuantLayer, w: torch.Tensor, geo: dict[str, int]) -> dict[str, LayerKernel]:
        x_shape = batch1_shape(layer.act_inputs[0])
        _, c, h, w_ = x_shape
        k, s, p = w.shape[2], geo["stride"], geo["padding"]
        c_p = round_up(c, DEPTHWISE_LANES)
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w_, k, s, p)
        func = dw.qdepthwise_func((1, h, w_, c_p), k, s, p, "int8", "int8", DEPTHWISE_LANES)
        args = [((1, h, w_, c_p), "int8"), ((k, k, c_p), "int8"), *_requant_args(c_p), ((1, oh, ow, c_p), "int8")]
        wf = relax.const(np.zeros(tuple(w.shape), np.float32))
        return {"fp32": self._float(lambda x: relax.op.nn.conv2d(x, wf, strides=s, padding=p, groups=c), x_shape),
                INT8: self._kernel(func, None, args)}

    def _linear(self, layer: QuantLayer, w: torch.Tensor) -> dict[str, LayerKernel]:
        x_shape = batch1_shape(layer.act_inputs[0])
        n, k = w.shape
        m = max(1, int(np.prod(x_shape[:-1])))
        m_p, n_p, k_p = gemm_schedule.padded_gemm(m, n, k)
        args = [((m_p, k_p), "int8"), ((n_p, k_p), "int8"), *_requant_args(n_p), ((m_p, n_p), "int8")]
        wt = relax.const(np.zeros((k, n), np.float32))
        return {"fp32": self._float(lambda x: relax.op.matmul(x, wt), x_shape),
                INT8: self._kernel(gemm.qdense_func(m_p, n_p, k_p, "int8"), gemm_schedule_for(self.arch), args)}

    def notes(self) -> list[str]:
        notes = [
            f"w8a8 = s8 x s8 -> s32 on WMMA tensor cores ({self.arch}; hand schedule, requantization fused), or the "
            "depthwise kernel scheduled by dlight; fp32 = the layer as one Relax op on TVM's CUDA pipeline (dlight)",
            "weights narrower than 8 bits run on the int8 kernels: they cost the w8 entry",
        ]
        if self.float_only:
            notes.append(f"no integer kernel here, timed in fp32 only: {', '.join(self.float_only)}")
        return notes
