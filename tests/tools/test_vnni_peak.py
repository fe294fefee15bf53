"""The VNNI peak kernel compiles, runs and counts its MACs; a missing compiler is one clear error."""
import pytest

from lcpaq.ir.errors import ConfigError
from lcpaq.tools import vnni_peak


def test_peak_is_measured_in_macs_per_second() -> None:
    peak = vnni_peak.measure_peak(threads=1, iters=200_000)
    assert peak["threads"] == 1 and "vpdpbusd" in peak["how"]
    # one core issues at most a few 64-MAC vpdpbusd per cycle at a few GHz
    assert 1e9 < peak["int8_macs_per_s"] < 64 * 4 * 6e9


def test_no_compiler_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(vnni_peak.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="measuring the VNNI peak needs a C compiler"):
        vnni_peak.measure_peak()
