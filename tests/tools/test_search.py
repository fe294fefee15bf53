import itertools
import math
import random
import types

import numpy as np
import pytest
import torch

from lcpaq.hw_targets import load_target
from lcpaq.ir import capture
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import QSPEC, QUANT_SCHEME, SENSITIVITY, BitAssignment
from lcpaq.passes import PassContext
from lcpaq.tools import search as search_module
from lcpaq.tools.models.zoo import ModelBundle, bundle_from_return
from lcpaq.tools.search import proxy_correlations, run_search
from lcpaq.passes.fisher import FisherDiagonals
from lcpaq.passes.sensitivity_model import SharedTraces
from lcpaq.tools.cli import build_parser
from lcpaq.tools.search_harness import DEFAULT_PROXY, FISHER_SAMPLES, PROXIES, SearchHarness, config_pipeline
from lcpaq.tools.search_space import DIMENSIONS, SearchSpace

# The MLP below, by hand: weights and biases per layer, and its fp32 size.
WEIGHTS, BIASES = (16 * 32, 32 * 32, 32 * 4), (32, 32, 4)
FP32_SIZE = 4 * (sum(WEIGHTS) + sum(BIASES))  # 6928 bytes


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


def _mlp_bundle() -> ModelBundle:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4)).eval()
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(32, 16, generator=gen) for _ in range(4)]
    return bundle_from_return("mlp", (model, (data[0][:1],), data))


@pytest.fixture(scope="module")
def harness() -> SearchHarness:
    space = SearchSpace.load().narrowed(["probes=4|8"])
    return SearchHarness(_mlp_bundle(), load_target("x86-host"), {"size": "0.2x"}, space)


_FRESH: dict[tuple, torch.fx.GraphModule | None] = {}


def fresh(harness: SearchHarness, config: dict) -> torch.fx.GraphModule | None:
    """The configuration built from scratch by the pipeline the search reports for it (its own
    Hessian probes, no shared state), or None where its budget cannot be met."""
    key = tuple(sorted(config.items()))
    if key not in _FRESH:
        b = harness.bundle
        ctx = PassContext(harness.target, b.example_inputs, b.calib_batches, seed=0, calib_labels=b.calib_labels)
        try:
            _FRESH[key] = config_pipeline(config, harness.budgets, harness.target)(capture(b.model, b.example_inputs), ctx).graph_module
        except ConfigError:
            _FRESH[key] = None
    return _FRESH[key]


def cosine(harness: SearchHarness, gm) -> float:
    """Mean per-sample cosine similarity of ``gm``'s outputs to the fp32 model's, over the
    evaluation batches: the validation metric of a bundle without an evaluate function."""
    with torch.no_grad():
        sims = [torch.nn.functional.cosine_similarity(harness.bundle.model(x).double(), gm(x).double(), dim=1)
                for (x,) in harness.bundle.eval_batches]
    return float(torch.cat(sims).mean())


def kl(harness: SearchHarness, gm) -> float:
    """Mean KL(softmax(fp32) || softmax(quantized)) per sample on the first calibration batch."""
    (x,) = harness.bundle.calib_batches[0]
    with torch.no_grad():
        p = torch.log_softmax(harness.bundle.model(x).double(), -1)
        q = torch.log_softmax(gm(x).double(), -1)
    return float(torch.nn.functional.kl_div(q, p, log_target=True, reduction="sum")) / x.shape[0]


CONFIG = {"calibration": "minmax", "percentile": None, "weight_granularity": "per-tensor", "act_symmetric": True,
          "act_bits": "target", "weight_bits": "4-8", "probes": 8, "bias_correction": False, "tradeoff_bops": 0.0}


def test_hessian_proxy_is_the_least_total_sensitivity_under_the_budget(harness: SearchHarness) -> None:
    """By enumeration of every W4..W8 (A8) assignment of the three layers, sized by hand."""
    gm = fresh(harness, CONFIG)
    sens = [SENSITIVITY.get(layer.node) for layer in find_layers(gm)]
    best = math.inf
    for widths in itertools.product(range(4, 9), repeat=3):
        size = sum(n * w / 8 for n, w in zip(WEIGHTS, widths)) + 4 * sum(BIASES)
        if size <= 0.2 * FP32_SIZE:
            best = min(best, sum(s.of(BitAssignment(w, 8)) for s, w in zip(sens, widths)))
    assert harness.proxy(CONFIG, "hessian") == pytest.approx(-best, rel=1e-9)
    assert harness.proxy(CONFIG, "kl") == pytest.approx(-kl(harness, gm), rel=1e-9)


