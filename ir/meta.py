"""Annotation keys and their values.

Every analysis result lives in ``node.meta`` (per-layer results) or in ``GraphModule.meta``
(whole-graph results) under one of the keys defined here, and nowhere else. Each value is a
small frozen dataclass that validates itself on construction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import torch.fx as fx

from lcpaq.ir.precision import (  # noqa: F401  (re-exported: the precision vocabulary)
    FLOAT_BITS, SUPPORTED_BITS, BitAssignment, LayerQuantSpec, QuantScheme, QuantSpec, check_bits,
)

T = TypeVar("T")

#: The quantities a budget bounds and the cost model computes, each in its natural unit:
#: bytes stored, bit operations, seconds, bytes of the largest activation input.
QUANTITIES: tuple[str, ...] = ("size", "bops", "latency", "act_memory")
SIZE, BOPS, LATENCY, ACT_MEMORY = QUANTITIES


@dataclass(frozen=True)
class MetaKey(Generic[T]):
    """A typed annotation key. ``scope`` says where it lives: on each quantizable layer's node,
    on every tensor-producing node, or on the graph module."""

    name: str
    value_type: type
    scope: Literal["layer", "node", "graph"]
    doc: str

    def get(self, owner: fx.Node | fx.GraphModule, default: Any = None) -> T | None:
        return owner.meta.get(self.name, default)

    def set(self, owner: fx.Node | fx.GraphModule, value: T) -> None:
        if not isinstance(value, self.value_type):
            raise TypeError(f"{self.name} takes {self.value_type.__name__}, got {type(value).__name__}")
        owner.meta[self.name] = value

    def has(self, owner: fx.Node | fx.GraphModule) -> bool:
        return self.name in owner.meta

    def require(self, owner: fx.Node | fx.GraphModule, producer: str) -> T:
        """The annotation; PassContractError naming the pass that writes it when it is missing."""
        if self.name not in owner.meta:
            from lcpaq.ir.errors import PassContractError

            what = f"node {owner.name}" if isinstance(owner, fx.Node) else "the graph"
            raise PassContractError(f"{what} has no {self.name} annotation; run {producer} first")
        return owner.meta[self.name]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class TensorShape:
    """Shape and dtype of the tensor a node produced on the example inputs."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise ValueError(f"invalid shape {self.shape}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LayerCost:
    """Bit-independent cost of one quantizable layer on the example inputs.

    ``params`` counts weight elements, ``bias`` bias elements (kept in int32 when quantized);
    ``macs`` are multiply-accumulates; ``act_elems`` counts the elements of the activation
    inputs that get quantized (both operands of an activation-activation matmul).
    ``stores_weight`` / ``stores_bias`` are False when an earlier layer (in graph order) reads
    the same tensor and carries its bytes: a shared tensor is stored once."""

    params: int
    macs: int
    act_elems: int
    out_elems: int
    bias: int = 0
    stores_weight: bool = True
    stores_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("params", "macs", "act_elems", "out_elems", "bias"):
            if getattr(self, name) < 0:
                raise ValueError(f"LayerCost.{name} must be >= 0")

    def bops(self, w_bits: int, a_bits: int) -> int:
        """Bit operations: MACs times the two operand widths (an activation-activation matmul
        has no weight, so both operands count at ``a_bits``)."""
        return self.macs * (w_bits if self.params else a_bits) * a_bits

    def weight_bytes(self, w_bits: int) -> float:
        """Stored size of weights at ``w_bits`` plus the bias (int32, or fp32 when w_bits=32),
        counting only the tensors this layer stores (see ``stores_weight``)."""
        return self.params * w_bits / 8 * self.stores_weight + self.bias * 4 * self.stores_bias

    def act_bytes(self, a_bits: int) -> float:
        return self.act_elems * a_bits / 8


@dataclass(frozen=True)
class FloatTensor:
    """A parameter no quantizable layer stores (a norm's affine weight, a recurrent layer's
    weights, a constant read by a float op): it stays in float whatever the assignment."""

    name: str
    bytes: int
    reason: str

    def __post_init__(self) -> None:
        if self.bytes < 0 or not self.reason:
            raise ValueError(f"FloatTensor {self.name!r} needs bytes >= 0 and a reason")


