import pytest

from lcpaq.ir.errors import ConfigError
from lcpaq.tools.api import parse_bits, quantize
from lcpaq.ir.meta import BitAssignment


def test_parse_bits() -> None:
    assert parse_bits("w4a8") == BitAssignment(4, 8)
    assert parse_bits("W16A16") == BitAssignment(16, 16)
    with pytest.raises(ConfigError, match="unsupported activation bit-width 1"):
        parse_bits("w8a1")


def test_minilm_quantizes_with_real_weights() -> None:
    result = quantize("minilm", target="sim", bits="w8a8", compare=["w8a16"])  # sim: 16-bit activations
    report = result.report
    assert len(report["layers"]) == 52  # 37 linear, 12 matmul, 3 embedding tables
    assert report["totals"]["params"] == 22_713_216
    metrics = {c["label"]: c["metrics"] for c in report["configs"]}
    assert metrics["W8A8"]["cosine"] > 0.98
    assert metrics["W8A16"]["sqnr_db"] > metrics["W8A8"]["sqnr_db"] + 6  # activations dominate
    matmuls = [row for row in report["layers"] if row["op"] == "matmul"]
    assert len(matmuls) == 12 and all(row["w_bits"] is None and row["a_bits"] == 8 for row in matmuls)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18", "resnet50", "mobilenetv2"])
def test_large_cnns_end_to_end(model: str, tmp_path) -> None:
    result = quantize(model, bits="w8a8", compare=["w4a8"], out=tmp_path)
    metrics = {c["label"]: c["metrics"] for c in result.report["configs"]}
    assert metrics["W8A8"]["cosine"] > 0.95
    assert metrics["W8A8"]["sqnr_db"] > metrics["W4A8"]["sqnr_db"]
    assert (tmp_path / "report.md").exists()


def test_stopwatch_nested_stages_are_not_counted_twice() -> None:
    """A fake clock ticking 1 s per reading: a stage of 3 s holding one of 1 s and a sequential
    stage of 1 s add up to 4 s, the time they cover; the inner stage is kept apart."""
    from itertools import count

    from lcpaq.tools.api import Stopwatch

    ticks = count()
    clock = Stopwatch(clock=lambda: float(next(ticks)))
    with clock.stage("search"):  # reads 0
        with clock.stage("trials"):  # reads 1, 2
            pass
    # "search" reads 3
    with clock.stage("report"):  # reads 4, 5
        pass
    assert clock.stages == {"search": 3.0, "report": 1.0}
    assert clock.nested == {"search: trials": 1.0}
    assert clock.total == 4.0
