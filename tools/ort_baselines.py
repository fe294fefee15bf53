"""ONNX Runtime baselines for end-to-end latency: PyTorch eager fp32, ORT fp32, ORT int8 QDQ.

The model is exported with the TorchScript exporter (``dynamo=False``: the dynamo exporter
needs onnxscript, which is not installed), opset 17, static shapes; the int8 model comes from
``onnxruntime.quantization.quantize_static`` (QDQ, activations QUInt8, weights QInt8 per
channel, MinMax calibration on the given inputs). Everything runs offline on the CPU.

    from lcpaq.tools.ort_baselines import ort_baselines
    rows = ort_baselines(model, example, calib, tmp_dir, threads=2)
    # {"torch-eager-fp32": {"median_ms": ..., "max_abs_err": 0.0, "cosine": 1.0}, "ort-fp32": ..., "ort-int8-qdq": ...}

``python -m lcpaq.tools.ort_baselines [model ...] [--repeat N]`` prints the table for zoo models.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader

from lcpaq.ir.errors import CaptureError, ConfigError, LcpaqError
from lcpaq.tools.bench_common import median_ms
from lcpaq.ir.metrics import first_output

__all__ = [
    "BASELINES", "TRANSFORMER_OP_TYPES", "TRANSFORMER_EXCLUDE", "export_onnx", "with_batch", "input_names", "quantize_onnx_int8", "ort_session",
    "OrtRunner", "median_ms", "ort_baselines", "compare", "to_feed", "format_table",
]

OPSET = 17
BASELINES = ("torch-eager-fp32", "ort-fp32", "ort-int8-qdq")
#: A recipe for BERT-like encoders exported by torch: quantize only the matmuls (an additive
#: attention mask of -3.4e38 leaves no useful MinMax range for Add/Softmax), and keep the FFN
#: down-projections (inputs: GELU outputs with outliers) in fp32. On MiniLM-L6 it lifts the
#: output cosine vs eager from about 0.3 (ORT's default op set) to about 0.99.
TRANSFORMER_OP_TYPES = ("MatMul", "Gemm")
TRANSFORMER_EXCLUDE = r"layer\.\d+/output/dense/"
#: One calibration (or run) input: an array for a one-input model, a tuple of arrays or
#: tensors in the order of the model's inputs, or a feed dict keyed by ONNX input name.
Inputs = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor] | dict[str, np.ndarray]


def _as_tuple(example: torch.Tensor | tuple | list) -> tuple[torch.Tensor, ...]:
    return tuple(example) if isinstance(example, (tuple, list)) else (example,)


def _model_name(model: torch.nn.Module, name: str | None) -> str:
    return name or type(model).__name__


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:200] if lines else ''}"


def input_names(model: torch.nn.Module, n: int) -> list[str]:
    """The forward's parameter names (``input_ids``, ``attention_mask``), else ``input_i``."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= n:
        return [p.name for p in params[:n]]
    return ["input"] if n == 1 else [f"input_{i}" for i in range(n)]


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor | tuple, path: Path, name: str | None = None, dynamic_batch: bool = False,
) -> Path:
    """Export ``model`` in eval mode at the example's shapes to ``path`` (opset 17): static, or
    with a dynamic leading (batch) dimension on every input and the output.

    Raises CaptureError, one line naming the model, when the exporter fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = _as_tuple(example)
    model = model.eval()
    names = input_names(model, len(args))
    dynamic = {n: {0: "batch"} for n in [*names, "output"]} if dynamic_batch else None
    try:  # the exporter prints the whole graph on failure: keep it off stdout, the error says what failed
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                model, args, str(path), input_names=names, output_names=["output"],
                opset_version=OPSET, dynamo=False, do_constant_folding=True, dynamic_axes=dynamic,
            )
    except Exception as exc:
        raise CaptureError(f"ONNX export of {_model_name(model, name)} failed: {_one_line(exc)}") from exc
    return path


def with_batch(path: Path, batch: int, out_path: Path) -> Path:
    """A copy of a dynamic-batch ONNX file (``export_onnx(dynamic_batch=True)``, quantized or
    not) with the batch fixed to ``batch`` on every graph input and output, so ORT plans for
    static shapes as it would for a model exported at that batch. Returns ``out_path``."""
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = batch
    del model.graph.value_info[:]  # inferred again by ORT, from the static inputs
    onnx.save(model, str(out_path))
    return Path(out_path)


def _onnx_inputs(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """The graph inputs (not initializers) of an ONNX file, with their static shapes."""
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [(i.name, tuple(d.dim_value for d in i.type.tensor_type.shape.dim)) for i in graph.input if i.name not in inits]


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_feed(inputs: Inputs, names: Sequence[str]) -> dict[str, np.ndarray]:
    """One input (array, tensor, tuple of them in input order, or dict) as an ORT feed dict."""
    if isinstance(inputs, dict):
        missing = set(names) - set(inputs)
        if missing:
            raise ConfigError(f"feed lacks model inputs {sorted(missing)}; it has {sorted(inputs)}")
        return {k: _numpy(inputs[k]) for k in names}
    arrays = [inputs] if isinstance(inputs, (np.ndarray, torch.Tensor)) else list(inputs)
    if len(arrays) != len(names):
        raise ConfigError(f"got {len(arrays)} input arrays for a model with inputs {list(names)}")
    return {k: _numpy(a) for k, a in zip(names, arrays)}


def _static_feeds(batches: Sequence[Inputs], inputs: list[tuple[str, tuple[int, ...]]]) -> list[dict[str, np.ndarray]]:
    """Feed dicts whose leading dim matches the exported (static) batch: larger calibration
    batches are cut into slices of that size; a remainder that does not fill one is dropped."""
    names = [n for n, _ in inputs]
    rows = inputs[0][1][0] if inputs and inputs[0][1] else 0
    feeds: list[dict[str, np.ndarray]] = []
    for batch in batches:
        feed = to_feed(batch, names)
        first = next(iter(feed.values()))
        have = first.shape[0] if first.ndim else 0
        if rows <= 0 or have == rows:
            feeds.append(feed)
        else:
            feeds += [{k: v[i : i + rows] for k, v in feed.items()} for i in range(0, have - rows + 1, rows)]
    return feeds


def _matching_nodes(path: Path, pattern: str | None, model_name: str) -> list[str] | None:
    """Names of the nodes of an ONNX file that the regex ``pattern`` matches (searched); the
    error names ``model_name``, the file the user gave (``path`` may be a pre-processed copy)."""
    if not pattern:
        return None
    regex = re.compile(pattern)
    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if regex.search(n.name)]
    if not names:
        raise ConfigError(f"exclude pattern {pattern!r} matches no node of {model_name}")
    return names


class _Reader(CalibrationDataReader):
    """A CalibrationDataReader over a fixed list of feed dicts (re-readable via ``rewind``)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def _preprocess(fp32_path: Path, out_path: Path) -> Path:
    """``quant_pre_process`` (shape inference + ORT graph optimization) into a sibling file;
    the fp32 model itself when that fails (it is an optimization, not a requirement)."""
    pre = out_path.with_name(out_path.stem + ".pre.onnx")
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(str(fp32_path), str(pre))
        return pre
    except Exception:
        return fp32_path


