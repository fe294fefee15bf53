"""report.json, report.md and the terminal summary of a quantize run."""
from __future__ import annotations

import datetime as dt
import math
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from lcpaq.hw_targets.target import Target
from lcpaq.ir.layers import find_layers, precision_groups, scale_groups
from lcpaq.passes.budgets import ACT_MEMORY, BOPS, SIZE, format_quantity
from lcpaq.passes import cost_model
from lcpaq.ir.meta import ASSIGNMENT, COST, FLOAT_LAYERS, MODEL_COST, PARETO, QSPEC, SENSITIVITY
from lcpaq.ir.errors import OutputError
from lcpaq.ir.fileio import atomic_directory, atomic_write_json, atomic_write_text, check_writable
from lcpaq.tools.deployment import deployment_lines, deployment_markdown
from lcpaq.tools.export import onnx_markdown
from lcpaq.tools.models.zoo import ModelBundle
from lcpaq.tools.report_search import search_markdown, search_summary_line

if TYPE_CHECKING:
    from lcpaq.tools.api import ConfigResult


def build_report(
    bundle: ModelBundle,
    target: Target,
    prepared: fx.GraphModule,
    fp32_metrics: dict[str, float],
    results: list["ConfigResult"],
    stages: dict[str, float],
    pass_times: list[tuple[str, float]],
) -> dict[str, Any]:
    totals = MODEL_COST.get(prepared)
    primary = results[0]
    layers = find_layers(primary.graph_module)
    fp32_bops = int(cost_model.reference_totals(prepared)[0][BOPS])
    configs = [{"label": "fp32", "size_bytes": totals.fp32_bytes, "bops": fp32_bops, "metrics": _clean(fp32_metrics)}]
    for r in results:
        configs.append({
            "label": r.label, "pipeline": r.pipeline, "size_bytes": r.size_bytes, "bops": r.bops,
            "sensitivity": _total_sensitivity(r.graph_module), "predicted": _predicted(r),
            "metrics": _clean(r.metrics),
        })
    extra = {}
    assignment = ASSIGNMENT.get(primary.graph_module)
    if assignment is not None:
        extra["assignment"] = {
            "budgets": [{"quantity": b.quantity, "limit": b.limit, "text": b.text} for b in assignment.budgets],
            "predicted": dict(assignment.achieved),
            "sensitivity": assignment.sensitivity,
            "solve_seconds": round(assignment.solve_seconds, 4),
        }
    front = PARETO.get(prepared)
    if front is not None:
        extra["pareto"] = {
            "fronts": {q: [{"budget": p.budget, "achieved": p.achieved, "sensitivity": p.sensitivity} for p in pts] for q, pts in front.fronts},
            "sweep_seconds": round(front.sweep_seconds, 4),
        }
    return {
        "lcpaq_version": version("lcpaq"),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": bundle.name,
        "data": "labelled" if bundle.labelled else "data-free (output SQNR and cosine vs fp32)",
        "target": target.name,
        "torch_version": torch.__version__,
        "pipeline": primary.pipeline,
        "layers": [_layer_row(layer) for layer in layers],
        "groups": {"precision": [list(g) for g in precision_groups(layers)], "scale": [list(g) for g in scale_groups(layers)]},
        "kept_in_float": kept_in_float(primary.graph_module),
        "totals": {
            "params": totals.params,
            "quantizable_params": totals.quantizable_params,
            "macs": totals.macs,
            "fp32_bytes": totals.fp32_bytes,
            "size_bytes": primary.size_bytes,
            "bops": primary.bops,
        },
        "configs": configs,
        **extra,
        "timing_s": {
            "stages": {k: round(v, 4) for k, v in stages.items()},
            "passes": [[name, round(t, 4)] for name, t in pass_times],
            "total": round(sum(stages.values()), 4),
        },
    }


def _total_sensitivity(gm: fx.GraphModule) -> float | None:
    total = 0.0
    for layer in find_layers(gm):
        sens, spec = SENSITIVITY.get(layer.node), QSPEC.get(layer.node)
        if sens is None or spec is None:
            return None
        total += cost_model.layer_sensitivity(COST.get(layer.node), sens, spec.bits)  # a shared weight counts once
    return total


def kept_in_float(gm: fx.GraphModule) -> list[dict[str, Any]]:
    """What the configuration stores in float, with fp32 bytes and why: the parameters no
    quantizable layer stores (``lcpaq.model_cost``), then the weights (and biases) of layers
    assigned float, the reason from ``lcpaq.float_layers`` where the assignment gave one."""
    totals = MODEL_COST.get(gm)
    rows = [{"tensor": t.name, "bytes": t.bytes, "reason": t.reason} for t in (totals.float_tensors if totals else ())]
    fallback = FLOAT_LAYERS.get(gm)
    reasons = dict(fallback.layers) if fallback is not None else {}
    for layer in find_layers(gm):
        spec, cost = QSPEC.get(layer.node), COST.get(layer.node)
        if spec is None or layer.weight is None or spec.weight is not None:
            continue
        stored = int(cost.weight_bytes(32))
        if stored:
            why = reasons.get(layer.name, "assigned float")
            rows.append({"tensor": layer.weight_name if cost.stores_weight else f"{layer.name} bias", "bytes": stored,
                         "reason": f"layer {layer.name} runs in float: {why}"})
    return rows