def test_fisher_proxy_rescores_the_ilp_assignment_with_fisher_terms(harness: SearchHarness) -> None:
    """The configuration's own (Hessian-ILP) assignment, its layers' errors weighted by Fisher
    diagonals measured independently (on a fresh capture of the fp32 model) on the same batches
    with the same seed."""
    gm = fresh(harness, CONFIG)
    fp32 = capture(harness.bundle.model, harness.bundle.example_inputs)
    fisher = FisherDiagonals.measure(fp32, harness.ctx.batches()[: harness.hessian_batches], False, FISHER_SAMPLES, seed=0)
    layers = find_layers(gm)
    sens = fisher.sensitivities(gm, layers, harness.target, QUANT_SCHEME.get(gm))
    expected = sum(sens[layer.name].of(QSPEC.get(layer.node).bits) for layer in layers)
    assert harness.proxy(CONFIG, "fisher") == pytest.approx(-expected, rel=1e-6)


def test_the_cli_offers_every_proxy() -> None:
    action = next(a for a in build_parser()._subparsers._group_actions[0].choices["quantize"]._actions if a.dest == "proxy")
    assert tuple(action.choices) == PROXIES and action.default == DEFAULT_PROXY


def test_config_pipeline_reproduces_the_built_graph(harness: SearchHarness) -> None:
    config = {"calibration": "mse", "percentile": None, "weight_granularity": "per-tensor", "act_symmetric": True,
              "act_bits": "8", "weight_bits": "3-8", "probes": 8, "bias_correction": True, "tradeoff_bops": 0.1}
    built = harness.build(config)
    again = fresh(harness, config)
    specs = lambda gm: [QSPEC.get(layer.node) for layer in find_layers(gm)]  # noqa: E731
    assert specs(again) == specs(built) and all(s.weight.ch_axis is None and s.act.symmetric for s in specs(built))
    assert [SENSITIVITY.get(a.node) for a in find_layers(again)] == [SENSITIVITY.get(b.node) for b in find_layers(built)]
    x = torch.cat([batch[0] for batch in harness.bundle.eval_batches])
    with torch.no_grad():
        assert torch.allclose(again(x), built(x), atol=1e-6)
    assert "ilp{size=0.2x,tradeoff=bops:0.1,w_range=3-8,a_bits=8}" in config_pipeline(config, harness.budgets, harness.target).spec()


def _independent_metric(harness: SearchHarness, config: dict) -> float:
    gm = fresh(harness, config)
    return -math.inf if gm is None else cosine(harness, gm)


def test_proxy_search_confirms_the_top_three_and_keeps_the_best(harness: SearchHarness) -> None:
    first = run_search(harness, "proxy", trials=12, proxy="kl", top_k=3, seed=5)
    second = run_search(harness, "proxy", trials=12, proxy="kl", top_k=3, seed=5)
    assert [t["config"] for t in first.trials] == [t["config"] for t in second.trials]  # reproducible from the seed
    assert first.best == second.best and first.best_metric == second.best_metric
    scored = {}
    for trial in first.trials:
        gm = fresh(harness, trial["config"])
        if gm is not None:
            scored[tuple(sorted(trial["config"].items()))] = -kl(harness, gm)
    top = sorted(scored, key=scored.get, reverse=True)[:3]
    assert sorted(tuple(sorted(c["config"].items())) for c in first.confirmed) == sorted(top)
    metrics = {key: _independent_metric(harness, dict(key)) for key in top}
    assert first.best_metric == pytest.approx(max(metrics.values()), rel=1e-9)
    assert metrics[tuple(sorted(first.best.items()))] == pytest.approx(max(metrics.values()), rel=1e-9)
    assert first.seconds["confirm"] == pytest.approx(sum(c["seconds"] for c in first.confirmed), rel=0.05)
    # the default evaluates the proxy's winner alone: the same trials, the first of the three
    default = run_search(harness, "proxy", trials=12, proxy="kl", seed=5)
    assert [t["config"] for t in default.trials] == [t["config"] for t in first.trials]
    assert [c["config"] for c in default.confirmed] == [first.confirmed[0]["config"]]
    assert default.best_metric == pytest.approx(metrics[tuple(sorted(first.confirmed[0]["config"].items()))], rel=1e-9)
    with pytest.raises(ConfigError, match="--confirm must be >= 1"):
        run_search(harness, "proxy", trials=2, proxy="kl", top_k=0)


