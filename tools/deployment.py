"""How built configurations read in the CLI and the report: one line each, and one more naming
the nodes that ran in float and why, when there are any; and report.md's deployment table."""
from __future__ import annotations

from typing import Any, Callable

#: Float nodes named on the terminal; report.json lists all of them.
FLOAT_NODES_SHOWN = 3


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
        if d.get("ran") is False:
            lines.append(f"  {label:<24} built, not run: {d['not_run']}; {d['kernels']} kernels")
            continue
        pred = f", predicted {d['predicted_ms']:.3f} ms (x{d['measured_over_predicted']:.2f})" if "predicted_ms" in d else ""
        where = f" on {d['device']}" if d.get("device", "this machine") != "this machine" else ""
        if d.get("emulation"):
            where += f" (EMULATED: {d['emulation']}; not the board's speed)"
        exact = (
            "bit-exact vs integer reference" if d["bit_exact_vs_integer_reference"]
            else f"max diff {d['max_diff_vs_integer_reference']:.1e} vs integer reference (float ops round differently)"
        )
        lines.append(
            f"  {label:<24} {d['latency_ms']:.3f} ms measured{where}{pred}; {exact}; "
            f"SQNR vs fp32 {d['sqnr_vs_fp32_db']:.1f} dB on the example input; {d['kernels']} kernels"
        )
        floats = d.get("float_nodes") or {}
        if floats:
            shown = "; ".join(f"{node}: {why}" for node, why in list(floats.items())[:FLOAT_NODES_SHOWN])
            more = f"; and {len(floats) - FLOAT_NODES_SHOWN} more (report.json)" if len(floats) > FLOAT_NODES_SHOWN else ""
            lines.append(f"  {'':<24} {len(floats)} nodes in float: {shown}{more}")
    return lines


def deployment_markdown(report: dict[str, Any], table: Callable[[list[str], list[list[str]], str], list[str]]) -> list[str]:
    """The report.md section: one row per configuration, rendered by ``table`` (header, rows, alignment)."""
    dep = report.get("deployment")
    if not dep:
        return []
    rows = []
    for label, d in dep.items():
        if not d.get("built"):
            rows.append([label, "-", "-", "-", "-", "-", f"not built: {d['reason']}"])
            continue
        if d.get("ran") is False:
            rows.append([label, "-", "-", "-", "-", "-", f"{d['kernels']} (built, not run: {d['not_run']})"])
            continue
        pred = f"{d['predicted_ms']:.3f}" if "predicted_ms" in d else "-"
        ratio = f"{d['measured_over_predicted']:.2f}" if "measured_over_predicted" in d else "-"
        exact = "yes" if d["bit_exact_vs_integer_reference"] else "no"
        measured = f"{d['latency_ms']:.3f}" + (" (emulated)" if d.get("emulation") else "")
        rows.append([label, measured, pred, ratio, exact, f"{d['sqnr_vs_fp32_db']:.1f}", str(d["kernels"])])
    head = ["configuration", "measured ms", "predicted ms", "measured / predicted", "bit-exact", "SQNR vs fp32 dB (example input)", "kernels"]
    emulated = sorted({d["emulation"] for d in dep.values() if d.get("emulation")})
    note = [f"Timings marked emulated ran on {', '.join(emulated)}: they check the build, not the board's speed.", ""] if emulated else []
    return [f"## Deployment on {report['target']} (TVM, batch 1)", "", *table(head, rows, "lrrrlrr"), "", *note]