def _predicted(r: "ConfigResult") -> dict[str, float]:
    """Size, BOPs and peak activation memory of the result's assignment (the cost model's)."""
    cost = cost_model.totals(r.graph_module, cost_model.assignment_of(r.graph_module))
    return {SIZE: cost[SIZE], BOPS: cost[BOPS], ACT_MEMORY: cost[ACT_MEMORY]}



def _layer_row(layer) -> dict[str, Any]:
    cost = COST.get(layer.node)
    bits = QSPEC.get(layer.node).bits if QSPEC.has(layer.node) else None
    sens = SENSITIVITY.get(layer.node)
    return {
        "name": layer.name,
        "op": layer.kind,
        "aten": str(layer.node.target),
        "params": cost.params,
        "bias": cost.bias,
        "macs": cost.macs,
        "act_elems": cost.act_elems,
        "w_bits": None if bits is None or layer.weight is None else bits.w_bits,
        "a_bits": None if bits is None or not layer.act_inputs else bits.a_bits,
        "sensitivity": None if sens is None or bits is None else sens.of(bits),
        "weight_trace": None if sens is None else sens.weight_trace,
    }


def _clean(metrics: dict[str, float]) -> dict[str, float | None]:
    """JSON has no infinity: an exact match (infinite SQNR) is written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else round(v, 6)) for k, v in metrics.items()}


def check_report_dir(out_dir: Path) -> None:
    """Refuse, before any work, an ``out_dir`` the report cannot go to: a file, a directory that
    holds something other than a previous report (the report replaces the directory whole), or
    a location this process cannot write. One OutputError line each."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "report.json").is_file():
        raise OutputError(f"--out {out_dir} is a non-empty directory without a report.json; the report replaces "
                          "the whole directory, so give a new or empty one, or a previous report's")
    check_writable(out_dir, "--out")


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """Write the report as one set (report.json, report.md, the plots): into a temporary sibling
    directory, renamed over ``out_dir`` at the end (:func:`~lcpaq.ir.fileio.atomic_directory`), so
    ``out_dir`` holds one complete report, or, after an error or an interrupt, what it held before."""
    from lcpaq.tools.plots import pareto_plots

    with atomic_directory(out_dir) as tmp:
        plots = pareto_plots(report, tmp)
        atomic_write_json(tmp / "report.json", report)
        atomic_write_text(tmp / "report.md", render_markdown(report, plots))


# --- rendering ------------------------------------------------------------------------------

def _si(n: float, unit: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}{unit}".rstrip()
    return f"{n:g} {unit}".rstrip()


def _bytes(n: float) -> str:
    for factor, unit in ((2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n:.0f} B"


def _metric(v: float | None) -> str:
    return "exact" if v is None else f"{v:.4f}"


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = [i < len(align) and align[i] == "r" for i in range(len(header))]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"  # noqa: E731
    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right)) + "|"
    return [fmt(header), sep, *(fmt(r) for r in rows)]


def layer_table(report: dict[str, Any]) -> list[str]:
    with_sens = any(row.get("sensitivity") is not None for row in report["layers"])
    rows = [
        [row["name"], row["op"], _si(row["params"]), _si(row["macs"]),
         "-" if row["w_bits"] is None else str(row["w_bits"]), "-" if row["a_bits"] is None else str(row["a_bits"]),
         *([f"{row['sensitivity']:.3g}"] if with_sens else [])]
        for row in report["layers"]
    ]
    header = ["layer", "op", "params", "MACs", "W bits", "A bits", *(["sensitivity"] if with_sens else [])]
    return _table(header, rows, "llrrrrr")


def config_table(report: dict[str, Any]) -> list[str]:
    names = list(dict.fromkeys(k for c in report["configs"] for k in c["metrics"]))
    with_sens = any(c.get("sensitivity") is not None for c in report["configs"])
    rows = [
        [c["label"], _bytes(c["size_bytes"]), _si(c["bops"]),
         *([_sens(c.get("sensitivity"), c["label"])] if with_sens else []), *(_metric(c["metrics"].get(k)) for k in names)]
        for c in report["configs"]
    ]
    header = ["config", "size", "BOPs", *(["sensitivity"] if with_sens else []), *names]
    return _table(header, rows, "l" + "r" * (len(header) - 1))


def float_lines(report: dict[str, Any]) -> list[str]:
    """The "kept in float" section of report.md."""
    rows = report.get("kept_in_float") or []
    if not rows:
        return []
    total = sum(r["bytes"] for r in rows)
    table = _table(["tensor", "fp32 size", "reason"], [[r["tensor"], _bytes(r["bytes"]), r["reason"]] for r in rows], "lrl")
    return ["## Kept in float", "", f"{len(rows)} tensors, {_bytes(total)} in all, stay in float in the primary configuration.", "",
            *table, ""]


