"""The QDQ rewrite of an exported graph (onnx-graphsurgeon): each quantizer marker
(:mod:`lcpaq.backends.onnx.markers`) becomes the ONNX form of that quantizer.

- On a weight (a constant): its integer codes, computed by lcpaq's own quantizer, stored as an
  initializer of the code type, then ``DequantizeLinear`` (per channel along the quantizer's
  axis, or per tensor): the ``QuantizeLinear`` is folded away.
- On an activation: ``QuantizeLinear`` then ``DequantizeLinear``, per tensor.

Code types: the narrowest ONNX integer type of the quantizer's signedness that holds its
codes: (u)int4, (u)int8 or (u)int16 (opset 21). A 3-bit weight is stored as int4 codes, a
6-bit one as int8: the same values. Saturation is where ONNX and lcpaq differ. ONNX saturates
to the full type (int8: [-128, 127]), lcpaq to the quantizer's range (symmetric 8-bit:
[-127, 127]; 6-bit codes in int8: [-31, 31]). Where the two differ, a ``Clip`` to the
quantizer's range goes before ``QuantizeLinear``, and the model then computes exactly lcpaq's
fake quantization. Weights need none: their codes are lcpaq's.

The TensorRT flavour (``flavor="tensorrt"``) writes what TensorRT's explicit quantization
reads: symmetric int8 Q/DQ only (zero points 0), no ``Clip``. Any other quantizer is refused
in one line.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch

from lcpaq.backends.onnx.markers import DOMAIN, OP
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.qops import FakeQuantize
from lcpaq.ir.quantizer import quantize

FLAVORS = ("qdq", "tensorrt")
OPSET = 21
#: (signed, storage bits) -> (ONNX type, numpy type holding the codes before packing)
_TYPES = {
    (True, 4): (onnx.TensorProto.INT4, np.int8), (False, 4): (onnx.TensorProto.UINT4, np.uint8),
    (True, 8): (onnx.TensorProto.INT8, np.int8), (False, 8): (onnx.TensorProto.UINT8, np.uint8),
    (True, 16): (onnx.TensorProto.INT16, np.int16), (False, 16): (onnx.TensorProto.UINT16, np.uint16),
}


def storage(spec: Any) -> tuple[int, int, type, int, int]:
    """(storage bits, ONNX type, numpy type, type min, type max) of a quantizer's codes."""
    bits = next(b for b in (4, 8, 16) if spec.bits <= b)
    onnx_type, np_type = _TYPES[(spec.symmetric, bits)]
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if spec.symmetric else (0, 2**bits - 1)
    return bits, onnx_type, np_type, lo, hi


def _check_flavor(name: str, fq: FakeQuantize, flavor: str) -> None:
    spec = fq.spec
    if flavor == "tensorrt" and (spec.bits != 8 or not spec.symmetric or bool((fq.zero_point != 0).any())):
        raise ConfigError(f"quantizer {name} is {spec.dtype} ({'symmetric' if spec.symmetric else 'asymmetric'}): "
                          "the tensorrt flavour takes symmetric int8 only; export with --onnx-flavor qdq")
    if spec.bits > 16:
        raise ConfigError(f"quantizer {name} has {spec.bits}-bit codes: ONNX has integer types up to 16 bits")


