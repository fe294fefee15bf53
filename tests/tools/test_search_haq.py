"""The existing-method baseline, ``--search haq`` (HAQ's protocol): every candidate is built,
retrained one epoch on training data and only then scored on the validation metric; it shares the search
space, sampler, trial count and seed with the other modes."""
from __future__ import annotations

import copy

import pytest
import torch

from lcpaq.hw_targets import load_target
from lcpaq.ir.errors import ConfigError
from lcpaq.passes import Pipeline
from lcpaq.passes.finetune import FineTune
from lcpaq.tools.search import HAQ_FINETUNE_EPOCHS, run_search
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
        tuned = Pipeline([FineTune(epochs=HAQ_FINETUNE_EPOCHS)])(copy.deepcopy(built), harness.train_context()).graph_module
        assert trial["score"] == pytest.approx(harness.metric_of(tuned), rel=1e-9)
        assert plain["score"] == pytest.approx(harness.metric_of(built), rel=1e-9)
    assert haq.best_metric == max(t["score"] for t in haq.trials) and haq.confirmed == []


def test_an_unknown_mode_is_one_line(harness: SearchHarness) -> None:
    with pytest.raises(ConfigError, match="unknown search 'hawq'; choose proxy, full, haq"):
        run_search(harness, "hawq", trials=2)  # type: ignore[arg-type]


def test_without_labels_the_targets_are_the_fp32_outputs(harness: SearchHarness) -> None:
    """The MLP has no labels and no training split: it retrains on its calibration batches,
    towards the fp32 model's own outputs."""
    train = harness.train_context()
    assert train.calib_batches == harness.bundle.calib_batches
    for batch, target in zip(train.calib_batches, train.calib_labels):
        assert torch.equal(target[0], harness.bundle.model(*batch).detach())