def _sens(value: float | None, label: str) -> str:
    return "0" if label == "fp32" else ("-" if value is None else f"{value:.4g}")


def summary(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = [
        f"model {report['model']} on target {report['target']}: {len(report['layers'])} quantizable layers, "
        f"{_si(t['params'])} params, {_si(t['macs'])} MACs per inference",
        "",
        *layer_table(report),
        "",
        f"quality ({report['data']}):",
        *config_table(report),
        *assignment_lines(report),
        *_float_summary(report),
        *search_summary_line(report),
        *_deployment(report),
        "",
        f"total time {report['timing_s']['total']:.1f} s",
    ]
    return "\n".join(lines)


def _float_summary(report: dict[str, Any]) -> list[str]:
    rows = report.get("kept_in_float") or []
    if not rows:
        return []
    return [f"kept in float: {len(rows)} tensors, {_bytes(sum(r['bytes'] for r in rows))} (see report.md)"]


def _deployment(report: dict[str, Any]) -> list[str]:
    lines = deployment_lines(report)
    return ["", *lines] if lines else []


def assignment_lines(report: dict[str, Any]) -> list[str]:
    a = report.get("assignment")
    if a is None:
        return []
    budgets = ", ".join(f"{b['text']} ({b['quantity']} <= {format_quantity(b['quantity'], b['limit'])})" for b in a["budgets"])
    predicted = ", ".join(f"{q} {format_quantity(q, v)}" for q, v in a["predicted"].items())
    return [f"ILP under {budgets}: predicted {predicted}; total sensitivity {a['sensitivity']:.4g}; solved in {a['solve_seconds'] * 1e3:.0f} ms"]


def pareto_lines(report: dict[str, Any], plots: list[str], max_rows: int = 12) -> list[str]:
    pareto = report.get("pareto")
    if pareto is None:
        return []
    lines = ["## Pareto frontier", "", f"Swept {', '.join(pareto['fronts'])} in {pareto['sweep_seconds']:.2f} s (one ILP per point).", ""]
    for quantity, points in pareto["fronts"].items():
        step = max(1, len(points) // max_rows)
        rows = [[format_quantity(quantity, p["achieved"]), f"{p['sensitivity']:.4g}"] for p in points[::step]]
        lines += [f"### Sensitivity against {quantity} ({len(points)} points)", ""]
        lines += _table([quantity, "total sensitivity"], rows, "rr") + [""]
        if f"pareto_{quantity}.png" in plots:
            lines += [f"![sensitivity against {quantity}](pareto_{quantity}.png)", ""]
    return lines


def distill_lines(report: dict[str, Any]) -> list[str]:
    d = report.get("distillation")
    if d is None:
        return []
    names = [k for k in d["after"] if d["after"][k] is not None]
    rows = [[k, _metric(d["before"].get(k)), _metric(d["after"].get(k))] for k in names]
    return ["## Distillation", "", f"{d['steps']} steps in {d['seconds']:.1f} s, fp32 model as teacher.", "",
            *_table(["metric", "before", "after"], rows, "lrr"), ""]


def render_markdown(report: dict[str, Any], plots: list[str] = ()) -> str:
    t = report["totals"]
    stages = [[name, f"{sec:.2f}"] for name, sec in report["timing_s"]["stages"].items()]
    passes = [[name, f"{sec:.3f}"] for name, sec in report["timing_s"]["passes"]]
    groups = report["groups"]
    lines = [
        f"# lcpaq report: {report['model']} on {report['target']}",
        "",
        f"Created {report['created']} by lcpaq {report['lcpaq_version']} (torch {report['torch_version']}).",
        "",
        f"- Quantizable layers: {len(report['layers'])}; parameters: {t['params']:,} ({t['quantizable_params']:,} in quantizable layers)",
        f"- MACs per inference: {t['macs']:,}",
        f"- fp32 size: {_bytes(t['fp32_bytes'])}; primary configuration size: {_bytes(t['size_bytes'])}",
        f"- Pipeline: `{report['pipeline']}`",
        *(f"- {line}" for line in assignment_lines(report)),
        "",
        "## Quality",
        "",
        f"Data: {report['data']}.",
        "",
        *config_table(report),
        "",
        *deployment_markdown(report, _table),
        *onnx_markdown(report),
        "## Layers (primary configuration)",
        "",
        *layer_table(report),
        "",
        *float_lines(report),
        *search_markdown(report, _table),
        *distill_lines(report),
        *pareto_lines(report, list(plots)),
        "## Groups",
        "",
        f"- Layers reading one activation (share activation precision): {len(groups['precision'])} groups",
        *(f"  - {', '.join(g)}" for g in groups["precision"]),
        f"- Layers meeting in a residual add (share an output scale): {len(groups['scale'])} groups",
        *(f"  - {', '.join(g)}" for g in groups["scale"]),
        "",
        "## Time",
        "",
        *_table(["stage", "seconds"], stages, "lr"),
        "",
        *_table(["pass", "seconds"], passes, "lr"),
        "",
    ]
    return "\n".join(lines)
