"""Timing one layer on an Arm board over RPC, for ``lcpaq profile --target arm-a76 --rpc ...``.

Each quantizable layer is timed as the build runs it: at ``w8a8`` on the sdot kernel (dense
convs and linears) or the vector depthwise kernel, with the hand schedules the build uses and
requantization fused; at ``fp32`` as the one Relax op the build would run for it in float
(TVM's frontend lowering, CPU pipeline schedules). Kernels are compiled here, linked with the
AArch64 toolchain, uploaded and timed on the board by TVM's time evaluator; weights are flushed
from the caches before each call, as in a whole model. Other layers (non-square or grouped
convs, matmuls, embeddings) get their fp32 time as a single Relax op where one exists.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from lcpaq.backends.arm.dotprod import KERNELS, SDOT_BLOCKING
from lcpaq.backends.common import cpu_depthwise as dw
from lcpaq.backends.common import gemm_te
from lcpaq.backends.common.backend import Backend, LayerTimer
from lcpaq.backends.common.layer_ops import batch1_shape as _shape
from lcpaq.backends.common.layer_ops import by_form, float_op, one_op_module
from lcpaq.backends.common.op_args import conv_out_size
from lcpaq.backends.common.relax_lower import round_up
from lcpaq.hw_targets.target import Target
from lcpaq.ir.layers import QuantLayer

INT8 = "w8a8"


class ArmLayerTimer(LayerTimer):
    """Times layers on the target's board (connected once, at construction)."""

    def __init__(self, backend: Backend, target: Target, repeats: int, number: int, seed: int) -> None:
        self.backend, self.repeats, self.number = backend, repeats, number
        self.tvm_target = backend.tvm_target(target)
        self.device = backend.device(target)
        self.where = backend.device_name(target)
        self.emulation = self.device.emulation
        self.gen = torch.Generator().manual_seed(seed)
        self.float_only: list[str] = []

    # -- compiling and timing on the board ------------------------------------------------------
    def _remote(self, arrays: list[np.ndarray]) -> list[Any]:
        return [self.device.tensor(a) for a in arrays]

    def _time(self, module: Any, name: str, args: list[Any]) -> float:
        module[name](*args)  # warm-up (a crash here beats one inside the evaluator)
        evaluator = module.time_evaluator(name, self.device.dev, number=1, repeat=self.repeats * self.number,
                                          f_preproc="cache_flush_cpu_non_first_arg")
        return float(np.median(evaluator(*args).results))

    def _kernel_seconds(self, sch: Any, arrays: list[np.ndarray]) -> float:
        lib = tvm.compile(sch.mod, target=self.tvm_target)
        return self._time(self.device.module(lib, self.backend.export), "main", self._remote(arrays))

    def _relax_seconds(self, op: Any, x_shape: tuple[int, ...]) -> float:
        """Seconds of one float Relax op applied to a random ``x_shape`` input."""
        ex = self.backend.compile(one_op_module(op, x_shape), self.tvm_target)
        vm = relax.VirtualMachine(self.device.module(ex, self.backend.export), self.device.dev)
        args = self._remote([torch.randn(x_shape, generator=self.gen).numpy()])
        vm["main"](*args)
        evaluator = vm.time_evaluator("main", self.device.dev, number=self.number, repeat=self.repeats)
        return float(np.median(evaluator(*args).results))

    def _params(self, n: int) -> list[np.ndarray]:
        bias = torch.randint(-5000, 5000, (n,), generator=self.gen, dtype=torch.int64)
        mult = torch.randint(2**29, 2**30, (n,), generator=self.gen, dtype=torch.int64)
        return [*gemm_te.channel_params(bias, mult, 38, n, n), gemm_te.Requant(3, -128, 127, "int8").qp(5, "int8")]

    def _codes(self, shape: tuple[int, ...]) -> np.ndarray:
        return torch.randint(-128, 128, shape, generator=self.gen, dtype=torch.int8).numpy()

    # -- layers ------------------------------------------------------------------------------------
    def measure(self, gm: fx.GraphModule, layer: QuantLayer) -> dict[str, float]:
        return by_form(gm, layer, self._conv, self._depthwise, self._linear, lambda: self._float_only(gm, layer))

    def _float_only(self, gm: fx.GraphModule, layer: QuantLayer) -> dict[str, float]:
        self.float_only.append(layer.name)
        return {"fp32": self._relax_seconds(float_op(gm, layer, self._random), _shape(layer.act_inputs[0]))}

    def _random(self, shape: tuple[int, ...]) -> np.ndarray:
        return torch.randn(shape, generator=self.gen).numpy()

    def _conv(self, layer: QuantLayer, w: torch.Tensor, geo: dict[str, int]) -> dict[str, float]:
        x_shape = _shape(layer.act_inputs[0])
        _, c, h, w_ = x_shape
        o, k, s, p = w.shape[0], w.shape[2], geo["stride"], geo["padding"]
        c_p, o_p = round_up(c, SDOT_BLOCKING.depth), round_up(o, SDOT_BLOCKING.lanes)
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w_, k, s, p)
        sch = KERNELS.schedule_conv(gemm_te.qconv2d_func((1, h, w_, c_p), o_p, k, s, p, SDOT_BLOCKING, "int8"), ow)
        w_q = torch.randint(-127, 128, (o_p, c_p, k, k), generator=self.gen, dtype=torch.int8)
        arrays = [self._codes((1, h, w_, c_p)), gemm_te.pack_conv_weight(w_q, SDOT_BLOCKING), *self._params(o_p),
                  np.zeros((1, oh, ow, o_p), np.int8)]
        wf = relax.const(torch.randn(w.shape, generator=self.gen).numpy())
        fp32 = self._relax_seconds(lambda x: relax.op.nn.conv2d(x, wf, strides=s, padding=p), x_shape)
        return {"fp32": fp32, INT8: self._kernel_seconds(sch, arrays)}

    def _depthwise(self, layer: QuantLayer, w: torch.Tensor, geo: dict[str, int]) -> dict[str, float]:
        x_shape = _shape(layer.act_inputs[0])
        _, c, h, w_ = x_shape
        k, s, p, lanes = w.shape[2], geo["stride"], geo["padding"], KERNELS.depthwise_lanes
        c_p = round_up(c, lanes)
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w_, k, s, p)
        sch = dw.schedule_qdepthwise(dw.qdepthwise_func((1, h, w_, c_p), k, s, p, "int8", "int8", lanes), lanes=lanes)
        arrays = [self._codes((1, h, w_, c_p)), self._codes((k, k, c_p)), *self._params(c_p), np.zeros((1, oh, ow, c_p), np.int8)]
        wf = relax.const(torch.randn(w.shape, generator=self.gen).numpy())
        fp32 = self._relax_seconds(lambda x: relax.op.nn.conv2d(x, wf, strides=s, padding=p, groups=c), x_shape)
        return {"fp32": fp32, INT8: self._kernel_seconds(sch, arrays)}

    def _linear(self, layer: QuantLayer, w: torch.Tensor) -> dict[str, float]:
        x_shape = _shape(layer.act_inputs[0])
        n, k = w.shape
        m = max(1, int(np.prod(x_shape[:-1])))
        k_p, n_p = round_up(k, SDOT_BLOCKING.depth), round_up(n, SDOT_BLOCKING.lanes)
        sch = KERNELS.schedule_dense(gemm_te.qdense_func(m, n_p, k_p, SDOT_BLOCKING, "int8"))
        w_q = torch.randint(-127, 128, (n_p, k_p), generator=self.gen, dtype=torch.int8)
        arrays = [self._codes((m, k_p)), gemm_te.pack_weight(w_q, SDOT_BLOCKING), *self._params(n_p), np.zeros((m, n_p), np.int8)]
        wt = relax.const(torch.randn(k, n, generator=self.gen).numpy())
        fp32 = self._relax_seconds(lambda x: relax.op.matmul(x, wt), x_shape)
        return {"fp32": fp32, INT8: self._kernel_seconds(sch, arrays)}

    def notes(self) -> list[str]:
        notes = [
            f"timed on {self.where} over RPC; kernels cross-compiled here for {self.tvm_target.attrs.get('mtriple', 'aarch64')} and uploaded",
            "w8a8 = s8 x s8 -> s32 on the Armv8.2 sdot kernels (dense convs, linears; hand schedules) or the NEON "
            "depthwise kernel, requantization fused, weights flushed from the caches before each call",
            "fp32 = the layer as one Relax op on TVM's CPU pipeline, as the build runs float layers",
            "weights narrower than 8 bits run on the int8 kernels (codes held in int8): they cost the w8 entry",
        ]
        if self.float_only:
            notes.append(f"no integer kernel here, timed in fp32 only: {', '.join(self.float_only)}")
        return notes
