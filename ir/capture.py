"""Capture a ``torch.nn.Module`` and example inputs as a ``torch.fx.GraphModule`` of ATen ops.

Capture uses ``torch.export`` (non-strict), which handles CNNs and Hugging Face transformers
alike; ``torch.fx.symbolic_trace`` fails on transformers 5. The batch dimension is exported
as dynamic where the model allows it, so calibration and evaluation may use other batch sizes.
"""
from __future__ import annotations

import contextlib
import copy
import io
import linecache
import logging
import os
import traceback
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch.export import Dim

from lcpaq.ir.errors import CaptureError
from lcpaq.ir.meta import CAPTURE, CaptureInfo

_TORCH_DIR = os.path.dirname(torch.__file__)
_IR_DIR = os.path.dirname(__file__)


def capture(model: torch.nn.Module, example_inputs: Sequence[Any], name: str | None = None) -> fx.GraphModule:
    """Return a GraphModule computing ``model`` on inputs like ``example_inputs``.

    Raises CaptureError naming the failing operation and the model's source line."""
    model = model.eval()
    args = tuple(example_inputs)
    model_name = name or type(model).__name__
    try:
        with _quiet_torch_logs():
            exported = _export_dynamic_batch(model, args)
    except Exception as exc:  # torch raises many types; all become one clear line
        raise CaptureError(_describe_failure(model_name, exc)) from exc
    gm = exported.module()
    _drop_guards(gm)
    input_names = tuple(n.name for n in gm.graph.nodes if n.op == "placeholder")
    CAPTURE.set(gm, CaptureInfo(model_name=model_name, method="torch.export", input_names=input_names))
    return gm


def _export_dynamic_batch(model: torch.nn.Module, args: tuple) -> torch.export.ExportedProgram:
    """Export with a dynamic batch dimension; fall back to static shapes if the model needs them."""
    if not all(isinstance(a, torch.Tensor) and a.dim() >= 1 for a in args):
        return torch.export.export(model, args, strict=False)
    # A batch of 1 would be specialised by export; trace with two rows so the dim stays symbolic.
    wide = tuple(a if a.shape[0] > 1 else torch.cat([a, a]) for a in args)
    dynamic = tuple({0: Dim.AUTO} for _ in args)
    try:
        return torch.export.export(model, wide, dynamic_shapes=dynamic, strict=False)
    except Exception:
        return torch.export.export(model, args, strict=False)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch logs and prints graph dumps on export failures; the user gets our one-line error."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _drop_guards(gm: fx.GraphModule) -> None:
    """Remove export's input-shape guard call: later passes own the graph and its shapes."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        delattr(gm, "_guards_fn")
    gm.recompile()


def _describe_failure(model_name: str, exc: BaseException) -> str:
    frame = _user_frame(exc)
    reason = _first_line(exc)
    if frame is None:
        return f"cannot capture model {model_name!r}: {reason}"
    code = (linecache.getline(frame.filename, frame.lineno) or "").strip()
    where = f"{frame.filename}:{frame.lineno}"
    op = _op_name(exc, code)
    return f"cannot capture model {model_name!r}: {op} at {where} (`{code}`): {reason}"


def _user_frame(exc: BaseException) -> traceback.FrameSummary | None:
    """The innermost frame of model code (outside torch and lcpaq) in the exception chain."""
    found = None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            path = os.path.abspath(frame.filename)
            if not path.startswith(_TORCH_DIR) and not path.startswith(_IR_DIR) and "<" not in frame.filename:
                found = frame
        exc = exc.__cause__ or exc.__context__
    return found


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return type(exc).__name__


def _op_name(exc: BaseException, code: str) -> str:
    """A short name of the operation that failed, from torch's message or the source line."""
    text = str(exc)
    for marker, op in (
        ("data-dependent", "data-dependent control flow"),
        ("Could not guard on", "data-dependent control flow"),
        (".numpy()", "Tensor.numpy"),
        ("item()", "Tensor.item"),
    ):
        if marker in text:
            return op
    return f"operation {type(exc).__name__}" if not code else f"`{code.split('(')[0].strip()}`"


def used_tensors(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor the graph reads through a used ``get_attr``, by its qualified name."""
    out: dict[str, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.users:
            value = get_attr(gm, node.target)
            if isinstance(value, torch.Tensor):
                out[node.target] = value
    return out


def get_attr(gm: torch.nn.Module, qualname: str) -> Any:
    obj: Any = gm
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def set_attr(gm: torch.nn.Module, qualname: str, value: Any) -> None:
    """Set ``gm.<qualname>``, creating empty parent modules as needed."""
    *parents, leaf = qualname.split(".")
    obj: torch.nn.Module = gm
    for part in parents:
        if not hasattr(obj, part):
            obj.add_module(part, torch.nn.Module())
        obj = getattr(obj, part)
    if isinstance(value, torch.nn.Parameter) or isinstance(value, torch.nn.Module):
        setattr(obj, leaf, value)
    else:
        if leaf in obj._parameters:
            del obj._parameters[leaf]
        obj.register_buffer(leaf, value)


def copy_sharing_tensors(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy of ``gm`` (graph, modules, meta) whose parameters and buffers are ``gm``'s
    own tensors, not copies. Passes replace tensors (``set_attr``) rather than write into them,
    so rewriting the copy leaves ``gm`` as it was; and the copies of one graph share the
    weights' quantized forms (:mod:`lcpaq.ir.weight_codes`)."""
    memo: dict[int, Any] = {id(t): t for t in (*gm.parameters(), *gm.buffers())}
    return copy.deepcopy(gm, memo)