def quantize_onnx_int8(
    fp32_path: Path, calib: Sequence[Inputs], out_path: Path, per_channel: bool = True,
    op_types: Sequence[str] | None = None, exclude: str | None = None,
) -> Path:
    """Static int8 QDQ quantization of an ONNX model: QUInt8 activations, QInt8 weights
    (per output channel by default), MinMax ranges from ``calib``, a list of inputs (see
    ``Inputs``; batches larger than the exported batch are cut to it). Returns ``out_path``.

    By default every op type ORT's QDQ quantizer knows is quantized (right for CNNs).
    ``op_types`` narrows that (``TRANSFORMER_OP_TYPES`` for encoders, whose additive attention
    mask ruins a MinMax range); ``exclude`` is a regex of node names left in fp32
    (``TRANSFORMER_EXCLUDE``: the FFN down-projections, whose inputs have outliers)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    feeds = _static_feeds(calib, _onnx_inputs(fp32_path))
    if not feeds:
        raise ConfigError(f"no calibration inputs to quantize {fp32_path.name} with")
    reader = _Reader(feeds)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    src = _preprocess(fp32_path, out_path)
    try:
        excluded = _matching_nodes(src, exclude, fp32_path.name)  # names after pre-processing, which fuses nodes
        quantize_static(
            str(src), str(out_path), reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(op_types) if op_types else None, nodes_to_exclude=excluded,
        )
    except LcpaqError:
        raise
    except Exception as exc:
        raise LcpaqError(f"int8 QDQ quantization of {fp32_path.name} failed: {_one_line(exc)}") from exc
    finally:
        if src != fp32_path:
            src.unlink(missing_ok=True)
    return out_path


class OrtRunner:
    """A CPU ORT session as a function of one input (see ``Inputs``) returning the first output."""

    def __init__(self, path: Path, threads: int = 2) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def feed(self, inputs: Inputs) -> dict[str, np.ndarray]:
        return to_feed(inputs, self.input_names)

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return self.session.run(None, self.feed(inputs))[0]


def ort_session(path: Path, threads: int = 2) -> OrtRunner:
    """A CPU ORT session (``threads`` intra-op, 1 inter-op, all graph optimizations): call it
    on one input (array, tuple or feed dict) for the first output."""
    return OrtRunner(path, threads)


def compare(y: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Max absolute error and cosine similarity of ``y`` against ``ref`` (flattened, float64)."""
    a = np.asarray(y, dtype=np.float64).reshape(-1)
    b = np.asarray(ref, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"output has {a.size} values, reference {b.size}")
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    cosine = float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))
    return {"max_abs_err": float(np.abs(a - b).max()) if a.size else 0.0, "cosine": cosine}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ort_baselines(
    model: torch.nn.Module, example: torch.Tensor | tuple, calib: Sequence[Inputs], tmp_dir: Path,
    threads: int = 2, warmup: int = 5, repeat: int = 30, name: str | None = None,
    op_types: Sequence[str] | None = None, exclude: str | None = None,
) -> dict[str, dict[str, float]]:
    """Median latency (ms) and output error vs eager of the three baselines in ``BASELINES``
    on ``example``, each with ``threads`` threads. Keys of each row: ``median_ms``,
    ``max_abs_err``, ``cosine``. The ONNX files are written under ``tmp_dir``; ``op_types``
    and ``exclude`` go to ``quantize_onnx_int8``. Export or quantization failures raise
    LcpaqError subclasses, one line naming the model."""
    tmp_dir = Path(tmp_dir)
    model = model.eval()
    args = _as_tuple(example)
    stem = (name or type(model).__name__).replace("/", "_")
    with _torch_threads(threads), torch.no_grad():
        ref = first_output(model(*args)).detach().cpu().numpy()
        results = {BASELINES[0]: {"median_ms": median_ms(lambda: model(*args), warmup, repeat), **compare(ref, ref)}}
    fp32 = export_onnx(model, args, tmp_dir / f"{stem}.fp32.onnx", name=name)
    int8 = quantize_onnx_int8(fp32, calib, tmp_dir / f"{stem}.int8.qdq.onnx", op_types=op_types, exclude=exclude)
    for key, path in zip(BASELINES[1:], (fp32, int8)):
        runner = ort_session(path, threads)
        feed = runner.feed(args)  # converted once, so the timing is the session's alone
        sess = runner.session
        y = sess.run(None, feed)[0]
        results[key] = {"median_ms": median_ms(lambda: sess.run(None, feed), warmup, repeat), **compare(y, ref)}
    return results


