"""What a backend family is, and how a target's data picks one.

A :class:`Backend` owns everything that depends on the hardware family: its integer
conventions (:class:`Conventions`: the code types its kernels read, their channel multiples,
the widths they execute), its lowerings (a :class:`~lcpaq.backends.common.relax_lower.LoweringTable`,
as TVM's per-target legalize tables), its Relax pipeline and schedules, its tuning rules, how
the device is reached and how one layer is timed. Generic code (integerize, the Relax lowering
framework, build, measure, profile) asks the backend and assumes nothing.

A target file names its family (``backend = "x86-vnni"``); :func:`backend_for` finds the
backend registered under that name. Families live in sub-packages of ``lcpaq.backends``
(``x86/`` ...), each registering itself with :func:`register_backend` on import; the registry
imports every sub-package once, so adding a family is one new package and no edit here, and
adding a target of a known family is a data file.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import lcpaq.backends as pkg
from lcpaq.backends.common.op_args import conv_geometry
from lcpaq.hw_targets.host import host_cpu_name, host_support
from lcpaq.hw_targets.target import Target
from lcpaq.ir.capture import get_attr
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import FLOAT_BITS, BitAssignment, Executable

if TYPE_CHECKING:  # pragma: no cover
    import torch.fx as fx
    import tvm

    from lcpaq.backends.common.relax_lower import LoweringTable


@dataclass(frozen=True)
class Conventions:
    """How a family's integer kernels want their data.

    ``act_dtype``: the type activation codes are stored in (``uint8``: VNNI multiplies u8 x s8;
    ``int8``: ARM sdot multiplies s8 x s8). ``integer_bits``: the widest quantizer width the
    kernels execute as integers (narrower weights are held in int8 codes); a wider quantizer runs
    in float. ``wide_bits``: the widest quantizer width of the family's *wide* conv and linear
    kernels (16: int16 activation codes and weights up to 16 bits, int64 accumulation); equal
    to None when it has none. ``in_multiple`` / ``out_multiple``: channel counts
    the GEMM kernels pad their reduction and output dimensions to. ``integer_glue``: the family lowers the integer
    transformer glue (layer norm, softmax, GELU on codes, :mod:`~lcpaq.backends.common.integer_glue`);
    without it, that glue runs in float."""

    act_dtype: str = "uint8"
    integer_bits: int = 8
    wide_bits: int | None = None
    in_multiple: int = 1
    out_multiple: int = 1
    integer_glue: bool = False

    def __post_init__(self) -> None:
        if self.act_dtype not in ("uint8", "int8"):
            raise ValueError(f"activation codes are uint8 or int8, got {self.act_dtype!r}")
        if self.wide_bits not in (None, 16):
            raise ValueError(f"wide kernels are 16-bit (or None: no wide kernels), got {self.wide_bits}")


@dataclass
class Device:
    """A device reached by a backend: ``dev`` is the TVM device its arrays live on; ``remote``
    the RPC session when the device is another machine (None: this one); ``emulation`` what
    emulates that machine (None: real hardware), for labelling its timings."""

    dev: Any
    remote: Any = None
    emulation: str | None = None

    def tensor(self, array: Any) -> Any:
        import numpy as np
        import tvm

        return tvm.runtime.tensor(np.ascontiguousarray(array), self.dev)

    def module(self, executable: Any, export: Callable[[Any, str], None]) -> Any:
        """``executable`` where this device can run it: itself here, or exported with ``export``
        (the backend's), uploaded and loaded on the remote machine."""
        if self.remote is None:
            return executable
        from lcpaq.backends.common.remote import load_remote

        return load_remote(self.remote, executable, export)

    def describe(self) -> str:
        return "this machine" if self.remote is None else ("an emulated board" if self.emulation else "the board")


class Backend(ABC):
    """One hardware family. Subclasses set the class attributes and implement the methods."""

    #: The name target files give in ``backend = "..."``.
    name: ClassVar[str]
    conventions: ClassVar[Conventions]
    #: Op kinds (``conv``, ``linear``, ``matmul``, ``embedding``) with an integer kernel, and the
    #: weight widths those kernels compute at.
    integer_kernels: ClassVar[dict[str, tuple[int, ...]]]
    #: Whether the family tunes its kernels (``--trials``); one that does not builds with its
    #: hand schedules only and refuses trials in one line.
    tunable: ClassVar[bool] = False

    # -- the target ----------------------------------------------------------------------------
    @abstractmethod
    def tvm_target(self, target: Target) -> "tvm.target.Target":
        """The resolved TVM target to compile for (host CPU names resolved, core counts set)."""

    def unavailable(self, target: Target) -> str | None:
        """Why ``target``'s device cannot be reached from here (one line), None when it can be
        tried: a local device whose CPU lacks the target's features, or an RPC target with no
        board given."""
        if target.device == "local":
            support = host_support(target)
            return None if support.ok else f"target {target.name!r} cannot run on this machine: {support}"
        if target.device == "rpc":
            if target.remote is None:
                return (f"target {target.name!r} runs on a board reached over RPC: give --rpc HOST:PORT or "
                        "--tracker HOST:PORT --key NAME (an emulated board on this machine: `make arm-board`)")
            return None
        return f"target {target.name!r} is reached over {target.device!r}, which backend {self.name!r} does not support"

    def check_available(self, target: Target) -> None:
        """Raise ConfigError (one line) unless ``target``'s device can be reached from here."""
        reason = self.unavailable(target)
        if reason:
            raise ConfigError(reason)

    def device(self, target: Target) -> Device:
        """The device models are run and timed on: this machine's CPU, or the board's over RPC
        (connected now, or the session this process already holds to it: a board serves one
        session at a time; ConfigError naming the address if it cannot be reached)."""
        import tvm

        self.check_available(target)
        if target.remote is None:
            return Device(tvm.cpu(0))
        from lcpaq.backends.common.remote import board_device

        triple = str(target.tvm_target.get("mtriple") or platform.machine())
        return board_device(target.remote, triple.split("-")[0].lower().replace("arm64", "aarch64"))

    def check_toolchain(self, target: Target) -> None:
        """ConfigError (one line) when a tool the family builds with is missing here (checked
        before any work; default: TVM's own LLVM needs nothing else)."""

    def export(self, executable: Any, path: str) -> None:
        """Write ``executable`` as a shared library the device loads (default: this machine's
        compiler; cross-compiling families link with their toolchain)."""
        executable.export_library(path)

    # -- what executes -------------------------------------------------------------------------
    def executes(self, kind: str, bits: BitAssignment) -> bool:
        """Whether a layer of ``kind`` at ``bits`` runs on an integer kernel of this family at
        those widths (weights narrower than a kernel width are unpacked to it)."""
        if bits.w_bits == FLOAT_BITS and bits.a_bits == FLOAT_BITS:
            return False
        widths = self.integer_kernels.get(kind, ())
        lookup = kind == "embedding" and bits.a_bits == FLOAT_BITS
        w = bits.a_bits if kind == "matmul" else bits.w_bits
        # a kernel of width W reads activations up to W bits (the 8-bit ones: integer_bits)
        return any(w <= width and (lookup or bits.a_bits <= max(width, self.conventions.integer_bits)) for width in widths)

    def layer_executes(self, gm: "fx.GraphModule", layer: Any, bits: BitAssignment) -> bool:
        """:meth:`executes` for one layer (its geometry too). Default: as its kind says."""
        return self.executes(layer.kind, bits)

    def has_integer_kernel(self, gm: "fx.GraphModule", layer: Any) -> bool:
        """Whether ``layer`` (a :class:`~lcpaq.ir.layers.QuantLayer`: its op and geometry, not
        only its kind) has an integer kernel in this family. Default: its op kind has one."""
        return layer.kind in self.integer_kernels

    def layer_precisions(self, gm: "fx.GraphModule", layer: Any, target: Target) -> Executable:
        """The precisions this family executes for ``layer`` on ``target``: float always, and,
        where the layer has an integer kernel, each precision the target offers for its kind
        that the kernel computes (:meth:`layer_executes`). Float alone comes with why."""
        fp32 = BitAssignment(FLOAT_BITS, FLOAT_BITS)
        if not self.has_integer_kernel(gm, layer):
            return Executable((fp32,), f"backend {self.name!r} has no integer kernel for {describe_layer(gm, layer)}")
        bits = tuple(c for c in target.candidates(layer.kind) if c != fp32 and self.layer_executes(gm, layer, c))
        why = "" if bits else f"backend {self.name!r} executes none of the precisions target {target.name!r} offers for {layer.kind} layers"
        return Executable((*bits, fp32), why)

    # -- lowering and compilation --------------------------------------------------------------
    @property
    @abstractmethod
    def lowerings(self) -> "LoweringTable":
        """The family's lowering table (registered lowerings of integer-graph ops)."""

    @abstractmethod
    def compile(self, mod: "tvm.IRModule", target: "tvm.target.Target") -> Any:
        """Compile a Relax module with the family's pipeline; returns the executable."""

    def code_schedule(self) -> Callable[[Any], Any] | None:
        """How the code kernels (quantize, requantize, residual adds, pools, integer matmul) are
        scheduled: the CPU families' vectorizing schedule (default), or None to leave them to the
        family's pipeline (a GPU's dlight rules)."""
        from lcpaq.backends.common.code_kernels import schedule_elementwise

        return schedule_elementwise

    def check_trials(self, trials: int) -> None:
        """ConfigError (one line) for ``trials`` > 0 on a family that does not tune."""
        if trials > 0 and not self.tunable:
            raise ConfigError(f"backend {self.name!r} does not tune its kernels yet: it builds with its hand schedules (--trials 0)")

    def kernel_schedule(self, tag: str, trials: int, tvm_target: "tvm.target.Target",
                        choices: dict[str, str]) -> Callable[[Any, Callable[[Any], Any]], Any]:
        """How a tunable GEMM kernel is scheduled: ``schedule(func, hand)``. Default: the hand
        schedule. A family with tuning rules overrides this (trials > 0)."""
        return lambda func, hand: hand(func)

    # -- profiling -----------------------------------------------------------------------------
    @abstractmethod
    def layer_timer(self, target: Target, trials: int, repeats: int, number: int, seed: int) -> "LayerTimer":
        """What times one quantizable layer of a costed graph on the target's device."""

    def device_name(self, target: Target) -> str:
        """The device, in words, for latency tables and reports."""
        if target.device == "local":
            return f"{host_cpu_name()} ({os.cpu_count()} logical CPUs)"
        return f"{target.description} over RPC ({target.remote})" if target.remote else target.device


def describe_layer(gm: "fx.GraphModule", layer: Any) -> str:
    """A layer in words, for messages: its kind and op, with a conv's groups, dilation and kernel."""
    text = f"{layer.kind} {layer.name} ({layer.node.target}"
    if layer.kind == "conv" and layer.weight is not None:
        geo = conv_geometry(layer.node)
        kernel = "x".join(str(k) for k in get_attr(gm, layer.weight_name).shape[2:])
        if geo is not None:
            text += f", groups={geo['groups']}, dilation={geo['dilation']}"
        text += f", kernel {kernel}"
    return text + ")"


class LayerTimer(ABC):
    """Times single layers for :func:`lcpaq.backends.common.profile.profile_model`. ``emulation``
    says what emulates the device it times on (None: real hardware)."""

    emulation: str | None = None

    @abstractmethod
    def measure(self, gm: "fx.GraphModule", layer: Any) -> dict[str, float]:
        """Seconds of ``layer`` (a :class:`~lcpaq.ir.layers.QuantLayer`) by precision key, at
        batch 1: ``fp32`` always, and the integer keys it has a kernel for."""

    @abstractmethod
    def notes(self) -> list[str]:
        """How the layers were measured (written into the latency table)."""


_REGISTRY: dict[str, type[Backend]] = {}
_DISCOVERED = False


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make ``cls`` the backend of targets that say ``backend = cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two backends are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every family package under ``lcpaq.backends`` (each registers itself) once."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg and info.name != "common":
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _DISCOVERED = True


def available_backends() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def backend_for(target: Target) -> Backend:
    """The backend of ``target``; ConfigError (one line) for a target with none, or whose family
    is not installed."""
    if target.backend is None:
        raise ConfigError(f"target {target.name!r} is simulation only: it names no backend to build with")
    _discover()
    cls = _REGISTRY.get(target.backend)
    if cls is None:
        raise ConfigError(
            f"target {target.name!r} needs backend {target.backend!r}, which is not implemented; "
            f"backends: {', '.join(sorted(_REGISTRY)) or 'none'}"
        )
    return cls()


def runs_here(target: Target) -> bool:
    """Whether ``target`` has a backend and its device is reachable from this machine."""
    try:
        backend_for(target).check_available(target)
    except ConfigError:
        return False
    return True
