import pytest
import torch
from torch import nn

from lcpaq.ir import capture, find_layers
from lcpaq.ir.meta import ACT_RANGE
from lcpaq.passes import PassContext, Pipeline
from lcpaq.passes.range_estimators import Observer, estimate


class Probe(nn.Module):
    """One linear layer, so its input range is the range of the data we feed."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _observer(*chunks: torch.Tensor) -> Observer:
    obs = Observer()
    for c in chunks:
        obs.update(c)
    return obs


def test_minmax_is_exact_across_batches() -> None:
    obs = _observer(torch.tensor([-1.0, 2.0]), torch.tensor([0.5, 7.0]), torch.tensor([-3.0]))
    assert estimate(obs, "minmax", 8, False) == (-3.0, 7.0)


def test_percentile_of_uniform_data() -> None:
    gen = torch.Generator().manual_seed(0)
    obs = _observer(*(torch.rand(100_000, generator=gen) for _ in range(4)))
    lo, hi = estimate(obs, "percentile", 8, False, percentile=99.0)
    assert lo == pytest.approx(0.0, abs=1e-4)  # non-negative data keeps its exact minimum
    assert hi == pytest.approx(0.99, abs=0.005)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_clipping_methods_ignore_an_outlier(method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(200_000, generator=gen)
    data[0] = 1000.0
    lo, hi = estimate(_observer(data), method, 8, symmetric=True)
    assert 2.5 < hi < 20.0  # clipped far below the 1000 outlier, but keeps the bulk (|x| < ~4.5)


def test_entropy_keeps_full_range_of_uniform_data() -> None:
    gen = torch.Generator().manual_seed(0)
    lo, hi = estimate(_observer(torch.rand(200_000, generator=gen) * 4.0), "entropy", 8, False)
    assert lo == pytest.approx(0.0, abs=1e-3) and hi == pytest.approx(4.0, rel=0.02)


def test_mse_finds_gaussian_clipping_optimum() -> None:
    """For N(0, 1) at 4 bits the MSE-optimal symmetric clip is about 2.5 sigma (Banner et al.,
    ACIQ); at 8 bits it lies near the tail, about 4 sigma."""
    gen = torch.Generator().manual_seed(0)
    obs = _observer(torch.randn(400_000, generator=gen))
    lo, hi = estimate(obs, "mse", 4, True)
    assert 2.2 < max(-lo, hi) < 2.9
    _, hi8 = estimate(obs, "mse", 8, True)
    assert 3.4 < hi8 <= obs.hi


def test_mse_clips_less_at_higher_bit_widths() -> None:
    gen = torch.Generator().manual_seed(0)
    obs = _observer(torch.randn(100_000, generator=gen))
    _, hi4 = estimate(obs, "mse", 4, True)
    _, hi8 = estimate(obs, "mse", 8, True)
    assert hi4 < hi8


def test_calibrate_pass_writes_ranges_per_width(x86) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = tuple((torch.rand(64, 1, generator=gen) * (i + 1),) for i in range(3))
    gm = capture(Probe(), (batches[0][0][:1],))
    ctx = PassContext(x86, (batches[0][0][:1],), batches)
    Pipeline.from_spec("calibrate{method=minmax}")(gm, ctx)
    ranges = ACT_RANGE.get(find_layers(gm)[0].node)
    assert [r.bits for r in ranges.per_input[0]] == list(x86.act_bits)
    r8 = ranges.get(0, 8)
    all_data = torch.cat([b[0] for b in batches])
    assert (r8.lo, r8.hi) == (float(all_data.min()), float(all_data.max()))
    with pytest.raises(KeyError, match="no 4-bit range calibrated"):
        ranges.get(0, 4)


def test_observer_seeds_follow_graph_order(monkeypatch, x86) -> None:
    """Each observer's seed picks its subsample of a large activation: seeds go by graph order,
    not by a set's (address) order, so a calibration is the same in every process."""
    from lcpaq.passes import calibrate as calibrate_module

    seeds: list[int] = []

    class Recording(Observer):  # records its seed as the graph runs: in execution order
        def update(self, x: torch.Tensor) -> None:
            seeds.append(self.seed)
            super().update(x)

    monkeypatch.setattr(calibrate_module, "Observer", Recording)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(4, 8)
    gm = capture(model, (x[:1],))
    ctx = PassContext(x86, (x[:1],), ((x,),), seed=7)
    Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate{method=percentile}")(gm, ctx)
    assert seeds == [7, 8, 9]
    acts = [layer.act_inputs[0].name for layer in find_layers(gm)]
    assert acts == ["input_1", "relu", "relu_1"]  # the order the graph runs them in