def format_table(name: str, results: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows (no header) for one model's ``ort_baselines`` results."""
    return [f"| {name} | {k} | {r['median_ms']:.2f} | {r['max_abs_err']:.2e} | {r['cosine']:.5f} |" for k, r in results.items()]


def main(argv: list[str] | None = None) -> int:
    """Print the baseline table for zoo models (a quick manual check; rough on a shared CPU)."""
    from lcpaq.tools.models.zoo import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["resnet18"], help="zoo model names (default: resnet18)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--ort-default-ops", action="store_true",
                    help="quantize minilm with ORT's default op set too, not the transformer recipe")
    args = ap.parse_args(argv)
    print("| model | baseline | median ms | max abs err vs eager | cosine vs eager |\n|---|---|---:|---:|---:|", flush=True)
    for spec in args.models:
        bundle = load_model(spec)
        example = tuple(x[:1] for x in bundle.example_inputs)
        recipe = {} if spec != "minilm" or args.ort_default_ops else {"op_types": TRANSFORMER_OP_TYPES, "exclude": TRANSFORMER_EXCLUDE}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                res = ort_baselines(bundle.model, example, list(bundle.calib_batches), Path(tmp),
                                    args.threads, args.warmup, args.repeat, name=bundle.name, **recipe)
            except LcpaqError as exc:
                print(f"| {spec} | failed | - | - | {exc} |", flush=True)
                continue
        print("\n".join(format_table(bundle.name, res)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
