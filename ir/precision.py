"""The vocabulary of precision: supported widths, a layer's bit pair, and quantization specs.

In the manner of PyTorch's pt2e ``QuantizationSpec``: a :class:`QuantSpec` says how one tensor
is quantized (width, symmetry, granularity; its logical code dtype follows), a
:class:`LayerQuantSpec` says it for one layer's weight and activation inputs (the per-layer
annotation the assignment passes write and the fake-quant rewrite reads), and a
:class:`QuantScheme` holds the graph-wide choices every layer's specs are built from.
How codes are stored is the backend's decision, not the spec's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Bit-widths the quantization simulator implements; 32 means "kept in floating point".
SUPPORTED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16)
FLOAT_BITS = 32

Granularity = Literal["per-channel", "per-tensor"]
GRANULARITIES: tuple[str, ...] = ("per-channel", "per-tensor")


def check_bits(bits: int, what: str = "bit-width") -> int:
    """Return ``bits`` if the simulator supports it, else raise a one-line ValueError."""
    if not isinstance(bits, int) or isinstance(bits, bool) or (bits not in SUPPORTED_BITS and bits != FLOAT_BITS):
        raise ValueError(f"unsupported {what} {bits!r}: choose from 2-8, 16, or 32 (float)")
    return bits


@dataclass(frozen=True)
class BitAssignment:
    """Precision of one layer: weight bits and activation (input) bits; 32 = float. An
    activation x activation matmul has no weight: both of its operands count at ``a_bits``,
    and its ``w_bits`` equals ``a_bits`` by convention."""

    w_bits: int
    a_bits: int

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "weight bit-width")
        check_bits(self.a_bits, "activation bit-width")

    def __str__(self) -> str:
        return f"W{self.w_bits}A{self.a_bits}"


@dataclass(frozen=True)
class QuantSpec:
    """How a tensor is quantized: width, symmetry and granularity (``ch_axis`` None =
    per-tensor, else one scale per index along that axis). Symmetric: signed codes in the
    restricted range [-(2^(b-1)-1), 2^(b-1)-1]; asymmetric: unsigned codes [0, 2^b-1]."""

    bits: int
    symmetric: bool = True
    ch_axis: int | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.bits == FLOAT_BITS:
            raise ValueError("QuantSpec describes integer quantization; 32 bits means no quantizer")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def granularity(self) -> Granularity:
        return "per-tensor" if self.ch_axis is None else "per-channel"

    @property
    def dtype(self) -> str:
        """The logical code type: ``int8`` for symmetric 8-bit codes, ``uint8`` for asymmetric
        ones, ``int4``, ``uint6``... (whatever type a backend stores them in)."""
        return f"{'int' if self.symmetric else 'uint'}{self.bits}"


@dataclass(frozen=True)
class LayerQuantSpec:
    """How one layer is quantized: ``weight`` for its weight tensor, ``act`` for each of its
    activation inputs (both operands of an activation x activation matmul); None = float.
    ``weightless`` marks a layer with no weight at all (such a matmul)."""

    weight: QuantSpec | None
    act: QuantSpec | None
    weightless: bool = False

    def __post_init__(self) -> None:
        if self.weightless and self.weight is not None:
            raise ValueError("a weightless layer has no weight spec")

    @property
    def bits(self) -> BitAssignment:
        """The layer's bit pair (32 where a side is float; a weightless layer's ``w_bits`` is
        its ``a_bits``)."""
        a_bits = FLOAT_BITS if self.act is None else self.act.bits
        if self.weightless:
            return BitAssignment(a_bits, a_bits)
        return BitAssignment(FLOAT_BITS if self.weight is None else self.weight.bits, a_bits)

    def __str__(self) -> str:
        return str(self.bits)


@dataclass(frozen=True)
class QuantScheme:
    """Graph-wide quantizer choices: weights are symmetric, per output channel or per tensor
    (``weight_granularity``); activations per tensor, symmetric or not (``act_symmetric``)."""

    weight_granularity: Granularity
    act_symmetric: bool

    def __post_init__(self) -> None:
        if self.weight_granularity not in GRANULARITIES:
            raise ValueError(f"weight granularity must be one of {', '.join(GRANULARITIES)}, got {self.weight_granularity!r}")

    def weight(self, bits: int, channel_axis: int) -> QuantSpec:
        """The spec of a weight at ``bits`` whose output channels run along ``channel_axis``."""
        return QuantSpec(bits, symmetric=True, ch_axis=channel_axis if self.weight_granularity == "per-channel" else None)

    def act(self, bits: int) -> QuantSpec:
        return QuantSpec(bits, symmetric=self.act_symmetric)
