import json
import re

import pytest

from lcpaq.hw_targets.latency_table import SCHEMA_VERSION, LatencyTable, parse_key, precision_key
from lcpaq.hw_targets import load_target
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.meta import BitAssignment


def _table(**kw) -> LatencyTable:
    base = dict(
        target="x86-host", device="Test CPU", tvm_version="0.27.0", date="2026-11-21T00:00:00Z", trials=0, model="tiny",
        # every entry distinct, so each lookup shows which entry it used
        entries={"conv": {"fp32": 4e-5, "w8a8": 1e-5, "w16a8": 2e-5, "w16a16": 3e-5}, "fc": {"fp32": 2e-6, "w8a8": 1e-6}},
        fixed_seconds=3e-6,
    )
    base.update(kw)
    return LatencyTable(**base)


def test_keys_round_trip() -> None:
    for bits in (BitAssignment(8, 8), BitAssignment(16, 8), BitAssignment(32, 32), BitAssignment(8, 32)):
        assert parse_key(precision_key(bits)) == bits
    assert precision_key(BitAssignment(32, 32)) == "fp32"
    assert precision_key(BitAssignment(8, 32)) == "w8a32" and precision_key(BitAssignment(4, 8)) == "w4a8"
    with pytest.raises(ValueError, match="bad precision key 'int8'"):
        parse_key("int8")


def test_seconds_maps_assignments() -> None:
    t = _table()
    assert t.seconds("conv", BitAssignment(8, 8)) == 1e-5
    assert t.seconds("conv", BitAssignment(4, 8)) == 1e-5  # storage-only weights run at the next wider: int8, not int16
    assert t.seconds("conv", BitAssignment(2, 8)) == 1e-5
    assert t.seconds("conv", BitAssignment(16, 8)) == 2e-5
    assert t.seconds("conv", BitAssignment(32, 32)) == 4e-5
    assert t.seconds("conv", BitAssignment(16, 16)) == 3e-5
    assert t.seconds("conv", BitAssignment(4, 16)) == 3e-5
    assert t.total({"conv": BitAssignment(4, 8), "fc": BitAssignment(32, 32)}) == pytest.approx(3e-6 + 1e-5 + 2e-6, rel=1e-12)
    assert t.total({}) == 3e-6


def test_missing_entries_are_clear_errors() -> None:
    t = _table()
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        t.seconds("nope", BitAssignment(8, 8))
    with pytest.raises(ConfigError, match=r"no w4a16 entry for layer 'fc' \(it has fp32, w8a8\)"):
        t.seconds("fc", BitAssignment(4, 16))
    with pytest.raises(ConfigError, match="no w8a32 entry for layer 'fc'"):  # float activations never fall back
        t.seconds("fc", BitAssignment(8, 32))


def test_invalid_entries_refused() -> None:
    with pytest.raises(ValueError, match="latency of fc at w8a8 must be a positive number of seconds, got 0.0"):
        _table(entries={"fc": {"w8a8": 0.0}})
    with pytest.raises(ValueError, match="bad precision key 'int8'"):
        _table(entries={"fc": {"int8": 1e-6}})
    with pytest.raises(ValueError, match="fixed_seconds must be finite, got nan"):
        _table(fixed_seconds=float("nan"))
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match=f"layer_scale must be finite and > 0, got {bad}"):
            _table(layer_scale=bad)


def test_layer_scale_and_negative_fixed_time() -> None:
    """A model that runs its layers faster than alone: no clamping, the fit's two numbers are used as they are."""
    t = _table(fixed_seconds=-1e-6, layer_scale=0.5)
    assert t.seconds("conv", BitAssignment(8, 8)) == pytest.approx(0.5e-5, rel=1e-12)
    assert t.measured("conv", BitAssignment(8, 8)) == 1e-5
    assert t.total({"conv": BitAssignment(8, 8), "fc": BitAssignment(32, 32)}) == pytest.approx(-1e-6 + 0.5 * (1e-5 + 2e-6), rel=1e-12)


def test_save_load_round_trip(tmp_path) -> None:
    t = _table(notes=("measured at batch 1",), fixed_seconds=-2e-6, layer_scale=0.9)
    path = tmp_path / "sub" / "table.json"
    t.save(path)
    assert json.loads(path.read_text())["schema"] == SCHEMA_VERSION
    assert LatencyTable.load(path, load_target("x86-host")) == t
    assert not list(path.parent.glob(".*.tmp"))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda p, d: p.write_text("{not json"), "is unreadable"),
    (lambda p, d: p.write_text(json.dumps({**d, "schema": 99})), "has schema 99"),
    (lambda p, d: p.write_text(json.dumps({**d, "target": "arm-a76"})), "measured for target 'arm-a76'"),
    (lambda p, d: p.write_text(json.dumps({**d, "layers": {"fc": {"w8a8": -1}}})), "is malformed"),
    (lambda p, d: p.write_text(json.dumps({k: v for k, v in d.items() if k != "device"})), "is malformed"),
])
def test_bad_files_raise_corrupt_file_error_naming_path(tmp_path, mutate, message) -> None:
    path = tmp_path / "table.json"
    _table().save(path)
    mutate(path, json.loads(path.read_text()))
    with pytest.raises(CorruptFileError, match=message) as info:
        LatencyTable.load(path, "x86-host")
    assert str(path) in str(info.value)


def test_missing_file_is_corrupt_file_error(tmp_path) -> None:
    with pytest.raises(CorruptFileError, match=re.escape(f"latency table {tmp_path / 'table.json'} is unreadable: FileNotFoundError")):
        LatencyTable.load(tmp_path / "table.json", "x86-host")