@dataclass(frozen=True)
class ModelCost:
    """Whole-graph totals at fp32; per-layer costs are in the ``lcpaq.cost`` node annotations.
    Every tensor is counted once, however many layers read it. ``float_tensors``: the
    parameters kept in float (their bytes are the part of the size no assignment changes)."""

    params: int
    quantizable_params: int
    macs: int
    fp32_bytes: int
    float_tensors: tuple[FloatTensor, ...] = ()

    @property
    def float_bytes(self) -> int:
        return sum(t.bytes for t in self.float_tensors)


@dataclass(frozen=True)
class ActRange:
    """Calibrated range [lo, hi] of one activation input, for quantization at ``bits``."""

    lo: float
    hi: float
    bits: int
    method: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.lo > self.hi:
            raise ValueError(f"invalid activation range [{self.lo}, {self.hi}]")
        check_bits(self.bits)


@dataclass(frozen=True)
class ActRanges:
    """Calibrated ranges of every activation input of one layer (outer tuple: inputs in
    argument order; inner: one range per calibrated bit-width)."""

    per_input: tuple[tuple[ActRange, ...], ...]

    def __post_init__(self) -> None:
        if not all(self.per_input):  # a weight-only layer (an embedding) has no inputs at all
            raise ValueError("ActRanges needs at least one range per input")

    def get(self, index: int, bits: int) -> ActRange:
        for r in self.per_input[index]:
            if r.bits == bits:
                return r
        have = ", ".join(str(r.bits) for r in self.per_input[index])
        raise KeyError(f"no {bits}-bit range calibrated (have {have}); calibrate with bits={bits}")


@dataclass(frozen=True)
class QuantizedInfo:
    """Set by the fake-quant rewrite on each layer it rewrote: the quantizers it inserted (the
    layer's precision stays in its ``lcpaq.qspec``)."""

    w_quantizer: str | None
    a_quantizers: tuple[str, ...]
    bias_corrected: bool = False


@dataclass(frozen=True)
class Sensitivity:
    """HAWQ-V2 sensitivity of one layer: ``weight[b]`` = tr(H_W) / n_W * ||Q_b(W) - W||^2 and
    ``act[b]`` the same for its activation inputs (summed over inputs), per candidate width b.
    Traces are Hutchinson estimates; ``rel_err`` is the standard error of the weight trace
    relative to its value after ``probes`` probes."""

    weight_trace: float
    act_trace: float
    weight: tuple[tuple[int, float], ...]
    act: tuple[tuple[int, float], ...]
    probes: int
    rel_err: float

    def __post_init__(self) -> None:
        for bits, value in (*self.weight, *self.act):
            check_bits(bits)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"sensitivity at {bits} bits must be finite and >= 0, got {value}")

    def of(self, bits: "BitAssignment") -> float:
        """Total sensitivity of the layer at a (weight, activation) assignment; 32 bits = 0."""
        w = 0.0 if bits.w_bits == FLOAT_BITS or not self.weight else dict(self.weight)[bits.w_bits]
        a = 0.0 if bits.a_bits == FLOAT_BITS else dict(self.act)[bits.a_bits]
        return w + a


@dataclass(frozen=True)
class Executable:
    """What the target's backend executes for one layer: ``bits`` (float, 32/32, always among
    them) and, when float is all it runs, ``reason`` (why there is no integer kernel)."""

    bits: tuple[BitAssignment, ...]
    reason: str = ""

    def __post_init__(self) -> None:
        if BitAssignment(FLOAT_BITS, FLOAT_BITS) not in self.bits:
            raise ValueError("a backend always executes a layer in float: bits must include 32/32")
        if not self.integer and not self.reason:
            raise ValueError("a layer executed in float only needs a reason")

    @property
    def integer(self) -> bool:
        """Whether any integer precision executes."""
        return any(b != BitAssignment(FLOAT_BITS, FLOAT_BITS) for b in self.bits)


@dataclass(frozen=True)
class FloatLayers:
    """Layers an assignment pass left in float because the backend executes none of the
    precisions it would have given them: (layer name, reason), in graph order."""

    layers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Budget:
    """One constraint of the assignment: ``quantity`` <= ``limit`` (in its natural unit)."""

    quantity: str
    limit: float
    text: str

    def __post_init__(self) -> None:
        if self.quantity not in QUANTITIES:
            raise ValueError(f"unknown budget quantity {self.quantity!r}; choose from {', '.join(QUANTITIES)}")


@dataclass(frozen=True)
class AssignmentResult:
    """Whole-graph result of the ILP: budgets, what the chosen assignment achieves, the
    objective (total sensitivity) and the solver's time."""

    budgets: tuple[Budget, ...]
    achieved: tuple[tuple[str, float], ...]
    sensitivity: float
    solve_seconds: float