def _constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a constant input (an initializer, or a Constant node's output)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        return np.asarray(tensor.inputs[0].attrs["value"].values)
    return None


class QdqRewriter:
    """Replaces the markers of one exported graph; ``packed`` collects the initializers to
    retype to 4-bit types after export (graphsurgeon writes numpy's 8-bit types)."""

    def __init__(self, quantizers: dict[int, tuple[str, FakeQuantize]], flavor: str) -> None:
        if flavor not in FLAVORS:
            raise ConfigError(f"unknown ONNX flavour {flavor!r}; choose from {', '.join(FLAVORS)}")
        self.quantizers, self.flavor = quantizers, flavor
        self.packed: dict[str, int] = {}

    def _qparams(self, label: str, fq: FakeQuantize, np_type: type, onnx_type: int, per_channel: bool) -> tuple[gs.Constant, gs.Constant]:
        scale = fq.scale.detach().float().numpy()
        zp = fq.zero_point.detach().round().numpy().astype(np_type)
        if not per_channel:
            scale, zp = scale.reshape(()), zp.reshape(())
        zp_const = gs.Constant(f"{label}_zero_point", zp)
        if onnx_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            self.packed[zp_const.name] = onnx_type
        return gs.Constant(f"{label}_scale", scale.astype(np.float32)), zp_const

    def rewrite(self, graph: gs.Graph, node: gs.Node) -> None:
        name, fq = self.quantizers[int(node.attrs["id"])]
        _check_flavor(name, fq, self.flavor)
        spec, label = fq.spec, f"lcpaq_q{int(node.attrs['id'])}"
        _, onnx_type, np_type, type_lo, type_hi = storage(spec)
        x, y = node.inputs[0], node.outputs[0]
        node.outputs.clear()
        weight = _constant_values(x)
        if weight is not None:
            codes = quantize(torch.from_numpy(weight.astype(np.float32)), fq.scale, fq.zero_point, spec).numpy().astype(np_type)
            q = gs.Constant(f"{label}_codes", codes)
            if onnx_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
                self.packed[q.name] = onnx_type
            scale, zp = self._qparams(label, fq, np_type, onnx_type, spec.ch_axis is not None)
            attrs = {"axis": spec.ch_axis % weight.ndim} if spec.ch_axis is not None else {}
            graph.nodes.append(gs.Node("DequantizeLinear", f"{label}_dq", attrs, [q, scale, zp], [y]))
            return
        if spec.ch_axis is not None:
            raise ConfigError(f"quantizer {name} quantizes an activation per channel: ONNX QuantizeLinear here is per tensor")
        scale, zp = self._qparams(label, fq, np_type, onnx_type, False)
        source = x
        if self.flavor == "qdq" and (spec.qmin > type_lo or spec.qmax < type_hi):  # lcpaq saturates inside the type
            s, z = float(scale.values), float(zp.values)
            bounds = [gs.Constant(f"{label}_min", np.array((spec.qmin - z) * s, np.float32)),
                      gs.Constant(f"{label}_max", np.array((spec.qmax - z) * s, np.float32))]
            source = gs.Variable(f"{label}_clipped", dtype=np.float32)
            graph.nodes.append(gs.Node("Clip", f"{label}_clip", {}, [x, *bounds], [source]))
        codes = gs.Variable(f"{label}_codes")  # its type is the zero point's (shape inference)
        graph.nodes.append(gs.Node("QuantizeLinear", f"{label}_q", {}, [source, scale, zp], [codes]))
        graph.nodes.append(gs.Node("DequantizeLinear", f"{label}_dq", {}, [codes, scale, zp], [y]))


def _retype_packed(model: onnx.ModelProto, packed: dict[str, int]) -> None:
    """Initializers written as 8-bit numpy arrays, rewritten as packed (u)int4 tensors."""
    for i, init in enumerate(model.graph.initializer):
        if init.name in packed:
            values = onnx.numpy_helper.to_array(init)
            model.graph.initializer[i].CopyFrom(onnx.helper.make_tensor(init.name, packed[init.name], values.shape, values.flatten().tolist()))
    for value in model.graph.value_info:
        if value.name in packed:
            value.type.tensor_type.elem_type = packed[value.name]


def _drop_constant_identities(graph: gs.Graph) -> None:
    """Identity nodes the exporter writes for repeated constants: their readers read the constant."""
    for node in [n for n in graph.nodes if n.op == "Identity" and isinstance(n.inputs[0], gs.Constant)]:
        source, out = node.inputs[0], node.outputs[0]
        if out in graph.outputs:
            continue
        for reader in list(out.outputs):
            reader.inputs[reader.inputs.index(out)] = source
        node.outputs.clear()


def to_qdq(model: onnx.ModelProto, quantizers: dict[int, tuple[str, FakeQuantize]], flavor: str = "qdq") -> onnx.ModelProto:
    """``model`` (exported with markers) with every marker replaced, cleaned up, at opset 21."""
    graph = gs.import_onnx(model)
    rewriter = QdqRewriter(quantizers, flavor)
    markers = [n for n in graph.nodes if n.op == OP and n.domain == DOMAIN]
    for node in markers:
        rewriter.rewrite(graph, node)
    _drop_constant_identities(graph)
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    _retype_packed(out, rewriter.packed)
    del out.opset_import[:]
    out.opset_import.append(onnx.helper.make_opsetid("", OPSET))
    out.ir_version = max(out.ir_version, 10)  # opset 21 needs IR 10
    return out
