"""QDQ ONNX export: the code type of every precision, the exported graph checked by
onnx.checker, and ONNX Runtime running it as written equal to lcpaq's fake-quant forward (up
to float summation order) for uniform, mixed int4/int8, 16-bit and partly-float models, an
activation pushed past its calibrated range (where ONNX's saturation differs from lcpaq's), and
the TensorRT flavour's limits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from lcpaq.backends.onnx.export import export_onnx, ort_check, ort_session
from lcpaq.backends.onnx.qdq import storage
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.quantizer import QuantSpec
from tests.backends._nets import TinyMobile, TinyResNet, mixed, quantized

EXACT = 1e-5  # ORT vs torch: the same arithmetic, summed in another order


def _x(seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _ops(path: Path) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def test_code_types_are_the_narrowest_onnx_type_of_the_signedness() -> None:
    names = {(b, s): onnx.TensorProto.DataType.Name(storage(QuantSpec(b, s))[1]) for b in (2, 3, 4, 6, 8, 16) for s in (True, False)}
    assert names[(3, True)] == names[(4, True)] == "INT4" and names[(4, False)] == "UINT4"
    assert names[(6, True)] == names[(8, True)] == "INT8" and names[(8, False)] == "UINT8"
    assert names[(16, False)] == "UINT16" and names[(16, True)] == "INT16" and names[(2, False)] == "UINT4"
    assert storage(QuantSpec(8, True))[3:] == (-128, 127)  # the type's range; lcpaq's symmetric one is [-127, 127]


@pytest.mark.parametrize("bits, types", [("w8a8", {"int8", "uint8"}), ("w4a8", {"int4", "uint8"}), ("w4a4", {"int4", "uint4"}),
                                         ("w16a16", {"int16", "uint16"}), ("w3a6", {"int4", "uint8"})])
def test_uniform_precisions_export_and_ort_equals_fake_quant(bits: str, types: set[str], tmp_path: Path) -> None:
    x = _x()
    gm = quantized(TinyResNet(), x, f"uniform{{w={bits[1:bits.index('a')]},a={bits[bits.index('a') + 1:]}}},fake-quant", target="sim")
    info = export_onnx(gm, [x[:1]], tmp_path / "m.onnx")
    assert set(info["code_types"]) == types and info["opset"] == 21
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert model.opset_import[0].version == 21 and not [n for n in model.graph.node if n.domain]
    assert _ops(tmp_path / "m.onnx")["DequantizeLinear"] == info["quantizers"]  # weights: codes + DQ, Q folded away
    check = ort_check(tmp_path / "m.onnx", gm, [x[:1]])
    assert check["max_abs_diff_exact"] < EXACT
    if bits == "w4a4":  # ORT's optimizer moves 4-bit Q/DQ across MaxPool, which has no 4-bit kernel: said, not hidden
        assert "MaxPool" in check["optimized_error"]


def test_a_layer_left_in_float_has_no_quantizers(tmp_path: Path) -> None:
    x = _x(1)
    gm = mixed(TinyMobile(), x, float_layers=2)
    info = export_onnx(gm, [x[:1]], tmp_path / "m.onnx")
    ops = _ops(tmp_path / "m.onnx")
    assert ops["Conv"] >= 4 and ops["DequantizeLinear"] == info["quantizers"]
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    float_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 4]
    assert len(float_weights) == 2  # the two float convs keep their fp32 weights
    assert ort_check(tmp_path / "m.onnx", gm, [x[:1]])["max_abs_diff_exact"] < EXACT


def test_saturation_matches_lcpaq_past_the_calibrated_range(tmp_path: Path) -> None:
    """Symmetric int8 activations: lcpaq clamps codes to [-127, 127], ONNX to [-128, 127]; the
    Clip before each QuantizeLinear makes ORT agree on inputs far outside calibration."""
    x = _x(2)
    gm = quantized(TinyResNet(), x, "quant-scheme{act_symmetric=true},calibrate,uniform{w=8,a=8},fake-quant", target="sim")
    export_onnx(gm, [x[:1]], tmp_path / "m.onnx")
    assert _ops(tmp_path / "m.onnx").get("Clip", 0) >= 1
    loud = _x(3, scale=20.0)[:1]
    session = ort_session(tmp_path / "m.onnx", optimized=False)
    with torch.no_grad():
        ref = gm(loud).numpy()
    y = session.run(None, {session.get_inputs()[0].name: loud.numpy()})[0]
    assert np.abs(y - ref).max() < EXACT * max(1.0, float(np.abs(ref).max()))


def test_tensorrt_flavour_is_symmetric_int8_only(tmp_path: Path) -> None:
    x = _x(4)
    asym = quantized(TinyResNet(), x, "uniform{w=8,a=8},fake-quant", target="sim")
    with pytest.raises(ConfigError, match="tensorrt flavour takes symmetric int8 only"):
        export_onnx(asym, [x[:1]], tmp_path / "a.onnx", flavor="tensorrt")
    int4 = quantized(TinyResNet(), x, "quant-scheme{act_symmetric=true},calibrate,uniform{w=4,a=8},fake-quant", target="sim")
    with pytest.raises(ConfigError, match="is int4"):
        export_onnx(int4, [x[:1]], tmp_path / "b.onnx", flavor="tensorrt")
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()
    sym = quantized(TinyResNet(), x, "quant-scheme{act_symmetric=true},calibrate,uniform{w=8,a=8},fake-quant", target="sim")
    info = export_onnx(sym, [x[:1]], tmp_path / "t.onnx", flavor="tensorrt")
    graph = onnx.load(str(tmp_path / "t.onnx")).graph
    assert info["code_types"] == {"int8": info["quantizers"]}
    assert not [n for n in graph.node if n.op_type == "Clip" and n.name.startswith("lcpaq_")]  # TensorRT saturates itself
    zero_points = [onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and all(not z.any() for z in zero_points)


def test_export_is_deterministic(tmp_path: Path) -> None:
    x = _x(5)
    gm = quantized(TinyResNet(), x, "uniform{w=4,a=8},fake-quant", target="sim")
    export_onnx(gm, [x[:1]], tmp_path / "a.onnx")
    export_onnx(gm, [x[:1]], tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
