import copy
import dataclasses
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

from lcpaq.ir import capture, find_layers
from lcpaq.ir.meta import SENSITIVITY, BitAssignment
from lcpaq.passes import PassContext, PassError, Pipeline, parse_spec
from lcpaq.passes import hessian as hessian_module
from lcpaq.passes.hessian import HessianSensitivity
from lcpaq.passes.sensitivity_model import SharedTraces
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
    Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate,hessian{probes=4000,min_probes=400,tol=0.005}")(gm, ctx)
    sens = SENSITIVITY.get(find_layers(gm)[0].node)
    assert sens.weight_trace == pytest.approx(3 * float((x**2).sum()) / len(x), rel=0.03)
    assert sens.act_trace == pytest.approx(float((model.weight.detach() ** 2).sum()), rel=0.03)


def _symmetric_per_row_error(w: torch.Tensor, bits: int) -> float:
    """||Q(W) - W||^2 of symmetric per-output-channel quantization, written out by hand."""
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(1, keepdim=True) / qmax
    return float(((torch.clamp(torch.round(w / scale), -qmax, qmax) * scale - w) ** 2).sum())


def test_sensitivity_is_trace_times_error_at_every_target_width(x86, sim) -> None:
    model, x, ctx = _linear_ctx(x86)
    gm = capture(model, (x[:1],))
    Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate,hessian{probes=16}")(gm, ctx)
    sens = SENSITIVITY.get(find_layers(gm)[0].node)
    weights = dict(sens.weight)
    assert list(weights) == [2, 3, 4, 5, 6, 7, 8, 16]  # every weight width x86-host offers
    assert [b for b, _ in sens.act] == [8, 16]
    w = model.weight.detach()
    for bits, value in weights.items():
        assert value == pytest.approx(sens.weight_trace / w.numel() * _symmetric_per_row_error(w, bits), rel=1e-6)
    assert sens.of(BitAssignment(32, 32)) == 0.0
    ctx16 = PassContext(sim, ctx.example_inputs, ctx.calib_batches)
    gm16 = capture(model, (x[:1],))
    Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate,hessian{probes=16}")(gm16, ctx16)
    sens16 = SENSITIVITY.get(find_layers(gm16)[0].node)
    assert [b for b, _ in sens16.act] == list(sim.act_bits) and 16 in dict(sens16.weight)
    assert dict(sens16.weight)[16] == pytest.approx(sens16.weight_trace / w.numel() * _symmetric_per_row_error(w, 16), rel=1e-6)


def test_results_cached_on_disk(sim, tmp_path, monkeypatch) -> None:
    model, x, ctx = _linear_ctx(sim)
    ctx = PassContext(sim, ctx.example_inputs, ctx.calib_batches, cache_dir=tmp_path)
    spec = "shape-prop,cost,quant-scheme,calibrate,hessian{probes=8}"
    first = capture(model, (x[:1],))
    Pipeline.from_spec(spec)(first, ctx)
    [entry] = list((tmp_path / "hessian").iterdir())

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(hessian_module, "measure_traces", forbidden)
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


def test_cache_key_changes_with_weights_and_scheme(sim, tmp_path) -> None:
    model, x, ctx = _linear_ctx(sim)
    ctx = PassContext(sim, ctx.example_inputs, ctx.calib_batches, cache_dir=tmp_path)
    Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate,hessian{probes=4}")(capture(model, (x[:1],)), ctx)
    with torch.no_grad():
        model.weight.mul_(2)
    Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate,hessian{probes=4}")(capture(model, (x[:1],)), ctx)
    assert len(list((tmp_path / "hessian").iterdir())) == 2
    per_tensor = "shape-prop,cost,quant-scheme{weight_granularity=per-tensor},calibrate,hessian{probes=4}"
    Pipeline.from_spec(per_tensor)(capture(model, (x[:1],)), ctx)
    assert len(list((tmp_path / "hessian").iterdir())) == 3


@pytest.mark.parametrize(("options", "probes_run"), [
    ("probes=12,min_probes=12", range(12, 13)),
    ("probes=40,min_probes=3,tol=0.3", range(3, 40)),  # stops early, at the tolerance
    ("probes=6,min_probes=9", range(6, 7)),
])
def test_shared_traces_give_what_probing_gives(sim, options: str, probes_run: range) -> None:
    """A hessian pass served from traces measured once (at more probes) annotates exactly what
    a pass that probes afresh does, early stop at ``tol`` included."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    x = torch.randn(24, 5)
    ctx = PassContext(sim, (x[:1],), ((x[:12],), (x[12:],)), seed=3)
    base = Pipeline.from_spec("shape-prop,cost,quant-scheme{act_symmetric=true},calibrate")(capture(model, (x[:1],)), ctx).graph_module
    shared = SharedTraces.measure(base, ctx, probes=40)
    fresh = Pipeline.from_spec(f"hessian{{{options}}}")(copy.deepcopy(base), ctx).graph_module
    [hessian] = parse_spec(f"hessian{{{options}}}")
    served_pass = dataclasses.replace(hessian, shared=shared)
    assert served_pass.spec() == hessian.spec() and served_pass == hessian  # the shared traces are no option
    served = Pipeline([served_pass])(copy.deepcopy(base), ctx).graph_module
    for a, b in zip(find_layers(fresh), find_layers(served)):
        assert SENSITIVITY.get(a.node) == SENSITIVITY.get(b.node)
        assert SENSITIVITY.get(a.node).probes in probes_run
    with pytest.raises(PassError, match="cannot serve 41 probes"):
        Pipeline([HessianSensitivity(probes=41, shared=shared)])(copy.deepcopy(base), ctx)
