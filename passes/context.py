"""What passes may use beyond the graph: the target and the data to run the model on."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcpaq.hw_targets.target import Target


@dataclass(frozen=True)
class PassContext:
    """``example_inputs`` fix the shapes that costs are computed at (batch 1 by convention);
    ``calib_batches`` are the input tuples calibration and sensitivity run on, and
    ``calib_labels`` their labels where the model has them (else the Hessian is taken of an
    output-distillation loss). ``cache_dir``: where passes may keep results between runs."""

    target: Target
    example_inputs: tuple[Any, ...]
    calib_batches: tuple[tuple[Any, ...], ...] = field(default=())
    progress: bool = False
    seed: int = 0
    calib_labels: tuple[Any, ...] | None = None
    cache_dir: Path | None = None

    def batches(self) -> tuple[tuple[Any, ...], ...]:
        return self.calib_batches or (self.example_inputs,)
