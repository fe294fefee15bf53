"""Reading the arguments of captured ATen conv and pooling nodes (shared by the integer lowering,
the backends' lowerings and the profiler); an unsupported form is a LoweringError naming the node."""
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
        if a[6] or any(isinstance(v, (list, tuple)) and len(v) != 2 for v in a[3:6]):
            return None  # transposed, or not 2-d (the lists have one entry per spatial dim)
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


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output extent of a convolution or pooling window along one dimension."""
    out = (size + 2 * padding - kernel) // stride + 1
    if out <= 0:
        raise ValueError(f"conv2d kernel {kernel} is larger than the padded input {size + 2 * padding}")
    return out


def conv_args(node: fx.Node) -> dict[str, int]:
    """stride, padding and groups of a 2-d conv with one stride, one padding and no dilation."""
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


def pool_reason(node: fx.Node) -> str | None:
    """Why a max_pool2d node has no integer form (None if it has one)."""
    try:
        pool_args(node)
    except LoweringError as exc:
        return str(exc).split(": ", 1)[-1]
    return None


def _single(v: Any, node: fx.Node) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, (list, tuple)) and v and all(x == v[0] for x in v):
        return int(v[0])
    raise LoweringError(f"{node.name}{source_location(node)}: non-square pooling window {v!r} has no integer kernel")


def is_global_pool(node: fx.Node) -> bool:
    """An average over H and W of a 4-d value: ``adaptive_avg_pool2d(x, 1)`` or ``mean`` over
    dims (2, 3) (negative dims counted from the input's rank, when its shape is known)."""
    if node.target is aten.adaptive_avg_pool2d.default:
        return list(node.args[1]) in ([1, 1], [1])
    if node.target is not aten.mean.dim or len(node.args) < 2 or not isinstance(node.args[1], (list, tuple)):
        return False
    val = node.args[0].meta.get("val") if isinstance(node.args[0], fx.Node) else None
    rank = val.dim() if hasattr(val, "dim") else 4
    return rank == 4 and sorted(d % rank for d in node.args[1]) == [2, 3]


def integer_conv_reason(node: fx.Node) -> str | None:
    """Why a conv node has no integer form (None if it has one): integer convs are 2-d, not
    transposed, with one stride, one padding (symmetric) and no dilation; any groups, any kernel."""
    geo = conv_geometry(node)
    if geo is None:
        return "conv that is not 2-d, is transposed, or has per-axis stride / padding / dilation"
    if geo["dilation"] != 1:
        return f"dilated conv (dilation={geo['dilation']})"
    return None


def keepdim(node: fx.Node) -> bool:
    return bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
