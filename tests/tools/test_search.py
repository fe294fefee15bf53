import math

import pytest
import torch

from lcpaq.hw_targets import load_target
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.meta import ASSIGNMENT, BITS
from lcpaq.ir.layers import find_layers
from lcpaq.passes import PassContext
from lcpaq.tools.models.zoo import ModelBundle, bundle_from_return
from lcpaq.tools.search import proxy_correlations, run_search
from lcpaq.tools.search_harness import SearchHarness, config_pipeline
from lcpaq.tools.search_space import DIMENSIONS, SearchSpace
from lcpaq.ir import capture


def test_default_space_loads_and_narrows() -> None:
    space = SearchSpace.load()
    assert [name for name, _ in space.dims] == list(DIMENSIONS)
    assert space.size() == 4 * 3 * 2 * 2 * 2 * 3 * 3 * 2 * 3
    narrow = space.narrowed(["calibration=minmax|mse", "act_symmetric=false", "probes=4"])
    assert narrow.choices["calibration"] == ("minmax", "mse")
    assert narrow.choices["act_symmetric"] == (False,) and narrow.choices["probes"] == (4,)


@pytest.mark.parametrize(("setting", "message"), [
    ("speed=1|2", "bad --space-set 'speed=1|2'"),
    ("probes=many", "bad search value 'many'"),
    ("act_symmetric=maybe", "expected true or false"),
])
def test_bad_space_settings(setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchSpace.load().narrowed([setting])


def test_corrupt_or_incomplete_space_file(tmp_path) -> None:
    bad = tmp_path / "space.toml"
    bad.write_text("[dimensions\n")
    with pytest.raises(CorruptFileError, match=f"search space file {bad} is invalid"):
        SearchSpace.load(bad)
    partial = tmp_path / "partial.toml"
    partial.write_text('[dimensions]\ncalibration = ["minmax"]\n')
    with pytest.raises(ConfigError, match="search space lacks"):
        SearchSpace.load(partial)


@pytest.fixture(scope="module")
def harness() -> SearchHarness:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4)).eval()
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(32, 16, generator=gen) for _ in range(4)]
    bundle = bundle_from_return("mlp", (model, (data[0][:1],), data))
    space = SearchSpace.load().narrowed(["probes=4|8"])
    return SearchHarness(bundle, load_target("x86-host"), {"size": "0.2x"}, space)


def test_hessian_proxy_is_the_ilp_objective(harness: SearchHarness) -> None:
    config = SearchSpace.load().sample(__import__("random").Random(3))
    config["probes"] = 8
    gm = harness.assign(config)
    assert harness.proxy(config, "hessian") == -ASSIGNMENT.get(gm).sensitivity
    assert math.isfinite(harness.proxy(config, "kl")) and harness.proxy(config, "kl") <= 0


def test_config_pipeline_reproduces_the_built_graph(harness: SearchHarness) -> None:
    config = {"calibration": "mse", "percentile": None, "weight_granularity": "per-tensor", "act_symmetric": True,
              "act_bits": "8", "weight_bits": "3-8", "probes": 8, "bias_correction": True, "tradeoff_bops": 0.1}
    built = harness.build(config)
    b = harness.bundle
    pipeline = config_pipeline(config, harness.budgets, harness.target)
    ctx = PassContext(harness.target, b.example_inputs, b.calib_batches, seed=0, calib_labels=b.calib_labels)
    again = pipeline(capture(b.model, b.example_inputs), ctx).graph_module
    assert [BITS.get(layer.node) for layer in find_layers(again)] == [BITS.get(layer.node) for layer in find_layers(built)]
    x = torch.cat([batch[0] for batch in b.eval_batches])
    with torch.no_grad():
        assert torch.allclose(again(x), built(x), atol=1e-6)
    assert "ilp{size=0.2x,tradeoff=bops:0.1,w_range=3-8,a_bits=8}" in pipeline.spec()


def test_searches_are_reproducible(harness: SearchHarness) -> None:
    first = run_search(harness, "proxy", trials=12, proxy="kl", seed=5)
    second = run_search(harness, "proxy", trials=12, proxy="kl", seed=5)
    assert first.best == second.best and first.best_metric == second.best_metric
    assert len(first.confirmed) == 3
    assert first.best_metric == max(c["metric"] for c in first.confirmed)
    full = run_search(harness, "full", trials=12, seed=5)
    assert full.best_metric == max(t["score"] for t in full.trials) and full.confirmed == []


def test_proxy_correlations(harness: SearchHarness) -> None:
    result = proxy_correlations(harness, samples=8, seed=1)
    assert result["samples"] == 8
    assert result["best"] in result["proxies"]
    for stats in result["proxies"].values():
        assert -1.0 <= stats["spearman"] <= 1.0 or math.isnan(stats["spearman"])
        assert stats["seconds_per_config"] > 0


def test_search_needs_budget() -> None:
    with pytest.raises(ConfigError, match="at least one --budget"):
        SearchHarness(ModelBundle("x", torch.nn.Linear(2, 2), (torch.randn(1, 2),), (), ()), load_target("sim"), {}, SearchSpace.load())
