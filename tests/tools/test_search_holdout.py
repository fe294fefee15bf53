"""What `quantize --search` holds out: half the evaluation batches of a cosine-scored model,
nothing (and why) for a model with its own evaluate function or a single batch."""
import dataclasses

import pytest
import torch

from lcpaq.ir.metrics import output_metrics, reference_outputs
from lcpaq.tools.search_holdout import held_out_check, selection_split
from tests.tools.test_search import _mlp_bundle


def test_a_cosine_scored_model_selects_on_the_first_half() -> None:
    bundle = dataclasses.replace(_mlp_bundle(), eval_batches=tuple((torch.full((2, 16), float(i)),) for i in range(5)))
    selection, held, reason = selection_split(bundle)
    assert [b[0][0, 0].item() for b in selection.eval_batches] == [0, 1, 2] and [b[0][0, 0].item() for b in held] == [3, 4]
    assert reason == "" and selection.calib_batches == bundle.calib_batches
    check = held_out_check(bundle, selection, held, reason, bundle.model)
    assert check == {"selection_batches": 3, "held_out_batches": 2, "selection_cosine": pytest.approx(1.0), "held_out_cosine": pytest.approx(1.0)}
    noisy = torch.nn.Sequential(bundle.model, _Noise())
    expected = output_metrics(reference_outputs(bundle.model, held), noisy, held)["cosine"]
    got = held_out_check(bundle, selection, held, reason, noisy)["held_out_cosine"]
    assert got == pytest.approx(expected, rel=1e-12) and got < 0.999


class _Noise(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sin(x * 7.0)


def test_an_own_evaluate_function_or_one_batch_holds_nothing_out() -> None:
    bundle = _mlp_bundle()
    scored = dataclasses.replace(bundle, evaluate=lambda m: {"accuracy": 1.0})
    assert selection_split(scored)[:2] == (scored, ())
    assert "evaluate function" in held_out_check(scored, *selection_split(scored), scored.model)["reason"]
    single = dataclasses.replace(bundle, eval_batches=bundle.eval_batches[:1])
    assert "single evaluation batch" in selection_split(single)[2]
