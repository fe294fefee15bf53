"""What ``lcpaq quantize --search`` holds out from the search, to report the winner on data no
trial saw: a model scored by output cosine (no evaluate function of its own) with two or more
evaluation batches selects on the first half and holds out the rest; a model with its own
evaluate function scores one fixed set, which cannot be split, and the report says so."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lcpaq.ir.metrics import output_metrics, reference_outputs
from lcpaq.tools.models.zoo import ModelBundle


def selection_split(bundle: ModelBundle) -> tuple[ModelBundle, tuple[Any, ...], str]:
    """The bundle a search selects on, the evaluation batches held out from it, and, when none
    are, why. A model scored by output cosine (no evaluate function of its own) with two or
    more evaluation batches selects on the first half and holds out the rest."""
    if bundle.evaluate is not None:
        return bundle, (), ("the model's own evaluate function scores one fixed set, which the search also selected on, "
                            "so its numbers carry that selection")
    if len(bundle.eval_batches) < 2:
        return bundle, (), "the model has a single evaluation batch, which the search selected on"
    half = (len(bundle.eval_batches) + 1) // 2
    return dataclasses.replace(bundle, eval_batches=bundle.eval_batches[:half]), bundle.eval_batches[half:], ""


def held_out_check(bundle: ModelBundle, selection: ModelBundle, held: tuple[Any, ...], reason: str,
                   winner: torch.nn.Module) -> dict[str, Any]:
    """The winner's cosine to fp32 on the batches it was selected on and on those held out."""
    if not held:
        return {"reason": reason}
    cosine = lambda batches: output_metrics(reference_outputs(bundle.model, batches), winner, batches)["cosine"]  # noqa: E731
    return {"selection_batches": len(selection.eval_batches), "held_out_batches": len(held),
            "selection_cosine": cosine(selection.eval_batches), "held_out_cosine": cosine(held)}
