"""Evaluation data for the search benchmark, from data that ships offline: a validation split
that every search scores on (selection), and a held-out split no search ever sees (reporting).
(``lcpaq quantize --search`` on any model holds out data as :mod:`search_holdout` says.)

- ``resnet-digits``: scikit-learn's digits (1797 images). The model trains on its stratified 80%
  (``digits.load_data``; the HAQ baseline retrains each candidate on it, with its labels);
  the other 360 images are split again, stratified: 180 for validation, 180 held out.
  Calibration stays on training images.
- ``minilm``: quotations of Debian's ``fortunes`` package (``apt-get install fortunes``,
  :mod:`lcpaq.tools.models.corpus`), in their fixed order: the first 1024 for validation, the
  next 2048 held out, scored as the cosine of each sentence's embedding to the fp32 model's,
  and every other quotation (about 6,400) as the training split the HAQ baseline retrains on
  (towards the fp32 embeddings: the model has no labels). As for digits, training takes all
  the data no other split uses. Calibration stays on the model's own sentences.
Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from sklearn.model_selection import train_test_split

from lcpaq.ir.metrics import output_metrics, reference_outputs
from lcpaq.tools.models import corpus, digits, minilm
from lcpaq.tools.models.zoo import ModelBundle, load_model

#: MiniLM's validation and held-out sentence counts (training: every other quotation), and its batch size.
MINILM_VALIDATION, MINILM_HELD_OUT, MINILM_BATCH = 1024, 2048, 32


@dataclass(frozen=True)
class Splits:
    """A model whose ``eval_batches`` / ``evaluate`` score the validation split, the held-out
    scorer, and where the data comes from (a sentence for the report)."""

    bundle: ModelBundle
    held_out: Callable[[torch.nn.Module], float]
    source: str
    sizes: dict[str, int]


def _digits() -> Splits:
    data = digits.load_data()
    x_val, x_hold, y_val, y_hold = train_test_split(data.x_test, data.y_test, test_size=0.5, random_state=0, stratify=data.y_test)
    bundle = dataclasses.replace(
        load_model("resnet-digits"), eval_batches=tuple((x_val[i : i + 120],) for i in range(0, len(x_val), 120)),
        evaluate=lambda m: {"accuracy": digits.accuracy(m, x_val, y_val)},
    )
    source = (f"scikit-learn's digits: the model's 80% training split ({len(data.x_train)} images: calibration, and the HAQ "
              "baseline's retraining with labels); the other "
              f"{len(data.x_test)} split stratified into {len(x_val)} for validation and {len(x_hold)} held out")
    sizes = {"validation": len(x_val), "held_out": len(x_hold), "train": len(data.x_train)}
    return Splits(bundle, lambda m: digits.accuracy(m, x_hold, y_hold), source, sizes)


def _minilm() -> Splits:
    sentences = corpus.fortune_sentences()
    held_end = MINILM_VALIDATION + MINILM_HELD_OUT
    base = load_model("minilm")
    _, tokenizer = minilm.load()
    batches = lambda s: tuple(minilm.encode(tokenizer, s[i : i + MINILM_BATCH]) for i in range(0, len(s), MINILM_BATCH))  # noqa: E731
    held = batches(sentences[MINILM_VALIDATION:held_end])
    reference = reference_outputs(base.model, held)
    bundle = dataclasses.replace(base, eval_batches=batches(sentences[:MINILM_VALIDATION]), train_batches=batches(sentences[held_end:]))
    sizes = {"validation": MINILM_VALIDATION, "held_out": held_end - MINILM_VALIDATION, "train": len(sentences) - held_end}
    source = (f"Debian's fortunes quotations, fixed order: {sizes['validation']} for validation, the next {sizes['held_out']} held "
              f"out (cosine of each embedding to fp32), the next {sizes['train']} for the HAQ baseline's retraining (towards the fp32 "
              "embeddings); calibration on the model's own sentences")
    return Splits(bundle, lambda m: output_metrics(reference, m, held)["cosine"], source, sizes)


SPLITS: dict[str, Callable[[], Splits]] = {"resnet-digits": _digits, "minilm": _minilm}


def splits(name: str) -> Splits:
    """The validation and held-out splits of a built-in model of the search benchmark."""
    return SPLITS[name]()


__all__: list[Any] = ["SPLITS", "Splits", "splits"]
