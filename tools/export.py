"""``lcpaq export`` and ``lcpaq quantize --export``: a quantized result written as a QDQ ONNX
model (:mod:`lcpaq.backends.onnx.export`), checked by ONNX Runtime; its entry in the report and
its lines in the CLI and in report.md."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lcpaq.backends.onnx.export import export_onnx, ort_check
from lcpaq.backends.onnx.qdq import FLAVORS
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.fileio import check_writable
from lcpaq.tools.ort_baselines import input_names

FORMATS = ("onnx",)


def check_export_options(fmt: str, flavor: str, path: Path | None) -> None:
    """One-line ConfigErrors for an unknown format or flavour and an unwritable path, before any work."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    if flavor not in FLAVORS:
        raise ConfigError(f"unknown ONNX flavour {flavor!r}; choose from {', '.join(FLAVORS)}")
    if path is not None:
        if path.is_dir():
            raise ConfigError(f"-o {path} is a directory; give a file name such as {path / 'model.onnx'}")
        check_writable(path, "-o")


def onnx_entry(gm: Any, bundle: Any, path: Path, flavor: str = "qdq") -> dict[str, Any]:
    """Export ``gm`` (a result of ``bundle``'s model) to ``path`` and check it with ONNX Runtime
    on the example input: what was written and what ORT computed (the report's ``onnx`` entry)."""
    x = [t[:1] for t in bundle.example_inputs]
    info = export_onnx(gm, x, path, flavor, input_names(bundle.model, len(x)))
    return {**info, **ort_check(path, gm, x)}


def onnx_lines(entry: dict[str, Any], path: str | Path | None = None) -> list[str]:
    """The export in words: the file, its code types, ORT against lcpaq's fake-quant, SQNR and latency."""
    types = ", ".join(f"{n} {t}" for t, n in entry["code_types"].items())
    if "optimized_error" in entry:
        optimized = f"ORT-optimized session refused the graph ({entry['optimized_error']})"
        latency = "ORT latency not measured"
    else:
        optimized = f"{entry['max_abs_diff_optimized']:.3g} (ORT-optimized, Q/DQ fused into its integer kernels)"
        latency = f"ORT latency {entry['ort_median_ms']:.3f} ms (median, batch 1)"
    return [
        f"wrote {path or entry['path']} (ONNX opset {entry['opset']}, {entry['flavor']} flavour, {entry['bytes'] / 1e6:.2f} MB; "
        f"{entry['quantizers']} quantizers: {types})",
        f"  ONNX Runtime vs lcpaq fake-quant: max |diff| {entry['max_abs_diff_exact']:.3g} (graph as written), {optimized}",
        f"  SQNR vs fp32: {entry['sqnr_db_exact']:.2f} dB (lcpaq {entry['sqnr_db_fake_quant']:.2f} dB); {latency}",
    ]


def onnx_markdown(report: dict[str, Any]) -> list[str]:
    """The report.md section of a ``--export onnx`` run."""
    entry = report.get("onnx")
    if not entry:
        return []
    return ["## ONNX export", "", *[line.strip() for line in onnx_lines(entry, "model.onnx")], ""]


def export_path(out: str | Path | None, fmt: str | None) -> Path | None:
    """Where ``quantize --export FORMAT`` writes: ``--out``/model.onnx; ConfigError without --out."""
    if fmt is None:
        return None
    if not out:
        raise ConfigError("--export writes into the report folder: give --out DIR")
    check_export_options(fmt, "qdq", None)
    return Path(out) / "model.onnx"


__all__ = ["FORMATS", "check_export_options", "export_path", "onnx_entry", "onnx_lines", "onnx_markdown"]
