"""Activation range estimators used by the calibrate pass.

An ``Observer`` sees every calibration batch of one tensor and keeps its exact min/max and a
bounded uniform sample of its values (reservoir-style, seeded); the estimators turn that into a
range: min-max, percentile, MSE-optimal clipping, or entropy (TensorRT's KL-divergence method).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lcpaq.ir.quantizer import QuantSpec, fake_quantize, qparams_from_range

METHODS = ("minmax", "percentile", "mse", "entropy")


@dataclass
class Observer:
    max_samples: int = 1 << 18
    seed: int = 0
    lo: float = float("inf")
    hi: float = float("-inf")
    seen: int = 0
    _chunks: list[torch.Tensor] = field(default_factory=list)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.seen += x.numel()
        gen = torch.Generator().manual_seed(self.seed + self.seen)
        if x.numel() > self.max_samples:
            x = x[torch.randint(0, x.numel(), (self.max_samples,), generator=gen)]
        self._chunks.append(x)
        total = sum(c.numel() for c in self._chunks)
        if total > 2 * self.max_samples:  # keep memory bounded: thin the pooled sample
            pooled = torch.cat(self._chunks)
            self._chunks = [pooled[torch.randperm(pooled.numel(), generator=gen)[: self.max_samples]]]

    def sample(self) -> torch.Tensor:
        if not self._chunks:
            raise ValueError("observer saw no data")
        return torch.cat(self._chunks)


def estimate(obs: Observer, method: str, bits: int, symmetric: bool, percentile: float = 99.99) -> tuple[float, float]:
    """The range [lo, hi] that ``method`` picks for quantization at ``bits``."""
    if method == "minmax":
        return obs.lo, obs.hi
    x = obs.sample()
    if method == "percentile":
        return _percentile(x, obs, percentile)
    if method == "mse":
        return _mse(x, obs, bits, symmetric)
    if method == "entropy":
        return _entropy(x, obs, bits, symmetric)
    raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")


def _percentile(x: torch.Tensor, obs: Observer, p: float) -> tuple[float, float]:
    arr = x.numpy()
    lo = float(np.percentile(arr, 100.0 - p)) if obs.lo < 0 else obs.lo
    hi = float(np.percentile(arr, p))
    return min(lo, hi), hi


def _mse(x: torch.Tensor, obs: Observer, bits: int, symmetric: bool, steps: int = 100) -> tuple[float, float]:
    """Clip [lo, hi] by a common factor; keep the factor with the least quantization MSE."""
    spec = QuantSpec(bits, symmetric)
    x = x[:: max(1, x.numel() // 65536)]
    best, best_err = (obs.lo, obs.hi), float("inf")
    for alpha in np.linspace(1.0 / steps, 1.0, steps):
        lo, hi = obs.lo * alpha, obs.hi * alpha
        scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), spec)
        err = float(torch.mean((fake_quantize(x, scale, zp, spec) - x) ** 2))
        if err < best_err:
            best, best_err = (lo, hi), err
    return best


def _entropy(x: torch.Tensor, obs: Observer, bits: int, symmetric: bool, bins: int = 2048) -> tuple[float, float]:
    """TensorRT's calibration: the clipping threshold T minimising KL(P || Q) between the
    histogram of |x| clipped at T and its quantization to the available levels. The range is
    [-T, T] intersected with the observed range."""
    amax = max(abs(obs.lo), abs(obs.hi))
    if amax == 0.0:
        return 0.0, 0.0
    signed = obs.lo < 0
    mags = x.abs().numpy()
    mags = mags[mags > 0]  # zero is exactly representable: a ReLU's spike there must not steer T
    if mags.size == 0:
        return obs.lo, obs.hi
    # A sparse histogram makes the KL search pick noise: keep >= 16 samples per bin on average.
    bins = int(min(bins, max(mags.size // 16, 2 ** (bits - 1) if (signed or symmetric) else 2**bits)))
    levels = min(2 ** (bits - 1) if (signed or symmetric) else 2**bits, bins)
    # A few extreme outliers would squeeze the bulk into a handful of bins: cap the histogram
    # at 16x the 99.99th percentile; values beyond land in the last bin (clipped either way).
    top = min(amax, 16.0 * float(np.percentile(mags, 99.99))) or amax
    hist, edges = np.histogram(np.minimum(mags, top), bins=bins, range=(0.0, top))
    hist = hist.astype(np.float64)
    best_i, best_kl = bins, float("inf")
    for i in range(levels, bins + 1, max(1, (bins - levels) // 256)):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        q = _requantize(hist[:i], levels)
        kl = _kl(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    threshold = float(edges[best_i]) if best_i < bins else amax
    return max(-threshold, obs.lo), min(threshold, obs.hi)


def _requantize(p: np.ndarray, levels: int) -> np.ndarray:
    """Merge ``p`` into ``levels`` buckets, then spread each back over its non-empty bins."""
    q = np.zeros_like(p)
    for chunk in np.array_split(np.arange(p.size), levels):
        nonzero = p[chunk] > 0
        if nonzero.any():
            q[chunk[nonzero]] = p[chunk].sum() / nonzero.sum()
    return q


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / max(p.sum(), 1e-12)
    q = q / max(q.sum(), 1e-12)
    mask = p > 0
    q = np.where(q > 0, q, 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
