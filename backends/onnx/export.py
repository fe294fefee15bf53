"""Export a fake-quantized graph as a QDQ ONNX model and check it with ONNX Runtime.

:func:`export_onnx`:
1. replaces the quantizers of a copy of the graph by markers (:mod:`~lcpaq.backends.onnx.markers`);
2. runs torch's TorchScript exporter (opset 20, its newest) at the example's static shapes;
3. rewrites the markers into Q/DQ at opset 21 (:mod:`~lcpaq.backends.onnx.qdq`);
4. checks the result with ``onnx.checker`` (full check, shape inference included);
5. writes it atomically.

:func:`ort_check` runs the file in ONNX Runtime and compares it with lcpaq's own fake-quant
forward and with the fp32 model.
"""
from __future__ import annotations

import contextlib
import io
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import torch
import torch.fx as fx

from lcpaq.backends.onnx.markers import DOMAIN, marked_copy
from lcpaq.backends.onnx.qdq import storage, to_qdq
from lcpaq.ir.errors import CaptureError
from lcpaq.ir.fileio import atomic_write_bytes
from lcpaq.ir.metrics import first_output
from lcpaq.ir.qops import quantizers_disabled

EXPORT_OPSET = 20


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def export_onnx(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], path: str | Path, flavor: str = "qdq",
                input_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Write ``gm`` (fake-quantized; quantizers become Q/DQ) as ONNX to ``path``; returns what
    was written: the code types of its quantizers, the file's size. CaptureError (one line) if
    torch's exporter fails, ConfigError for a quantizer the flavour cannot express."""
    path = Path(path)
    marked, quantizers = marked_copy(gm)
    args = tuple(example_inputs)
    names = list(input_names or [f"input{i}" for i in range(len(args))])
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "marked.onnx"
        try:  # the exporter prints the graph on failure: keep it off stdout
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(marked.eval(), args, str(raw), opset_version=EXPORT_OPSET, dynamo=False,
                                  custom_opsets={DOMAIN: 1}, input_names=names, output_names=["output"], do_constant_folding=True)
        except Exception as exc:  # noqa: BLE001 (torch's exporter raises many types)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CaptureError(f"ONNX export failed: {first}") from exc
        model = to_qdq(onnx.load(str(raw)), quantizers, flavor)
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(path, model.SerializeToString())
    types = Counter(onnx.TensorProto.DataType.Name(storage(fq.spec)[1]).lower() for _, fq in quantizers.values())
    return {"path": str(path), "bytes": path.stat().st_size, "quantizers": len(quantizers), "code_types": dict(sorted(types.items())),
            "flavor": flavor, "opset": 21}


def ort_session(path: str | Path, optimized: bool = True, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session; ``optimized=False`` runs the graph as written (no QDQ
    fusion into ORT's integer kernels), which computes exactly the Q/DQ arithmetic."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_check(path: str | Path, gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor], repeats: int = 20) -> dict[str, Any]:
    """ONNX Runtime on ``path`` against ``gm``'s fake-quant forward on the same inputs: the
    largest absolute difference (graph as written, and with ORT's optimizations, which fuse
    Q/DQ into its integer kernels), the SQNR of each against fp32 (quantizers off), and ORT's
    median latency (optimized). Where ORT's optimizer rejects the graph (4-bit activations
    next to a max pool), ``optimized_error`` says why and the optimized figures are absent."""
    feeds = [_numpy(x) for x in example_inputs]
    with torch.no_grad():
        fq = first_output(gm(*example_inputs)).float().numpy()
        with quantizers_disabled(gm):
            fp32 = first_output(gm(*example_inputs)).float().numpy()
    out: dict[str, Any] = {}
    for label, optimized in (("exact", False), ("optimized", True)):
        try:
            session = ort_session(path, optimized)
        except Exception as exc:  # noqa: BLE001 (ORT's optimizer rejects some graphs it runs as written)
            if not optimized:
                raise
            out["optimized_error"] = str(exc).strip().splitlines()[0][:300]
            continue
        feed = {i.name: a for i, a in zip(session.get_inputs(), feeds)}
        y = session.run(None, feed)[0]
        out[f"max_abs_diff_{label}"] = float(np.abs(y - fq).max())
        out[f"sqnr_db_{label}"] = float(10 * np.log10((fp32**2).sum() / max(((fp32 - y) ** 2).sum(), 1e-30)))
        if optimized:
            session.run(None, feed)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - t0)
            out["ort_median_ms"] = float(np.median(times) * 1e3)
    out["sqnr_db_fake_quant"] = float(10 * np.log10((fp32**2).sum() / max(((fp32 - fq) ** 2).sum(), 1e-30)))
    return out
