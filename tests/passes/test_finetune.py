"""finetune: HAQ's short-term retraining, supervised by labels or by float targets."""
import copy
import dataclasses

import pytest
import torch

from lcpaq.ir import capture
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.qops import quantizers_disabled
from lcpaq.passes import Pipeline
from lcpaq.passes.base import structure
from lcpaq.passes.finetune import supervised_loss
from tests.conftest import make_ctx


def _quantized(block, sim):
    x = torch.randn(4, 3, 8, 8)
    ctx = make_ctx(sim, x[:1], n_batches=4, batch=16)
    gm = capture(block, (x[:1],))
    gm = Pipeline.from_spec("fold-bn,shape-prop,cost,quant-scheme,calibrate,uniform{w=2,a=8},fake-quant")(gm, ctx).graph_module
    return gm, ctx


def test_float_targets_are_regressed_and_the_model_left_alone(block, sim) -> None:
    params = {k: v.detach().clone() for k, v in block.state_dict().items()}
    gm, ctx = _quantized(block, sim)
    with torch.no_grad(), quantizers_disabled(gm):
        targets = tuple([gm(*b)] for b in ctx.batches())
    train = dataclasses.replace(ctx, calib_labels=targets)
    loss = lambda g: sum(float(supervised_loss([g(*b)], t).detach()) for b, t in zip(ctx.batches(), targets))  # noqa: E731
    before = loss(gm)
    student = copy.deepcopy(gm)
    result = Pipeline.from_spec("finetune{epochs=40,lr=0.003}")(student, train)
    assert result.modified and structure(student) == structure(gm)
    with torch.no_grad():
        assert loss(student) < 0.5 * before
    assert all(torch.equal(v, params[k]) for k, v in block.state_dict().items())


def test_class_labels_take_cross_entropy() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert float(supervised_loss([logits], labels)) == pytest.approx(float(expected))
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # float: variance-normalised MSE
    assert float(supervised_loss([logits], target)) == pytest.approx(float(((logits - target) ** 2).mean() / target.var()))


def test_one_epoch_is_one_step_per_batch(block, sim, monkeypatch) -> None:
    gm, ctx = _quantized(block, sim)
    with torch.no_grad():
        labels = tuple(torch.zeros_like(gm(*b)) for b in ctx.batches())
    steps = []
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1))
    Pipeline.from_spec("finetune{epochs=2}")(gm, dataclasses.replace(ctx, calib_labels=labels))
    assert len(steps) == 2 * len(ctx.batches())


def test_missing_labels_name_the_pass(block, sim) -> None:
    gm, ctx = _quantized(block, sim)
    with pytest.raises(ConfigError, match="pass 'finetune': needs labels or targets for each of the 4 training batches"):
        Pipeline.from_spec("finetune")(gm, ctx)
