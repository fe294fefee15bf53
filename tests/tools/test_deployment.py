"""The deployment lines of the CLI and report.md: one per configuration, plus the float nodes."""
from __future__ import annotations

from lcpaq.tools.deployment import deployment_lines


def _entry(**extra) -> dict:
    return {"built": True, "latency_ms": 1.25, "bit_exact_vs_integer_reference": True, "max_diff_vs_integer_reference": 0.0,
            "sqnr_vs_fp32_db": 31.04, "kernels": 7, **extra}


def test_float_nodes_are_named_with_their_reason_three_at_most() -> None:
    floats = {f"n{i}": f"why {i}" for i in range(5)}
    lines = deployment_lines({"target": "x86-host", "deployment": {"W8A8": _entry(float_nodes=floats)}})
    assert lines == [
        "built for x86-host (batch 1, TVM):",
        f"  {'W8A8':<24} 1.250 ms measured; bit-exact vs integer reference; SQNR vs fp32 31.0 dB on the example input; 7 kernels",
        f"  {'':<24} 5 nodes in float: n0: why 0; n1: why 1; n2: why 2; and 2 more (report.json)",
    ]


def test_an_all_integer_build_has_no_float_line() -> None:
    lines = deployment_lines({"target": "x86-host", "deployment": {"W8A8": _entry(float_nodes={})}})
    assert len(lines) == 2
