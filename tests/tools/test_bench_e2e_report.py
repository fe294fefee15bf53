"""docs/e2e_latency.md's rendering: one section per host family, ratios against the most accurate
ORT int8 recipe, calibration points told apart from predictions; a run keeps other families."""
import json
from pathlib import Path

from lcpaq.tools.bench_e2e import _merged
from lcpaq.tools.bench_e2e_report import report


def _host(family: str, ort_ms: float) -> dict:
    machine = {"cpu": f"{family} CPU", "family": family, "logical_cpus": 2, "llvm_mcpu": "znver5", "features": ["avx512_vnni"],
               "amx_exposed": False, "tvm": "0.27", "torch": "2.13", "date": "2026-11-22",
               "vnni_peak": {"int8_macs_per_s": 4e9, "how": "test", "threads": 2}}
    lcpaq = {"built": True, "bit_exact": True, "max_diff_vs_integer_ref": 0.0, "kernels": 3, "trials": 0, "tuned_kept": 0,
             "tuned_kernels": 0, "median_ms": 1.0, "cosine_mean": 0.99, "cosine_min": 0.98}
    per = {"ort-int8-qdq": {"median_ms": 0.5, "cosine_mean": 0.9, "cosine_min": 0.8},
           "ort-int8-qdq best": {"median_ms": ort_ms, "cosine_mean": 0.95, "cosine_min": 0.9}, "lcpaq-w8a8": lcpaq}
    model = {"rows": 16, "int8_macs_per_row": 10**6, "batches": {"1": per, "8": per}, "recipes": {"ort-int8-qdq": "a", "ort-int8-qdq best": "b", "lcpaq-w8a8": "c"}}
    mixed = {"fixed_ms": -0.1, "layer_scale": 1.05, "layers": 4, "fit_note": "fit", "configs": {
        "W8A8 (calibration point)": {"predicted_ms": 1.0, "measured_ms": 1.0, "float_layers": 0, "wide_layers": 0},
        "first and last layers fp32": {"predicted_ms": 2.0, "measured_ms": 2.5, "float_layers": 2, "wide_layers": 0},
        "W16A16": {"predicted_ms": 3.0, "measured_ms": 3.3, "float_layers": 0, "wide_layers": 4}}}
    return {"machine": machine, "command": "cmd", "models": {"tiny": model}, "mixed": {"tiny": mixed}}


def test_sections_ratios_and_verdicts(tmp_path: Path) -> None:
    (tmp_path / "e2e_latency.json").write_text(json.dumps({"hosts": {"Intel sapphirerapids": _host("Intel sapphirerapids", 2.0)}}))
    new = _host("AMD znver5", 4.0)
    merged = _merged(tmp_path, new["machine"], {k: v for k, v in new.items() if k != "machine"})
    assert list(merged["hosts"]) == ["AMD znver5", "Intel sapphirerapids"]  # the other family is kept
    text = report(merged)
    assert text.index("## AMD znver5") < text.index("## Intel sapphirerapids")
    amd = text.split("## Intel")[0]
    assert "the latency of `ort-int8-qdq best` (the most accurate ORT int8 recipe)" in amd
    assert "| lcpaq-w8a8 | c | 1.00 | 1.00 | 0.25x | 0.25x | 0.99000 | 0.98000 | bit-exact" in amd
    assert "Int8 roofline: 4 G MAC/s" in amd
    assert "hand schedules; b1 25% of the VNNI peak; b8 200% of the VNNI peak |" in amd  # 1e6 MACs/ms = 1e9/s per row
    assert "| W8A8 (calibration point) | 0 / 0 | 1.00 | 1.00 | 1.00 | calibration point (fit on another timing of this build: any gap is run-to-run noise) |" in amd
    assert "| first and last layers fp32 | 2 / 0 | 2.00 | 2.50 | 1.25 | **no** |" in amd
    assert "| W16A16 | 0 / 4 | 3.00 | 3.30 | 1.10 | yes |" in amd
