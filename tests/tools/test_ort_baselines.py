"""ORT baselines on a tiny seeded conv net: fp32 export matches eager, int8 QDQ is close."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lcpaq.ir.errors import CaptureError, ConfigError, LcpaqError
from lcpaq.tools import ort_baselines as ob


class TinyConvNet(nn.Module):
    """conv-bn-relu, conv-relu, pool, linear: every op ORT quantizes in QDQ form."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> tuple[nn.Module, torch.Tensor, list[np.ndarray]]:
    torch.manual_seed(0)
    model = TinyConvNet()
    with torch.no_grad():
        bn = model.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    rng = np.random.default_rng(0)
    example = torch.from_numpy(rng.standard_normal((1, 3, 16, 16), dtype=np.float32))
    calib = [rng.standard_normal((1, 3, 16, 16), dtype=np.float32) for _ in range(8)]
    return model, example, calib


@pytest.fixture(scope="module")
def onnx_files(net: tuple, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    model, example, calib = net
    tmp = tmp_path_factory.mktemp("ort")
    fp32 = ob.export_onnx(model, example, tmp / "tiny.onnx")
    int8 = ob.quantize_onnx_int8(fp32, calib, tmp / "tiny.int8.onnx")
    return fp32, int8


def _eager(model: nn.Module, x: torch.Tensor | np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


def _held_out(n: int = 16) -> list[np.ndarray]:
    """Inputs the int8 model was not calibrated on (seeded apart from the fixture's)."""
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 3, 16, 16), dtype=np.float32) for _ in range(n)]


def _sqnr_db(y: np.ndarray, ref: np.ndarray) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((y - ref) ** 2)))


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_ort_fp32_matches_eager(net: tuple, onnx_files: tuple[Path, Path]) -> None:
    model, example, _ = net
    run = ob.ort_session(onnx_files[0], threads=1)
    for x in [example.numpy(), *_held_out(4)]:
        ref = _eager(model, x)
        y = run(x)
        assert y.shape == ref.shape == (1, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, atol=1e-5, rtol=0)
    y = run(example.numpy())
    np.testing.assert_array_equal(run({"x": example.numpy()}), y)  # dict feed, by input name
    np.testing.assert_array_equal(run(example), y)  # a tensor feeds the same values


def test_int8_is_qdq_and_close_to_fp32(net: tuple, onnx_files: tuple[Path, Path]) -> None:
    _, example, calib = net
    graph = onnx.load(str(onnx_files[1])).graph
    inits = _initializers(onnx_files[1])
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    # every activation a quantized op reads or writes: the input, both ReLUs, the pooled vector, the output
    assert [n.input[0] for n in quantize] == [
        "x", "/features/features.2/Relu_output_0", "/features/features.4/Relu_output_0", "/ReduceMean_output_0",
        "output_QuantizeLinear_Input",
    ]
    assert all(inits[n.input[2]].dtype == np.uint8 for n in quantize)  # activations QUInt8
    # MinMax on the calibration data, independently: the input's range (with 0) over 255 codes
    lo, hi = min(0.0, float(np.min(calib))), max(0.0, float(np.max(calib)))
    scale = (hi - lo) / 255
    assert inits["x_scale"] == pytest.approx(scale, rel=1e-6)
    assert int(inits["x_zero_point"]) == round(-lo / scale)
    # Outputs on held-out inputs: int8 noise is there (quantization happened), and small.
    run32, run8 = ob.ort_session(onnx_files[0], threads=1), ob.ort_session(onnx_files[1], threads=1)
    xs = _held_out()
    y32 = np.concatenate([run32(x) for x in xs])
    y8 = np.concatenate([run8(x) for x in xs])
    assert 30.0 < _sqnr_db(y8, y32) < 60.0  # 39.8 dB with onnxruntime 1.31 on these seeds


