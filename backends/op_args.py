"""Reading the arguments of captured ATen conv and pooling nodes (shared by the integer lowering
and the float Relax lowerings); an unsupported form is a LoweringError naming the node."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from lcpaq.ir.errors import LoweringError

aten = torch.ops.aten


def source_location(node: fx.Node) -> str:
    """`` (File "model.py", line 12, ...)`` from the node's captured stack trace, or ``""``."""
    trace = node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
    return f" ({lines[-1]})" if lines else ""


def conv_args(node: fx.Node) -> dict[str, int]:
    """stride, padding and groups of a 2-d conv with one stride, one padding and no dilation."""
    from lcpaq.backends.profile import conv_geometry

    geo = conv_geometry(node)
    if geo is None or geo["dilation"] != 1:
        raise LoweringError(f"{node.name}{source_location(node)}: only 2-d convs with one stride, padding and no dilation have an integer kernel")
    return dict(stride=geo["stride"], padding=geo["padding"], groups=geo["groups"])


def pool_args(node: fx.Node) -> tuple[int, int, int]:
    a = list(node.args) + [None] * 6
    k = _single(a[1], node)
    s = _single(a[2] if a[2] else a[1], node)
    p = _single(a[3] if a[3] is not None else 0, node)
    if (a[4] not in (None, 1, [1, 1])) or a[5]:
        raise LoweringError(f"{node.name}{source_location(node)}: max_pool2d with dilation or ceil_mode has no integer kernel")
    return k, s, p


def _single(v: Any, node: fx.Node) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, (list, tuple)) and v and all(x == v[0] for x in v):
        return int(v[0])
    raise LoweringError(f"{node.name}{source_location(node)}: non-square pooling window {v!r} has no integer kernel")


def is_global_pool(node: fx.Node) -> bool:
    if node.target is aten.adaptive_avg_pool2d.default:
        return list(node.args[1]) in ([1, 1], [1])
    dims = sorted(d % 4 for d in node.args[1])
    return dims == [2, 3]


def keepdim(node: fx.Node) -> bool:
    return bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
