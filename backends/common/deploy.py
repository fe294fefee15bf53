"""Build a quantized configuration for its target, check it and measure its latency.

Used by ``lcpaq quantize`` (the report's ``deployment`` section), ``lcpaq build`` and the
profiler. A configuration that cannot be built, run or exported is reported with a one-line
reason, not raised, whatever raised it (an LcpaqError, or TVM's own errors): the quantization
result stays valid. With ``--debug`` the traceback is logged.
"""
from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx as fx

from lcpaq.backends.common.build import build_model
from lcpaq.backends.common.measure import measure_latency
from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import LOGGER, LcpaqError, one_line
from lcpaq.ir.metrics import first_output
from lcpaq.passes.cost_model import assignment_of


def _sqnr_db(y: np.ndarray, ref: np.ndarray) -> float:
    noise = float(((y.astype(np.float64) - ref) ** 2).sum())
    return float("inf") if noise == 0 else float(10 * np.log10(float((ref.astype(np.float64) ** 2).sum()) / noise))


def deploy(
    gm: fx.GraphModule, example_inputs: Sequence[Any], fp32_model: torch.nn.Module, target: Target,
    table: LatencyTable | None = None, trials: int = 0, library: str | Path | None = None, repeats: int = 20,
    glue: str = "integer",
) -> dict[str, Any]:
    """Build ``gm`` (batch 1), check it bit-exactly against its integer reference, compare its
    output with the fp32 model, measure its latency and, with a latency table, set the measured
    latency beside the table's prediction (not under emulation). With ``library``, export the
    shared library there. ``glue`` is :func:`build_model`'s. A board target with no board given is built and exported only
    (``"ran": False`` and why).
    Any failure is ``{"built": False, "reason": one line}``; an interrupt still propagates."""
    try:
        return _deploy(gm, example_inputs, fp32_model, target, table, trials, library, repeats, glue)
    except LcpaqError as exc:
        _log_failure(target)
        return {"built": False, "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 (TVM raises its own error types, with C++ tracebacks)
        _log_failure(target)
        return {"built": False, "reason": one_line(exc)}


def _log_failure(target: Target) -> None:
    """The traceback, for ``--debug``: as text, so no log record keeps TVM's objects alive."""
    if LOGGER.isEnabledFor(logging.DEBUG):
        LOGGER.debug("building for %s failed:\n%s", target.name, traceback.format_exc().rstrip())


def _deploy(
    gm: fx.GraphModule, example_inputs: Sequence[Any], fp32_model: torch.nn.Module, target: Target,
    table: LatencyTable | None, trials: int, library: str | Path | None, repeats: int, glue: str,
) -> dict[str, Any]:
    inputs = [x[:1] for x in example_inputs]
    built = build_model(gm, inputs, target, trials=trials, glue=glue)
    if built.device is None:  # a board target with no board given: built (and exported) only
        entry = {"built": True, "ran": False, "not_run": built.not_run, "kernels": built.kernels, "float_nodes": built.float_fallbacks}
        if library is not None:
            entry["library"] = str(built.export(library))
        return entry
    y = np.asarray(built.run(*inputs))
    with torch.no_grad():
        ref_int = first_output(built.integer_graph(*inputs)).numpy()
        ref_fp32 = first_output(fp32_model(*inputs)).numpy()
    emulated = built.device.emulation is not None  # a few runs check the mechanics; more say nothing more
    latency = measure_latency(built, inputs, repeats=min(repeats, 3) if emulated else repeats, number=1 if emulated else 5)
    entry: dict[str, Any] = {
        "built": True,
        "ran": True,
        "device": built.device.describe(),
        "emulation": built.device.emulation,
        "kernels": built.kernels,
        "tuning_trials": trials,
        "tuned_schedules_kept": sum(v == "tuned" for v in (built.schedule_choices or {}).values()),
        "bit_exact_vs_integer_reference": bool(np.array_equal(y, ref_int)),
        "max_diff_vs_integer_reference": float(np.abs(y - ref_int).max()),
        "sqnr_vs_fp32_db": round(_sqnr_db(y, ref_fp32), 2),
        "latency_ms": round(latency.median * 1e3, 4),
        "latency_p10_ms": round(latency.p10 * 1e3, 4),
        "latency_p90_ms": round(latency.p90 * 1e3, 4),
        "float_nodes": built.float_fallbacks,
    }
    if table is not None and not emulated:  # an emulator's time predicts nothing
        try:
            predicted = table.total(assignment_of(gm))
        except LcpaqError as exc:
            entry["predicted_reason"] = str(exc)
        else:
            entry["predicted_ms"] = round(predicted * 1e3, 4)
            entry["measured_over_predicted"] = round(latency.median / predicted, 3)
    if library is not None:
        entry["library"] = str(built.export(library))
    return entry
