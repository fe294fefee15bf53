"""``docs/e2e_latency.md`` from the results of :mod:`lcpaq.tools.bench_e2e`: one section per
host family measured, each with its machine, per-model latency and quality at every batch, and
the latency table's predictions against measured times."""
from __future__ import annotations

from typing import Any

GOAL = 0.9  # issue 14: lcpaq W8A8 at most this fraction of ORT int8's latency


def _tiles(m: dict[str, Any]) -> str:
    row = m.get("tiles_row")
    return f"; hand-schedule tiles: row `[{row}]` of `backends/x86/tiles.toml`" if row else ""


def _ort_best(rows: dict[str, Any]) -> str:
    """The ORT int8 recipe lcpaq is compared with: the most accurate one (held-out cosine)."""
    keys = [k for k in rows if k.startswith("ort-int8")]
    return max(keys, key=lambda k: rows[k].get("cosine_mean", -1.0))


def _roofline(res: dict[str, Any], r: dict[str, Any], batch: str, peak: dict[str, Any] | None) -> str:
    """``; N% of the VNNI peak`` for an int8 build: its int8 MACs per second over the measured peak."""
    if not peak or not res.get("int8_macs_per_row") or not r.get("median_ms"):
        return ""
    rate = res["int8_macs_per_row"] * int(batch) / (r["median_ms"] / 1e3)
    return f"; b{batch} {100 * rate / peak['int8_macs_per_s']:.0f}% of the VNNI peak"


def _model_table(name: str, res: dict[str, Any], peak: dict[str, Any] | None = None) -> list[str]:
    batches = list(res["batches"])
    first = res["batches"][batches[0]]
    best = _ort_best(first)
    head = " | ".join(f"batch {b} ms" for b in batches)
    ratio = " | ".join(f"b{b} / {best}" for b in batches)
    lines = [f"### {name}", "", f"Quality: cosine of each of {res['rows']} held-out rows' output to eager fp32, mean and worst row "
             f"(at batch {batches[0]}). Goal: lcpaq at most {GOAL}x the latency of `{best}` (the most accurate ORT int8 recipe).", "",
             f"| backend | recipe | {head} | {ratio} | cosine mean | cosine min | note |",
             "|---|---|" + "---:|" * (2 * len(batches) + 2) + "---|"]
    roofs: dict[str, list[str]] = {}
    for key, recipe in res["recipes"].items():
        cells, ratios, note = [], [], ""
        for b in batches:
            r = res["batches"][b].get(key, {})
            base = res["batches"][b][best].get("median_ms")
            if not r.get("built", True):
                cells.append("-")
                ratios.append("-")
                note = f"not built: {r['reason']}"
                continue
            ms = r.get("median_ms")
            cells.append(f"{ms:.2f}" if ms is not None else "-")
            ratios.append(f"{ms / base:.2f}x" if ms and base else "-")
            if key.startswith("lcpaq"):
                diff = r["max_diff_vs_integer_ref"]
                exact = "bit-exact" if r["bit_exact"] else f"max diff {diff:.1e}" + (
                    " (float32 ops after the integer part)" if r.get("integer_glue_ops") and diff < 1e-5 else "")
                glue = "integer glue; " if r.get("integer_glue_ops") else "float glue; " if r.get("glue") == "float" else ""
                sched = (f"{r['trials']} trials/kernel, tuned kept for {r['tuned_kept']}/{r['tuned_kernels']} kernels"
                         if r["trials"] else "hand schedules")
                note = f"{glue}{exact} vs integer reference on every held-out row; {r['kernels']} kernels; {sched}"
                roof = roofs.setdefault(key, [])
                roof.append(_roofline(res, r, b, peak))
        q = first.get(key, {})
        cos = (f"{q['cosine_mean']:.5f} | {q['cosine_min']:.5f}") if "cosine_mean" in q else "- | -"
        note += "".join(roofs.get(key, []))
        lines.append(f"| {key} | {recipe} | {' | '.join(cells)} | {' | '.join(ratios)} | {cos} | {note} |")
    return [*lines, ""]


