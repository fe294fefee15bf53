"""Measure the latency of a built model on its device (separate from lowering and building)."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from lcpaq.backends.common.build import BuiltModel
from lcpaq.ir.errors import ConfigError


@dataclass(frozen=True)
class Latency:
    """End-to-end latency of one model call, in seconds: median and spread over ``repeats`` runs,
    each the mean of ``number`` back-to-back calls (after one warm-up call)."""

    median: float
    p10: float
    p90: float
    repeats: int
    number: int
    threads: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(model: BuiltModel, inputs: Sequence[Any], repeats: int = 20, number: int = 5) -> Latency:
    """Time ``model`` on ``inputs`` with TVM's time evaluator (no Python in the timed loop)."""
    if repeats < 1 or number < 1:
        raise ConfigError(f"repeats and number must be >= 1, got {repeats} and {number}")
    args = model.inputs(*inputs)
    model.vm["main"](*args)  # warm-up
    evaluator = model.vm.time_evaluator("main", model.device.dev, number=number, repeat=repeats)
    runs = np.asarray(evaluator(*args).results, dtype=np.float64)
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    return Latency(float(np.median(runs)), float(np.percentile(runs, 10)), float(np.percentile(runs, 90)), repeats, number, threads)
