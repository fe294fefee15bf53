"""Where the quantizers were, through torch's ONNX exporter.

Each ``FakeQuantize`` of a copy of the graph is replaced by a call of the custom op
``lcpaq_onnx::marker(x, id)`` (the identity in torch), which the TorchScript exporter writes as
a node ``Marker`` of domain ``lcpaq_onnx`` carrying ``id``. Its output keeps its input's type
and shape, so shape inference goes on through it (a custom-domain node without them stops the
exporter's conv shape inference). :mod:`lcpaq.backends.onnx.qdq` then replaces every marker by
the QDQ form of quantizer ``id``.
"""
from __future__ import annotations

import copy

import torch
import torch.fx as fx

from lcpaq.ir.qops import FakeQuantize

DOMAIN = "lcpaq_onnx"
OP = "Marker"

_LIB = torch.library.Library(DOMAIN, "DEF")
_LIB.define("marker(Tensor x, int id) -> Tensor")


@torch.library.impl(_LIB, "marker", "CompositeExplicitAutograd")
def _marker(x: torch.Tensor, id: int) -> torch.Tensor:  # noqa: A002 (the op's argument name)
    return x.clone()


def _symbolic(g, x, id):  # noqa: ANN001, A002 (the exporter's calling convention)
    out = g.op(f"{DOMAIN}::{OP}", x, id_i=id)
    out.setType(x.type())
    return out


def _register_symbolic() -> None:
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx._internal.torchscript_exporter import symbolic_helper

    register_custom_op_symbolic(f"{DOMAIN}::marker", symbolic_helper.parse_args("v", "i")(_symbolic), 1)


class Marker(torch.nn.Module):
    """Stands for quantizer ``id`` in an exported graph."""

    def __init__(self, id: int) -> None:  # noqa: A002
        super().__init__()
        self.id = id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.lcpaq_onnx.marker(x, self.id)


def marked_copy(gm: fx.GraphModule) -> tuple[fx.GraphModule, dict[int, tuple[str, FakeQuantize]]]:
    """A copy of ``gm`` with each enabled quantizer replaced by a :class:`Marker`, and the
    quantizers by marker id (their module names with them)."""
    _register_symbolic()
    out = copy.deepcopy(gm)
    quantizers: dict[int, tuple[str, FakeQuantize]] = {}
    for name, module in list(out.named_modules()):
        if isinstance(module, FakeQuantize) and module.enabled:
            quantizers[len(quantizers)] = (name, module)
            parent, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, attr, Marker(len(quantizers) - 1))
    return out, quantizers
