import dataclasses

import pytest

from lcpaq.ir.meta import QSPEC, QUANT_SCHEME, BitAssignment, LayerQuantSpec, QuantScheme, QuantSpec


@pytest.mark.parametrize(("spec", "dtype", "granularity", "qmin", "qmax"), [
    (QuantSpec(8), "int8", "per-tensor", -127, 127),
    (QuantSpec(8, symmetric=False), "uint8", "per-tensor", 0, 255),
    (QuantSpec(4, ch_axis=0), "int4", "per-channel", -7, 7),
    (QuantSpec(3, symmetric=False, ch_axis=-1), "uint3", "per-channel", 0, 7),
    (QuantSpec(16), "int16", "per-tensor", -32767, 32767),
])
def test_quant_spec_derives_dtype_and_granularity(spec: QuantSpec, dtype: str, granularity: str, qmin: int, qmax: int) -> None:
    assert (spec.dtype, spec.granularity, spec.qmin, spec.qmax) == (dtype, granularity, qmin, qmax)


def test_quant_spec_is_frozen_and_refuses_float() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        QuantSpec(8).bits = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="32 bits means no quantizer"):
        QuantSpec(32)
    with pytest.raises(ValueError, match="unsupported bit-width 9"):
        QuantSpec(9)


@pytest.mark.parametrize(("spec", "bits"), [
    (LayerQuantSpec(QuantSpec(4, ch_axis=0), QuantSpec(8, symmetric=False)), BitAssignment(4, 8)),
    (LayerQuantSpec(None, QuantSpec(8)), BitAssignment(32, 8)),  # weight kept in float
    (LayerQuantSpec(QuantSpec(6, ch_axis=0), None), BitAssignment(6, 32)),  # an embedding table
    (LayerQuantSpec(None, QuantSpec(8), weightless=True), BitAssignment(8, 8)),  # activation x activation matmul
    (LayerQuantSpec(None, None, weightless=True), BitAssignment(32, 32)),
    (LayerQuantSpec(None, None), BitAssignment(32, 32)),
])
def test_layer_spec_bits(spec: LayerQuantSpec, bits: BitAssignment) -> None:
    assert spec.bits == bits and str(spec) == str(bits)


def test_layer_spec_refuses_a_weight_on_a_weightless_layer() -> None:
    with pytest.raises(ValueError, match="weightless layer has no weight spec"):
        LayerQuantSpec(QuantSpec(8), QuantSpec(8), weightless=True)


def test_scheme_builds_the_specs() -> None:
    per_channel = QuantScheme("per-channel", act_symmetric=False)
    assert per_channel.weight(4, 0) == QuantSpec(4, symmetric=True, ch_axis=0)
    assert per_channel.act(8) == QuantSpec(8, symmetric=False)
    per_tensor = QuantScheme("per-tensor", act_symmetric=True)
    assert per_tensor.weight(4, -1) == QuantSpec(4, symmetric=True, ch_axis=None)
    assert per_tensor.act(6) == QuantSpec(6, symmetric=True)
    with pytest.raises(ValueError, match="weight granularity must be one of per-channel, per-tensor"):
        QuantScheme("per-row", act_symmetric=False)  # type: ignore[arg-type]


def test_keys_have_their_scopes() -> None:
    assert (QSPEC.name, QSPEC.scope, QSPEC.value_type) == ("lcpaq.qspec", "layer", LayerQuantSpec)
    assert (QUANT_SCHEME.name, QUANT_SCHEME.scope, QUANT_SCHEME.value_type) == ("lcpaq.quant_scheme", "graph", QuantScheme)
