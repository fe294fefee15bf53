"""What the benchmarks under tools/ share: figure output, the document header, result files."""
from __future__ import annotations

import io
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lcpaq.hw_targets.target import Target, load_target  # noqa: E402
from lcpaq.ir.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text  # noqa: E402


def algorithm_target(act_bits: tuple[int, ...] = (8, 16)) -> Target:
    """The precision set the assignment and search benchmarks compare algorithms on, fixed so
    their figures do not move with a device's kernels: weights 2-8 or 16 bits, these activation
    widths (the simulator's widths, narrowed)."""
    sim = load_target("sim")
    widths = "/".join(map(str, act_bits))
    return replace(sim, act_bits=act_bits, name=f"W2-8,16 A{widths} (simulated)")


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG, atomically, and release it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def doc_header(title: str, command: str, machine: dict[str, Any], raw: str) -> list[str]:
    """The opening of a benchmark document: the one command that produced it, and the machine."""
    return [
        f"# {title}", "", "Produced by one run of:", "", "```sh", command, "```", "",
        f"on this project's 2-core x86-64 machine (torch {machine['torch']}, {machine['threads']} threads); every "
        f"figure below comes from that one run. Raw numbers: `{raw}` beside this file.", "",
    ]


def write_results(out: Path, stem: str, results: dict[str, Any], markdown: str) -> None:
    atomic_write_json(out / f"{stem}.json", results)
    atomic_write_text(out / f"{stem}.md", markdown)
    print(f"wrote {out}/{stem}.md")


def median_ms(fn: Callable[[], Any], warmup: int, repeat: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` calls, after ``warmup`` untimed ones."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
