"""Pareto-frontier plots (PNG, matplotlib's Agg backend) for reports."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lcpaq.passes.budgets import ACT_MEMORY, BOPS, LATENCY, SIZE  # noqa: E402
from lcpaq.tools.bench_common import save_figure  # noqa: E402

_MARKERS = [("s", "#4e9a06"), ("D", "#f57900"), ("^", "#75507b"), ("v", "#c17d11"), ("p", "#2e3436")]
_AXIS = {SIZE: ("model size (KiB)", 1 / 1024), BOPS: ("BOPs (G)", 1e-9), ACT_MEMORY: ("peak activation (KiB)", 1 / 1024),
         LATENCY: ("predicted latency (ms, from the latency table)", 1e3)}


def pareto_plots(report: dict[str, Any], out_dir: Path) -> list[str]:
    """One PNG per swept quantity: the frontier, the uniform configurations and the chosen
    point. Returns the file names written."""
    names = []
    chosen = report["configs"][1] if len(report["configs"]) > 1 else None
    for quantity, points in report.get("pareto", {}).get("fronts", {}).items():
        label, scale = _AXIS[quantity]
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        xs = [p["achieved"] * scale for p in points]
        ys = [max(p["sensitivity"], 1e-12) for p in points]
        ax.step(xs, ys, where="post", color="#3465a4", lw=1.2)
        ax.plot(xs, ys, "o", color="#3465a4", ms=3, label="Pareto frontier (ILP)")
        markers = iter(_MARKERS)
        for config in report["configs"][1:]:
            value = config.get("predicted", {}).get(quantity)
            if value is None or config.get("sensitivity") is None:
                continue
            x, y = value * scale, max(config["sensitivity"], 1e-12)
            if config is chosen and config["label"].startswith("ILP"):
                ax.plot(x, y, "*", ms=14, color="#cc0000", label=f"chosen: {config['label']}", zorder=5)
            else:
                marker, color = next(markers, ("s", "#555753"))
                ax.plot(x, y, marker, ms=7, color=color, label=f"uniform {config['label']}", zorder=4)
                ax.annotate(config["label"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8, color=color)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("total sensitivity (sum of tr(H)/n x quant. error)")
        ax.set_title(f"{report['model']} on {report['target']}: sensitivity vs {quantity}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"pareto_{quantity}.png"
        save_figure(fig, out_dir / name)
        names.append(name)
    return names