@dataclass(frozen=True)
class ParetoPoint:
    budget: float
    achieved: float
    sensitivity: float
    assignment: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class ParetoFront:
    """Frontier of total sensitivity against each swept quantity (size, bops, latency)."""

    fronts: tuple[tuple[str, tuple[ParetoPoint, ...]], ...]
    sweep_seconds: float

    def front(self, quantity: str) -> tuple[ParetoPoint, ...]:
        return dict(self.fronts).get(quantity, ())


@dataclass(frozen=True)
class QuantizerRole:
    """On a quantizer node inserted by the fake-quant rewrite: what it quantizes."""

    role: Literal["weight", "act"]
    bits: int


@dataclass(frozen=True)
class CaptureInfo:
    """How the graph was captured, kept on the graph module."""

    model_name: str
    method: str
    input_names: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class CodeDomain:
    """What the integer codes of a tensor mean: ``real = (code - zero_point) * scale``, codes
    within [qmin, qmax]. Set by the integer lowering on every node producing codes."""

    scale: float
    zero_point: int
    qmin: int
    qmax: int
    dtype: Literal["uint8", "int8", "int16", "int32"] = "uint8"

    def __post_init__(self) -> None:
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"code domain needs a positive finite scale, got {self.scale}")
        if not self.qmin <= self.qmax:
            raise ValueError(f"code domain needs qmin <= qmax, got [{self.qmin}, {self.qmax}]")

    def code(self, real: float) -> int:
        """The code of ``real``, unclamped (round half to even, as the quantizers)."""
        return self.zero_point + round(real / self.scale)


SHAPE: MetaKey[TensorShape] = MetaKey("lcpaq.shape", TensorShape, "node", "output shape and dtype")
COST: MetaKey[LayerCost] = MetaKey("lcpaq.cost", LayerCost, "layer", "params, MACs, activation size")
MODEL_COST: MetaKey[ModelCost] = MetaKey("lcpaq.model_cost", ModelCost, "graph", "whole-model totals")
ACT_RANGE: MetaKey[ActRanges] = MetaKey("lcpaq.act_range", ActRanges, "layer", "calibrated input ranges")
QUANT_SCHEME: MetaKey[QuantScheme] = MetaKey(
    "lcpaq.quant_scheme", QuantScheme, "graph", "weight granularity and activation symmetry of every quantizer"
)
QSPEC: MetaKey[LayerQuantSpec] = MetaKey(
    "lcpaq.qspec", LayerQuantSpec, "layer", "the layer's quantization spec: weight and activation QuantSpec, None = float"
)
QUANTIZED: MetaKey[QuantizedInfo] = MetaKey("lcpaq.quantized", QuantizedInfo, "layer", "inserted quantizers")
QUANTIZER: MetaKey[QuantizerRole] = MetaKey("lcpaq.quantizer", QuantizerRole, "node", "marks an inserted quantizer")
SENSITIVITY: MetaKey[Sensitivity] = MetaKey("lcpaq.sensitivity", Sensitivity, "layer", "Hessian-trace sensitivity per width")
ASSIGNMENT: MetaKey[AssignmentResult] = MetaKey("lcpaq.assignment", AssignmentResult, "graph", "ILP budgets and totals")
PARETO: MetaKey[ParetoFront] = MetaKey("lcpaq.pareto", ParetoFront, "graph", "sensitivity/cost frontier")
CAPTURE: MetaKey[CaptureInfo] = MetaKey("lcpaq.capture", CaptureInfo, "graph", "capture provenance")
DOMAIN: MetaKey[CodeDomain] = MetaKey("lcpaq.domain", CodeDomain, "node", "meaning of an integer graph node's codes")
EXECUTABLE: MetaKey[Executable] = MetaKey(
    "lcpaq.executable", Executable, "layer", "the precisions the target's backend executes for the layer (optional)"
)
FLOAT_LAYERS: MetaKey[FloatLayers] = MetaKey(
    "lcpaq.float_layers", FloatLayers, "graph", "layers an assignment left in float, the backend running no precision asked"
)

ALL_KEYS: tuple[MetaKey, ...] = (
    SHAPE, COST, MODEL_COST, ACT_RANGE, QUANT_SCHEME, QSPEC, QUANTIZED, QUANTIZER, SENSITIVITY, ASSIGNMENT, PARETO, CAPTURE, DOMAIN,
    EXECUTABLE, FLOAT_LAYERS,
)
