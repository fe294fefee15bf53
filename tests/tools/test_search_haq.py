"""The existing-method baseline, ``--search haq`` (HAQ's protocol): every candidate is built,
fine-tuned a few steps and only then scored on the validation metric; it shares the search
space, sampler, trial count and seed with the other modes."""
from __future__ import annotations

import copy

import pytest

from lcpaq.hw_targets import load_target
from lcpaq.ir.errors import ConfigError
from lcpaq.passes import Pipeline
from lcpaq.passes.distill import Distill
from lcpaq.tools.search import HAQ_FINETUNE_STEPS, run_search
from lcpaq.tools.search_harness import SearchHarness
from lcpaq.tools.search_space import SearchSpace
from tests.tools.test_search import _mlp_bundle


@pytest.fixture(scope="module")
def harness() -> SearchHarness:
    return SearchHarness(_mlp_bundle(), load_target("x86-host"), {"size": "0.2x"}, SearchSpace.load().narrowed(["probes=4|8"]))


def test_haq_scores_each_candidate_after_fine_tuning(harness: SearchHarness) -> None:
    haq = run_search(harness, "haq", trials=4, seed=5)
    full = run_search(harness, "full", trials=4, seed=5)
    assert [t["config"] for t in haq.trials] == [t["config"] for t in full.trials]  # same sampler, space and seed
    for trial, plain in zip(haq.trials, full.trials):
        built = harness.build(trial["config"])
        if built is None:
            continue
        tuned = Pipeline([Distill(steps=HAQ_FINETUNE_STEPS)])(copy.deepcopy(built), harness.ctx).graph_module
        assert trial["score"] == pytest.approx(harness.metric_of(tuned), rel=1e-9)
        assert plain["score"] == pytest.approx(harness.metric_of(built), rel=1e-9)
    assert haq.best_metric == max(t["score"] for t in haq.trials) and haq.confirmed == []


def test_an_unknown_mode_is_one_line(harness: SearchHarness) -> None:
    with pytest.raises(ConfigError, match="unknown search 'hawq'; choose proxy, full, haq"):
        run_search(harness, "hawq", trials=2)  # type: ignore[arg-type]
