"""Pass infrastructure, in the manner of torch.fx's PassBase and onnx_ir's passes.

A pass is a frozen dataclass whose fields are its options. It declares a kebab-case ``name``,
the annotation keys it ``reads`` and ``writes``, and whether it ``rewrites`` the graph. The base
class checks the contract around ``call``: inputs present before, outputs present after, and an
analysis pass leaving the graph's structure untouched. Every error names the pass.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch.fx as fx

from lcpaq.ir.errors import LcpaqError, PassContractError
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import MetaKey

if TYPE_CHECKING:
    from lcpaq.passes.context import PassContext


class PassError(LcpaqError):
    """A pass failed; the message starts with the pass's name."""


@dataclass(frozen=True)
class PassResult:
    graph_module: fx.GraphModule
    modified: bool


_REGISTRY: dict[str, type["Pass"]] = {}


def register_pass(cls: type["Pass"]) -> type["Pass"]:
    """Class decorator: make a pass available to pipeline specs under its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two passes named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type["Pass"]]:
    return dict(sorted(_REGISTRY.items()))


@dataclass(frozen=True)
class Pass(ABC):
    name: ClassVar[str]
    reads: ClassVar[tuple[MetaKey, ...]] = ()
    writes: ClassVar[tuple[MetaKey, ...]] = ()
    rewrites: ClassVar[bool] = False

    @abstractmethod
    def call(self, gm: fx.GraphModule, ctx: "PassContext") -> PassResult:
        """Do the work; the contract checks happen in ``__call__``."""

    def __call__(self, gm: fx.GraphModule, ctx: "PassContext") -> PassResult:
        self.requires(gm)
        before = None if self.rewrites else structure(gm)
        try:
            result = self.call(gm, ctx)
        except PassError:
            raise
        except LcpaqError as exc:
            raise type(exc)(f"pass '{self.name}': {exc}") from exc
        except Exception as exc:
            raise PassError(f"pass '{self.name}' failed: {type(exc).__name__}: {exc}") from exc
        if before is not None and structure(result.graph_module) != before:
            raise PassContractError(f"pass '{self.name}' is an analysis pass but changed the graph")
        self.ensures(result.graph_module)
        return result

    def requires(self, gm: fx.GraphModule) -> None:
        """Precondition: every key this pass reads is present where its scope says."""
        for key in self.reads:
            missing = _missing(gm, key)
            if missing:
                raise PassContractError(
                    f"pass '{self.name}' needs '{key.name}' ({key.doc}), missing on {missing}; "
                    f"run a pass that writes it first ({_writers(key)})"
                )

    def ensures(self, gm: fx.GraphModule) -> None:
        """Postcondition: every key this pass writes is present where its scope says."""
        for key in self.writes:
            missing = _missing(gm, key)
            if missing:
                raise PassContractError(f"pass '{self.name}' promised '{key.name}' but left it missing on {missing}")

    def spec(self) -> str:
        """This pass as a pipeline-spec item; options at their defaults are left out, and so
        are fields declared ``compare=False`` (in-memory helpers set in code, not options)."""
        opts = [
            f"{f.name}={_fmt(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
            if f.compare and getattr(self, f.name) != _default(f)
        ]
        return self.name + (f"{{{','.join(opts)}}}" if opts else "")


def structure(gm: fx.GraphModule) -> tuple:
    """A fingerprint of the graph's nodes and edges (not of their annotations)."""
    return tuple((n.op, str(n.target), tuple(str(a) for a in n.all_input_nodes)) for n in gm.graph.nodes)


def _missing(gm: fx.GraphModule, key: MetaKey) -> str | None:
    if key.scope == "graph":
        return None if key.has(gm) else "the graph module"
    layers = find_layers(gm)
    absent = [layer.name for layer in layers if not key.has(layer.node)]
    if not absent:
        return None
    more = f" and {len(absent) - 3} more" if len(absent) > 3 else ""
    return f"layer(s) {', '.join(absent[:3])}{more}"


def _writers(key: MetaKey) -> str:
    names = [name for name, cls in registered_passes().items() if key in cls.writes]
    return ", ".join(names) or "none registered"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    return str(value)
