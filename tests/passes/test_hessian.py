import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from lcpaq.ir import capture, find_layers
from lcpaq.ir.meta import SENSITIVITY, BitAssignment
from lcpaq.passes import PassContext, Pipeline
from lcpaq.passes import hessian as hessian_module
from lcpaq.passes.hutchinson import hessian_traces


def test_hutchinson_within_5_percent_of_exact_trace() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    gm = capture(model, (x,))
    names = [str(layer.weight.target) for layer in find_layers(gm)]
    loss = lambda out, b: nn.functional.cross_entropy(out, y)  # noqa: E731
    est, _ = hessian_traces(gm, names, [], ((x,),), loss, max_probes=5000, min_probes=200, tol=0.02, seed=0)
    params = {n: p.detach() for n, p in model.named_parameters()}
    for name in names:
        f = lambda w: nn.functional.cross_entropy(functional_call(model, {**params, name: w}, (x,)), y)  # noqa: E731
        k = params[name].numel()
        exact = hessian(f)(params[name]).reshape(k, k).trace().item()
        assert est[name].mean == pytest.approx(exact, rel=0.05)
        assert abs(est[name].mean - exact) < 3 * est[name].rel_err * abs(exact)  # the error bar is honest


def _linear_ctx(target, n: int = 32):
    torch.manual_seed(0)
    model = nn.Linear(5, 3).eval()
    x = torch.randn(n, 5)
    return model, x, PassContext(target, (x[:1],), ((x,),))


def test_distillation_hessian_of_a_linear_layer_is_closed_form(sim) -> None:
    """L = 0.5/N sum ||W'x - Wx||^2 has H_W = I_3 (x) X^T X / N: trace = 3 ||X||^2 / N, and
    per-sample d2L/dx2 = W^T W / N: the trace over the batch is ||W||_F^2."""
    model, x, ctx = _linear_ctx(sim)
    gm = capture(model, (x[:1],))
    Pipeline.from_spec("shape-prop,cost,calibrate,hessian{probes=4000,min_probes=400,tol=0.005}")(gm, ctx)
    sens = SENSITIVITY.get(find_layers(gm)[0].node)
    assert sens.weight_trace == pytest.approx(3 * float((x**2).sum()) / len(x), rel=0.03)
    assert sens.act_trace == pytest.approx(float((model.weight.detach() ** 2).sum()), rel=0.03)


def test_sensitivity_falls_with_bits_and_float_is_free(x86) -> None:
    model, x, ctx = _linear_ctx(x86)
    gm = capture(model, (x[:1],))
    Pipeline.from_spec("shape-prop,cost,calibrate,hessian{probes=16}")(gm, ctx)
    sens = SENSITIVITY.get(find_layers(gm)[0].node)
    weights = dict(sens.weight)
    assert list(weights) == [2, 3, 4, 5, 6, 7, 8, 16]  # every weight width x86-host offers
    assert all(weights[a] > weights[b] for a, b in zip(list(weights), list(weights)[1:]))
    assert [b for b, _ in sens.act] == [8, 16]
    assert sens.of(BitAssignment(32, 32)) == 0.0
    assert sens.of(BitAssignment(4, 8)) == weights[4] + dict(sens.act)[8]


def test_results_cached_on_disk(sim, tmp_path, monkeypatch) -> None:
    model, x, ctx = _linear_ctx(sim)
    ctx = PassContext(sim, ctx.example_inputs, ctx.calib_batches, cache_dir=tmp_path)
    spec = "shape-prop,cost,calibrate,hessian{probes=8}"
    first = capture(model, (x[:1],))
    Pipeline.from_spec(spec)(first, ctx)
    [entry] = list((tmp_path / "hessian").iterdir())

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(hessian_module, "hessian_traces", forbidden)
    second = capture(model, (x[:1],))
    Pipeline.from_spec(spec)(second, ctx)
    node = lambda gm: find_layers(gm)[0].node  # noqa: E731
    assert SENSITIVITY.get(node(second)) == SENSITIVITY.get(node(first))

    monkeypatch.undo()
    entry.write_text("{ truncated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Pipeline.from_spec(spec)(capture(model, (x[:1],)), ctx)
    assert any(str(entry) in str(w.message) for w in caught)
    assert SENSITIVITY.get(node(second)) is not None


def test_cache_key_changes_with_weights(sim, tmp_path) -> None:
    model, x, ctx = _linear_ctx(sim)
    ctx = PassContext(sim, ctx.example_inputs, ctx.calib_batches, cache_dir=tmp_path)
    Pipeline.from_spec("shape-prop,cost,calibrate,hessian{probes=4}")(capture(model, (x[:1],)), ctx)
    with torch.no_grad():
        model.weight.mul_(2)
    Pipeline.from_spec("shape-prop,cost,calibrate,hessian{probes=4}")(capture(model, (x[:1],)), ctx)
    assert len(list((tmp_path / "hessian").iterdir())) == 2