def _mixed_table(name: str, res: dict[str, Any]) -> list[str]:
    lines = [f"### {name}: {res['layers']} layers, fixed_seconds {res['fixed_ms']:.3f} ms, layer_scale {res['layer_scale']:.3f}", "",
             f"Fit: {res['fit_note']}.", "",
             "| configuration | fp32 / 16-bit layers | predicted ms | measured ms | measured / predicted | within 15% |",
             "|---|---:|---:|---:|---:|---|"]
    for label, r in res["configs"].items():
        counts = f"{r.get('float_layers', '-')} / {r.get('wide_layers', '-')}"
        if not r.get("built", True):
            lines.append(f"| {label} | {counts} | {r['predicted_ms']:.2f} | - | - | not built: {r['reason']} |")
            continue
        ratio = r["measured_ms"] / r["predicted_ms"]
        verdict = "calibration point (fit on another timing of this build: any gap is run-to-run noise)" if "calibration" in label else ("yes" if abs(ratio - 1) <= 0.15 else "**no**")
        lines.append(f"| {label} | {counts} | {r['predicted_ms']:.2f} | {r['measured_ms']:.2f} | {ratio:.2f} | {verdict} |")
    return [*lines, ""]


def _host_section(family: str, host: dict[str, Any]) -> list[str]:
    m = host["machine"]
    amx = "AMX exposed" if m["amx_exposed"] else "no AMX exposed"
    lines = [f"## {family}", "", f"{m['cpu']}, {m['logical_cpus']} logical CPUs (LLVM CPU `{m['llvm_mcpu']}`), "
             f"features used: {', '.join(m['features'])}; {amx}{_tiles(m)}. TVM {m['tvm']}, torch {m['torch']}, measured {m['date']} by:", "",
             "```sh", host["command"], "```", "",
             "Every backend is built first, then timed in interleaved rounds (each the median of the run's calls after 5 "
             "warm-up calls, after 0.3 s idle so that the previous backend's worker threads have stopped spinning), 2 threads everywhere (TVM_NUM_THREADS, torch.set_num_threads, ORT intra_op_num_threads); the "
             "table gives the median round, `rounds_ms` in the JSON every round.", ""]
    peak = m.get("vnni_peak")
    if peak:
        lines += [f"Int8 roofline: {peak['int8_macs_per_s'] / 1e9:.0f} G MAC/s, measured by `python -m lcpaq.tools.vnni_peak` "
                  f"({peak['how']}; the higher of the runs at the start and end of the benchmark: "
                  f"{', '.join(str(g) for g in peak.get('runs_g_macs', []))} G). An int8 build's share of it: its "
                  "quantized layers' MACs per second over this peak.", ""]
    for name, res in host["models"].items():
        lines += _model_table(name, res, peak)
    if host.get("mixed"):
        lines += ["### The latency table's predictions", "",
                  "Each table is profiled layer by layer (hand schedules), then `layer_scale` and `fixed_seconds` are fitted "
                  "on two whole builds, uniform W8A8 and uniform fp32: those two rows are calibration points (the fit "
                  "reproduces its own timings of them exactly; the rows here are a second timing). The other rows are configurations the fit never saw: "
                  "some layers fp32 and the rest W8A8, and, where the target offers 16 bits, 16-bit layers (W8A16, W16A16 on the "
                  "int16 kernels; a depthwise conv at 16 bits runs in float) among 8-bit ones. "
                  "Times are TVM's time evaluator at batch 1, as the table's.", ""]
        for name, res in host["mixed"].items():
            lines += _mixed_table(name, res)
    return lines


def report(merged: dict[str, Any]) -> str:
    lines = ["# End-to-end latency: lcpaq builds against PyTorch and ONNX Runtime", "",
             "One section per host family measured (CPU vendor and LLVM's name for the CPU); each comes from one run of "
             "its command, and a later run on the same family replaces it. Compare rows of one section only: the host "
             "is a shared 2-core machine.", ""]
    for family, host in merged["hosts"].items():
        lines += _host_section(family, host)
    return "\n".join(lines)
