import copy

import torch

from lcpaq.ir import capture, find_layers
from lcpaq.ir.capture import get_attr
from lcpaq.ir.qops import quantizers_disabled
from lcpaq.passes import Pipeline
from lcpaq.passes.base import structure
from tests.conftest import make_ctx


def test_distillation_recovers_quality_and_leaves_model_alone(block, sim) -> None:
    x = torch.randn(4, 3, 8, 8)
    ctx = make_ctx(sim, x[:1], n_batches=4, batch=16)
    params = {k: v.detach().clone() for k, v in block.state_dict().items()}
    gm = capture(block, (x[:1],))
    gm = Pipeline.from_spec("fold-bn,shape-prop,cost,quant-scheme,calibrate,uniform{w=2,a=8},fake-quant")(gm, ctx).graph_module
    data = torch.cat([b[0] for b in ctx.batches()])

    with torch.no_grad(), quantizers_disabled(gm):
        reference = gm(data)  # the fp32 model (fold-bn aside), through the quantized graph

    def error(graph) -> float:
        with torch.no_grad():
            return float(((graph(data) - reference) ** 2).mean())

    before = error(gm)
    student = copy.deepcopy(gm)
    result = Pipeline.from_spec("distill{steps=150,lr=0.003}")(student, ctx)
    assert result.modified and structure(student) == structure(gm)
    assert error(student) < 0.5 * before
    assert all(torch.equal(v, params[k]) for k, v in block.state_dict().items())
    trained = [get_attr(student, str(layer.weight.target)) for layer in find_layers(student)]
    assert not any(w.requires_grad for w in trained)  # handed back frozen


def test_held_out_loss_never_rises(block, sim) -> None:
    """From an almost lossless student (W16A16), a high learning rate would only add error:
    the best weights on the held-out batch, the starting ones, are kept."""
    x = torch.randn(4, 3, 8, 8)
    ctx = make_ctx(sim, x[:1], n_batches=3, batch=8)
    gm = capture(block, (x[:1],))
    gm = Pipeline.from_spec("fold-bn,shape-prop,cost,quant-scheme,calibrate,uniform{w=16,a=16},fake-quant")(gm, ctx).graph_module
    held = ctx.batches()[-1][0]
    with torch.no_grad(), quantizers_disabled(gm):
        teacher = gm(held)

    def held_error(graph) -> float:
        with torch.no_grad():
            return float(((graph(held) - teacher) ** 2).mean())

    student = Pipeline.from_spec("distill{steps=30,lr=1.0}")(copy.deepcopy(gm), ctx).graph_module
    assert held_error(student) <= held_error(gm)
