"""ORT baselines on a tiny seeded conv net: fp32 export matches eager, int8 QDQ is close."""
from __future__ import annotations

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


def _eager(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).numpy()


def test_ort_fp32_matches_eager(net: tuple, onnx_files: tuple[Path, Path]) -> None:
    model, example, _ = net
    run = ob.ort_session(onnx_files[0], threads=1)
    ref = _eager(model, example)
    y = run(example.numpy())
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(run({"x": example.numpy()}), y)  # dict feed, by input name


def test_int8_is_qdq_and_close_to_fp32(net: tuple, onnx_files: tuple[Path, Path]) -> None:
    _, example, _ = net
    graph = onnx.load(str(onnx_files[1])).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)  # activations QUInt8
    x = example.numpy()
    y32 = ob.ort_session(onnx_files[0], threads=1)(x)
    y8 = ob.ort_session(onnx_files[1], threads=1)(x)
    assert ob.compare(y8, y32)["cosine"] > 0.99


def test_int8_weights_are_per_channel(onnx_files: tuple[Path, Path]) -> None:
    graph = onnx.load(str(onnx_files[1])).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    conv_w_scales = [inits[n.input[1]] for n in graph.node
                     if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None and inits[n.input[0]].ndim == 4]
    assert conv_w_scales and all(s.size > 1 for s in conv_w_scales)


def test_calibration_batches_are_cut_to_the_static_batch(net: tuple, tmp_path: Path) -> None:
    model, example, calib = net
    fp32 = ob.export_onnx(model, example, tmp_path / "tiny.onnx")
    big = [np.concatenate(calib[:4]), np.concatenate(calib[4:])]  # batch 4 against an export of batch 1
    int8 = ob.quantize_onnx_int8(fp32, big, tmp_path / "tiny.int8.onnx")
    y = ob.ort_session(int8, threads=1)(example.numpy())
    assert y.shape == (1, 10)


def test_ort_baselines_rows(net: tuple, tmp_path: Path) -> None:
    model, example, calib = net
    threads = torch.get_num_threads()
    res = ob.ort_baselines(model, example, calib, tmp_path, threads=1, warmup=1, repeat=2)
    assert torch.get_num_threads() == threads  # eager ran at threads=1, then restored
    assert list(res) == list(ob.BASELINES)
    for row in res.values():
        assert row["median_ms"] > 0 and set(row) == {"median_ms", "max_abs_err", "cosine"}
    assert res["torch-eager-fp32"]["max_abs_err"] == 0.0
    assert res["ort-fp32"]["max_abs_err"] < 1e-4
    assert res["ort-int8-qdq"]["cosine"] > 0.99


def test_export_failure_is_one_line_error_naming_the_model(tmp_path: Path) -> None:
    class Unexportable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.inv(x)  # no ONNX symbolic at opset 17

    with pytest.raises(CaptureError, match="Unexportable.*linalg_inv") as info:
        ob.export_onnx(Unexportable(), torch.eye(4)[None], tmp_path / "bad.onnx")
    assert isinstance(info.value, LcpaqError) and "\n" not in str(info.value)


def test_exclude_pattern_that_matches_nothing_is_an_error(net: tuple, onnx_files: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="matches no node"):
        ob.quantize_onnx_int8(onnx_files[0], net[2], tmp_path / "q.onnx", exclude="no-such-node")


@pytest.mark.slow
def test_minilm_exports_and_the_transformer_recipe_keeps_it_close(tmp_path: Path) -> None:
    from lcpaq.tools.models.zoo import load_model

    bundle = load_model("minilm")
    example = tuple(x[:1] for x in bundle.example_inputs)  # (input_ids, attention_mask), int64
    res = ob.ort_baselines(bundle.model, example, list(bundle.calib_batches), tmp_path, threads=2, warmup=0, repeat=1,
                           name="minilm", op_types=ob.TRANSFORMER_OP_TYPES, exclude=ob.TRANSFORMER_EXCLUDE)
    assert res["ort-fp32"]["max_abs_err"] < 1e-4
    assert res["ort-int8-qdq"]["cosine"] > 0.98
