"""The search benchmark's data: validation and held-out splits that never overlap, drawn from
what ships offline, the held-out scorer independent of the validation one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lcpaq.tools.models import corpus, digits
from lcpaq.tools.search_data import MINILM_BATCH, MINILM_HELD_OUT, MINILM_VALIDATION, splits


def test_digits_split_all_non_training_images_stratified() -> None:
    data = digits.load_data()
    s = splits("resnet-digits")
    assert s.sizes == {"validation": 180, "held_out": 180, "train": 1437}
    train = torch.cat([b[0] for b in s.bundle.train_batches])
    assert torch.equal(train, data.x_train) and torch.equal(torch.cat(s.bundle.train_labels), data.y_train)
    val = torch.cat([b[0] for b in s.bundle.eval_batches])
    assert len(val) == 180
    rows = {tuple(np.round(r.flatten().numpy(), 5)) for r in data.x_test}
    assert {tuple(np.round(r.flatten().numpy(), 5)) for r in val} < rows  # validation images are non-training images
    model = s.bundle.model
    acc_val, acc_hold = s.bundle.evaluate(model)["accuracy"], s.held_out(model)
    both = digits.accuracy(model, data.x_test, data.y_test)
    assert (acc_val + acc_hold) / 2 == pytest.approx(both, abs=1e-9)  # two halves of the 360 test images
    assert "180 for validation and 180 held out" in s.source


def test_minilm_sentences_validation_then_held_out(monkeypatch) -> None:
    train = 3 * MINILM_BATCH + 5  # every quotation the other splits leave
    fake = [f"sentence number {i} about nothing in particular" for i in range(MINILM_VALIDATION + MINILM_HELD_OUT + train)]
    monkeypatch.setattr(corpus, "fortune_sentences", lambda limit=None: fake[:limit])
    s = splits("minilm")
    assert s.sizes == {"validation": MINILM_VALIDATION, "held_out": MINILM_HELD_OUT, "train": train}
    assert len(s.bundle.eval_batches) == MINILM_VALIDATION // MINILM_BATCH
    assert [len(b[0]) for b in s.bundle.train_batches] == [MINILM_BATCH] * 3 + [5] and s.bundle.train_labels is None
    assert s.held_out(s.bundle.model) == pytest.approx(1.0, abs=1e-6)  # the fp32 model against itself
