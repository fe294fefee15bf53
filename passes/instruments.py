"""Pass instruments: hooks around every pass of a pipeline (timing, graph dumps)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch.fx as fx

from lcpaq.passes.base import Pass, PassResult


class PassInstrument:
    def before_pass(self, p: Pass, gm: fx.GraphModule) -> None:  # noqa: B027 - optional hook
        pass

    def after_pass(self, p: Pass, gm: fx.GraphModule, result: PassResult) -> None:  # noqa: B027
        pass


@dataclass
class Timing(PassInstrument):
    """Records the wall time of each pass, in run order."""

    times: list[tuple[str, float]] = field(default_factory=list)
    _start: float = 0.0

    def before_pass(self, p: Pass, gm: fx.GraphModule) -> None:
        self._start = time.perf_counter()

    def after_pass(self, p: Pass, gm: fx.GraphModule, result: PassResult) -> None:
        self.times.append((p.name, time.perf_counter() - self._start))


@dataclass
class DumpGraphs(PassInstrument):
    """Writes the graph as Python code after each pass that changed it: ``NN-name.py``."""

    directory: Path
    count: int = 0

    def after_pass(self, p: Pass, gm: fx.GraphModule, result: PassResult) -> None:
        self.count += 1
        if result.modified or self.count == 1:
            self.directory.mkdir(parents=True, exist_ok=True)
            (self.directory / f"{self.count:02d}-{p.name}.py").write_text(result.graph_module.code)