def test_full_search_keeps_the_best_trial(harness: SearchHarness) -> None:
    full = run_search(harness, "full", trials=12, seed=5)
    metrics = [_independent_metric(harness, t["config"]) for t in full.trials]
    assert full.best_metric == pytest.approx(max(metrics), rel=1e-9) and full.confirmed == []
    assert _independent_metric(harness, full.best) == pytest.approx(max(metrics), rel=1e-9)


def _ranks(xs: list[float]) -> np.ndarray:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = np.zeros(len(xs))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1  # ties share their average rank
        i = j + 1
    return ranks


def _kendall_tau_b(xs: list[float], ys: list[float]) -> float:
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(xs)), 2):
        dx, dy = np.sign(xs[i] - xs[j]), np.sign(ys[i] - ys[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    return (concordant - discordant) / math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))


def test_proxy_correlations(harness: SearchHarness, monkeypatch) -> None:
    """On a clock that moves only by each proxy's known cost: exact seconds per configuration,
    the low-cost rule (at most a fifth of the metric's cost), rank correlations recomputed by
    hand, and the choice of the best correlated low-cost proxy."""
    cost = {"hessian": 0.1, "fisher": 0.3, "sqnr": 0.5, "cosine": 0.5, "kl": 0.2, "metric": 1.0}
    clock = [0.0]
    proxy, metric = harness.proxy, harness.true_metric

    def timed(name, fn):
        def run(*args):
            clock[0] += cost[name]
            return fn(*args)
        return run

    monkeypatch.setattr(harness, "proxy", lambda config, name: timed(name, proxy)(config, name))
    monkeypatch.setattr(harness, "true_metric", timed("metric", metric))
    monkeypatch.setattr(search_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    result = proxy_correlations(harness, samples=8, seed=1)
    assert result["samples"] == len(result["rows"]) == 8
    for row in result["rows"]:
        assert row["metric"] == pytest.approx(_independent_metric(harness, row["config"]), rel=1e-9)
    spearman = {}
    for name, stats in result["proxies"].items():
        xs, ys = [r[name] for r in result["rows"]], [r["metric"] for r in result["rows"]]
        spearman[name] = float(np.corrcoef(_ranks(xs), _ranks(ys))[0, 1])
        assert stats["spearman"] == pytest.approx(spearman[name], abs=1e-12)
        assert stats["kendall"] == pytest.approx(_kendall_tau_b(xs, ys), abs=1e-12)
        assert stats["seconds_per_config"] == pytest.approx(cost[name])
        assert stats["low_cost"] == (name in ("hessian", "kl"))
    assert result["metric_seconds_per_config"] == pytest.approx(1.0)
    assert result["best"] == max(("hessian", "kl"), key=spearman.get)


def test_search_needs_budget() -> None:
    with pytest.raises(ConfigError, match="at least one --budget"):
        SearchHarness(ModelBundle("x", torch.nn.Linear(2, 2), (torch.randn(1, 2),), (), ()), load_target("sim"), {}, SearchSpace.load())


def test_a_budget_no_precision_meets_is_one_line_before_the_hessian(monkeypatch) -> None:
    """2-bit weights and int32 biases: 1664 / 4 + 272 = 688 bytes at the least; known from costs
    alone, so the search stops before any Hessian probe."""
    monkeypatch.setattr(SharedTraces, "measure", lambda *a, **k: pytest.fail("the Hessian was measured"))
    with pytest.raises(ConfigError) as info:
        SearchHarness(_mlp_bundle(), load_target("x86-host"), {"size": "0.01x"}, SearchSpace.load().narrowed(["probes=4"]))
    assert str(info.value) == ("no configuration meets the budgets: infeasible budget: size=0.01x asks size <= 69 B, "
                               "the smallest achievable is 688 B")


@pytest.mark.parametrize("mode", ["proxy", "full"])
def test_a_budget_the_space_cannot_meet_is_one_line_after_the_trials(mode: str) -> None:
    """Feasible with the target's 2-bit weights (688 B), not with the space's 4-8 (1104 B)."""
    narrowed = SearchSpace.load().narrowed(["probes=4", "weight_bits=4-8"])
    harness = SearchHarness(_mlp_bundle(), load_target("x86-host"), {"size": "0.12x"}, narrowed)
    with pytest.raises(ConfigError) as info:
        run_search(harness, mode, trials=3, seed=0)
    assert str(info.value) == ("none of the 3 trials is feasible; no configuration meets the budgets with the search "
                               "space's precisions ({'weight_bits': ('4-8',), 'act_bits': ('target', '8')}); the target's "
                               "full range would: add 'target' to weight_bits and act_bits")


def test_random_configurations_are_seeded() -> None:
    space = SearchSpace.load()
    assert space.sample(random.Random(3)) == space.sample(random.Random(3))
