"""fisher: label-free Fisher diagonals in closed form on linear models, and the sensitivity the
ILP reads."""
import pytest
import torch
from torch import nn

from lcpaq.ir import capture, find_layers
from lcpaq.ir.meta import ASSIGNMENT, SENSITIVITY
from lcpaq.passes import PassContext, Pipeline
from lcpaq.passes.fisher import FisherDiagonals


def _linear(n: int = 32, out: int = 3):
    torch.manual_seed(0)
    model = nn.Linear(5, out).eval()
    x = torch.randn(n, 5)
    return model, x, capture(model, (x[:1],))


def test_gaussian_fisher_of_a_linear_layer_is_closed_form() -> None:
    """Unit noise on y = Wx + b: per sample, F_W[i, j] = x_j^2 and, for the input, F_x[j] =
    sum_i W_ij^2; stored as per-sample means, their traces are 3 ||X||^2 / N and ||W||_F^2
    (what the Hessian of the distillation loss has: the Gauss-Newton matrix)."""
    model, x, gm = _linear()
    f = FisherDiagonals.measure(gm, ((x,),), classify=False, samples=4000, seed=0)
    (w_diag,) = [d for name, d in f.weights.items() if name.endswith("weight")]
    expected = (x**2).mean(0).expand(3, 5)
    assert float(w_diag.sum()) == pytest.approx(float(expected.sum()), rel=0.03)
    assert torch.allclose(w_diag, expected, rtol=0.12)
    (a_diag,) = [d[0] for d in f.acts.values()]
    assert float(a_diag.sum()) == pytest.approx(float((model.weight.detach() ** 2).sum()), rel=0.03)


def test_sampled_class_fisher_of_a_linear_classifier_is_closed_form() -> None:
    """Labels drawn from softmax(Wx): E[(p_i - [y = i])^2] x_j^2 = p_i (1 - p_i) x_j^2."""
    model, x, gm = _linear(n=16, out=4)
    with torch.no_grad():
        p = torch.softmax(model(x), -1)
    f = FisherDiagonals.measure(gm, ((x,),), classify=True, samples=4000, seed=0)
    (w_diag,) = [d for name, d in f.weights.items() if name.endswith("weight")]
    expected = (p * (1 - p)).T @ x**2 / len(x)
    assert float(w_diag.sum()) == pytest.approx(float(expected.sum()), rel=0.03)
    assert torch.allclose(w_diag, expected, rtol=0.15)


def test_one_seed_one_measurement() -> None:
    _, x, gm = _linear()
    a = FisherDiagonals.measure(gm, ((x,),), classify=False, samples=3, seed=7)
    b = FisherDiagonals.measure(gm, ((x,),), classify=False, samples=3, seed=7)
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights) and a.rel_err == b.rel_err > 0


def test_the_pass_weights_each_error_element_by_element_and_feeds_the_ilp(x86) -> None:
    model, x, gm = _linear()
    ctx = PassContext(x86, (x[:1],), ((x,),))
    Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate,fisher{samples=4,batches=1},ilp{size=0.3x}")(gm, ctx)
    layer = find_layers(gm)[0]
    sens = SENSITIVITY.get(layer.node)
    w = model.weight.detach()
    f = FisherDiagonals.measure(gm, ((x,),), classify=False, samples=4, seed=0)
    (w_diag,) = [d for name, d in f.weights.items() if name.endswith("weight")]
    qmax = 2 ** (4 - 1) - 1
    scale = w.abs().amax(1, keepdim=True) / qmax  # symmetric per output channel
    error = (torch.clamp(torch.round(w / scale), -qmax, qmax) * scale - w) ** 2
    assert dict(sens.weight)[4] == pytest.approx(float((w_diag * error).sum()), rel=1e-5)
    assert [b for b, _ in sens.act] == [8, 16] and ASSIGNMENT.get(gm).sensitivity > 0
