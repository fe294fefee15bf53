"""Weight quantization computed once per (tensor, spec) and read by every graph that shares the
tensor.

A search builds many configurations of one model: their weights are the same tensor objects
(``capture.copy_sharing_tensors``) and only the specs differ, so each weight's scale, zero
point, fake-quantized value and squared error at a given spec are the same in every
configuration. :data:`WEIGHT_CODES` keeps them.

An entry is keyed by the tensor object and the spec, and is valid while that object lives and
its version counter (bumped by every in-place write) is unchanged: a changed weight is
requantized, and a weight that dies takes its entries with it (the cache holds only a weak
reference). Another object with the same values (a copy, a ``detach()`` view) is another key.
Entries are evicted least recently used beyond ``max_bytes`` of quantized copies."""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from lcpaq.ir.quantizer import QuantSpec, fake_quantize, weight_qparams

#: Default memory bound of the shared cache (its quantized copies).
DEFAULT_MAX_BYTES = 2 << 30


@dataclass(frozen=True)
class WeightCode:
    """A weight quantized at one spec: its qparams, its fake-quantized value, ||Q(w) - w||^2."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    fake: torch.Tensor
    error: float


@dataclass(frozen=True)
class _Entry:
    ref: weakref.ref
    version: int
    code: WeightCode


class WeightCodes:
    """A bounded, least-recently-used memo of :class:`WeightCode` per (tensor object, spec)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, QuantSpec], _Entry] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def get(self, weight: torch.Tensor, spec: QuantSpec) -> WeightCode:
        """``weight`` quantized at ``spec`` (computed without gradients, on first request)."""
        key = (id(weight), spec)
        entry = self._entries.get(key)
        if entry is not None and entry.ref() is weight and entry.version == weight._version:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.code
        self.misses += 1
        with torch.no_grad():
            w = weight.detach()
            scale, zero_point = weight_qparams(w, spec)
            fake = fake_quantize(w, scale, zero_point, spec)
            code = WeightCode(scale, zero_point, fake, float(torch.sum((fake - w) ** 2)))
        self._drop(key)
        size = _nbytes(fake)
        if size <= self.max_bytes:
            owner = id(weight)
            ref = weakref.ref(weight, lambda _, codes=weakref.ref(self): codes() is not None and codes()._forget(owner))
            self._entries[key] = _Entry(ref, weight._version, code)
            self._bytes += size
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        return code

    def _drop(self, key: tuple[int, QuantSpec]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _nbytes(entry.code.fake)

    def _forget(self, owner: int) -> None:
        """A weight died: its entries go (an id may be reused by a later object)."""
        for key in [k for k, e in self._entries.items() if k[0] == owner and e.ref() is None]:
            self._drop(key)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


#: The process-wide cache that ``FakeQuantize`` weight quantizers and the sensitivity passes read.
WEIGHT_CODES = WeightCodes()
