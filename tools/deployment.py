"""How built configurations read in the CLI and the report: one line each."""
from __future__ import annotations

from typing import Any


def deployment_lines(report: dict[str, Any]) -> list[str]:
    """One line per configuration: how the built model ran."""
    dep = report.get("deployment")
    if not dep:
        return []
    lines = [f"built for {report['target']} (batch 1, TVM):"]
    for label, d in dep.items():
        if not d.get("built"):
            lines.append(f"  {label:<24} not built: {d['reason']}")
            continue
        pred = f", predicted {d['predicted_ms']:.3f} ms (x{d['measured_over_predicted']:.2f})" if "predicted_ms" in d else ""
        exact = (
            "bit-exact vs integer reference" if d["bit_exact_vs_integer_reference"]
            else f"max diff {d['max_diff_vs_integer_reference']:.1e} vs integer reference (float ops round differently)"
        )
        lines.append(
            f"  {label:<24} {d['latency_ms']:.3f} ms measured{pred}; {exact}; "
            f"SQNR vs fp32 {d['sqnr_vs_fp32_db']:.1f} dB on the example input; {d['kernels']} kernels"
        )
    return lines