def test_int8_weights_are_per_channel_symmetric(net: tuple, onnx_files: tuple[Path, Path]) -> None:
    """Each weight is quantized per output channel: scale max|w_c|/127, zero point 0, codes within
    half a step of the weight (the first conv's weight with the BatchNorm folded in, computed here)."""
    model, _, _ = net
    conv0, bn, conv1, fc = model.features[0], model.features[1], model.features[3], model.fc
    with torch.no_grad():
        folded = conv0.weight * (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(-1, 1, 1, 1)
    expected = {"Conv": [folded.numpy(), conv1.weight.detach().numpy()], "Gemm": [fc.weight.detach().numpy()]}
    graph = onnx.load(str(onnx_files[1])).graph
    inits = _initializers(onnx_files[1])
    dequant = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    got: dict[str, list[np.ndarray]] = {"Conv": [], "Gemm": []}
    for node in graph.node:
        if node.op_type not in got:
            continue
        dq = dequant[node.input[1]]  # the weight goes through a DequantizeLinear of an int8 initializer
        codes, scale, zero = (inits[i] for i in dq.input)
        w = expected[node.op_type][len(got[node.op_type])]
        assert codes.dtype == np.int8 and codes.shape == w.shape
        assert scale.shape == (w.shape[0],) and not zero.any()
        assert [a.i for a in dq.attribute if a.name == "axis"] == [0]
        np.testing.assert_allclose(scale, np.abs(w.reshape(w.shape[0], -1)).max(1) / 127, rtol=1e-6)
        step = scale.reshape(-1, *[1] * (w.ndim - 1))
        assert np.all(np.abs(codes * step - w) <= step / 2 * (1 + 1e-5))
        got[node.op_type].append(codes)
    assert [len(v) for v in got.values()] == [2, 1]


def test_calibration_batches_are_cut_to_the_static_batch(net: tuple, onnx_files: tuple[Path, Path], tmp_path: Path) -> None:
    """Two batches of 4 against an export of batch 1 are the same 8 samples: the same ranges,
    so the same int8 model as calibrating on the 8 one-sample batches."""
    model, example, calib = net
    fp32 = ob.export_onnx(model, example, tmp_path / "tiny.onnx")
    big = [np.concatenate(calib[:4]), np.concatenate(calib[4:])]
    int8 = ob.quantize_onnx_int8(fp32, big, tmp_path / "tiny.int8.onnx")
    got, want = _initializers(int8), _initializers(onnx_files[1])
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    x = example.numpy()
    np.testing.assert_array_equal(ob.ort_session(int8, threads=1)(x), ob.ort_session(onnx_files[1], threads=1)(x))


class _Slow(nn.Module):
    """The tiny net, plus a known eager-only delay per call (the export traces past the sleep)."""

    def __init__(self, inner: nn.Module, seconds: float) -> None:
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.inner(x)


def test_ort_baselines_rows(net: tuple, tmp_path: Path) -> None:
    model, example, calib = net
    slow = _Slow(model, 0.02)
    threads = torch.get_num_threads()
    start = time.perf_counter()
    res = ob.ort_baselines(slow, example, calib, tmp_path, threads=1, warmup=1, repeat=2)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    assert torch.get_num_threads() == threads  # eager ran at threads=1, then restored
    assert list(res) == list(ob.BASELINES)
    assert all(set(row) == {"median_ms", "max_abs_err", "cosine"} for row in res.values())
    # Timings in milliseconds: eager includes the 20 ms sleep, and with repeat=2 each median is the
    # mean of two timed runs, so twice the medians fit in the wall time of the whole call.
    assert res["torch-eager-fp32"]["median_ms"] >= 20.0
    assert 2 * sum(row["median_ms"] for row in res.values()) <= elapsed_ms
    assert res["torch-eager-fp32"]["max_abs_err"] == 0.0
    # The errors are those of the files written, against eager, recomputed here.
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["_Slow.fp32.onnx", "_Slow.int8.qdq.onnx"]
    ref = torch.from_numpy(_eager(model, example)).double().reshape(-1)
    for key, name in (("ort-fp32", "_Slow.fp32.onnx"), ("ort-int8-qdq", "_Slow.int8.qdq.onnx")):
        y = torch.from_numpy(ob.ort_session(tmp_path / name, threads=1)(example.numpy())).double().reshape(-1)
        assert res[key]["max_abs_err"] == pytest.approx(float((y - ref).abs().max()), rel=1e-9, abs=1e-12)
        assert res[key]["cosine"] == pytest.approx(float(torch.nn.functional.cosine_similarity(y, ref, dim=0)), abs=1e-12)
    assert res["ort-fp32"]["max_abs_err"] < 1e-5


def test_export_failure_is_one_line_error_naming_the_model(tmp_path: Path) -> None:
    class Unexportable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.inv(x)  # no ONNX symbolic at opset 17

    with pytest.raises(CaptureError, match="Unexportable.*linalg_inv") as info:
        ob.export_onnx(Unexportable(), torch.eye(4)[None], tmp_path / "bad.onnx")
    assert isinstance(info.value, LcpaqError) and "\n" not in str(info.value)


def test_exclude_pattern_that_matches_nothing_is_an_error(net: tuple, onnx_files: tuple[Path, Path], tmp_path: Path) -> None:
    # The file named is the one the caller gave, not an intermediate the call deletes.
    with pytest.raises(ConfigError, match="^exclude pattern 'no-such-node' matches no node of tiny.onnx$"):
        ob.quantize_onnx_int8(onnx_files[0], net[2], tmp_path / "q.onnx", exclude="no-such-node")
    assert not (tmp_path / "q.pre.onnx").exists()


@pytest.mark.slow
def test_minilm_exports_and_the_transformer_recipe_keeps_it_close(tmp_path: Path) -> None:
    from lcpaq.tools.models.zoo import load_model

    bundle = load_model("minilm")
    example = tuple(x[:1] for x in bundle.example_inputs)  # (input_ids, attention_mask), int64
    res = ob.ort_baselines(bundle.model, example, list(bundle.calib_batches), tmp_path, threads=2, warmup=0, repeat=1,
                           name="minilm", op_types=ob.TRANSFORMER_OP_TYPES, exclude=ob.TRANSFORMER_EXCLUDE)
    assert res["ort-fp32"]["max_abs_err"] < 1e-4
    assert res["ort-int8-qdq"]["cosine"] > 0.98


def test_dynamic_batch_export_fixed_to_each_batch(net: tuple, tmp_path: Path) -> None:
    """One dynamic-batch export, quantized once, then fixed to batch 1 and 3: static shapes, same numbers as eager."""
    model, x, calib = net
    dyn = ob.export_onnx(model, x[:1], tmp_path / "dyn.onnx", dynamic_batch=True)
    assert onnx.load(str(dyn)).graph.input[0].type.tensor_type.shape.dim[0].dim_param
    q = ob.quantize_onnx_int8(dyn, calib, tmp_path / "dyn.q.onnx")
    for batch in (1, 3):
        for path in (dyn, q):
            fixed = ob.with_batch(path, batch, tmp_path / f"{path.stem}.b{batch}.onnx")
            dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
            assert dims[0].dim_value == batch and not dims[0].dim_param
            rows = torch.randn(batch, *x.shape[1:], generator=torch.Generator().manual_seed(batch))
            y = ob.ort_session(fixed, 1)((rows,))
            with torch.no_grad():
                ref = model(rows).numpy()
            assert y.shape == ref.shape
            assert ob.compare(y, ref)["cosine"] > (0.9999 if path == dyn else 0.99)
