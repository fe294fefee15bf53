import copy

import torch

from lcpaq.ir import capture, find_layers
from lcpaq.ir.meta import QUANTIZED
from lcpaq.ir.qops import quantizers_disabled
from lcpaq.passes import Pipeline
from lcpaq.passes.sensitivity_terms import collect_activations
from tests.conftest import make_ctx


def _quantized(block, target, w: int = 3):
    x = torch.randn(4, 3, 8, 8)
    ctx = make_ctx(target, x[:1])
    gm = capture(block, (x[:1],))
    gm = Pipeline.from_spec(f"fold-bn,shape-prop,cost,quant-scheme,calibrate,uniform{{w={w},a=16}},fake-quant")(gm, ctx).graph_module
    return gm, ctx


def test_mean_output_shift_removed(block, sim) -> None:
    gm, ctx = _quantized(block, sim)
    batches = ctx.batches()
    names = [layer.node.name for layer in find_layers(gm)]

    def mean_outputs(graph):
        values = collect_activations(graph, names, batches)
        return {n: torch.cat([v.transpose(0, 1).reshape(v.shape[1], -1) if v.dim() == 4 else v.T for v in vs], 1).mean(1)
                for n, vs in values.items()}

    with quantizers_disabled(gm):
        float_means = mean_outputs(gm)
    before = mean_outputs(gm)
    corrected = copy.deepcopy(gm)
    assert Pipeline.from_spec("bias-correct")(corrected, ctx).modified
    after = mean_outputs(corrected)
    first = names[0]  # its input is the model's input, so only its own correction acts on it
    assert (before[first] - float_means[first]).abs().max() > 1e-3
    assert torch.allclose(after[first], float_means[first], atol=1e-4)
    assert all(QUANTIZED.get(layer.node).bias_corrected for layer in find_layers(corrected))


def test_bias_correct_is_idempotent_and_adds_missing_bias(block, sim) -> None:
    gm, ctx = _quantized(block, sim)
    conv = find_layers(gm)[0].node
    assert conv.args[2] is not None  # fold-bn gave c1 a bias; c1 had none in the model
    Pipeline.from_spec("bias-correct")(gm, ctx)
    code, state = gm.code, {k: v.clone() for k, v in gm.state_dict().items()}
    assert not Pipeline.from_spec("bias-correct")(gm, ctx).modified
    assert gm.code == code and all(torch.equal(v, state[k]) for k, v in gm.state_dict().items())


def test_linear_layers_on_token_inputs_are_corrected_exactly(sim) -> None:
    """aten.linear takes the summed-input route: on (batch, tokens, features) inputs the first
    layer's mean output over every token equals the float one after correction."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(4, 5, 16)
    ctx = make_ctx(sim, x[:1])
    gm = capture(model, (x[:1],))
    gm = Pipeline.from_spec("shape-prop,cost,quant-scheme,calibrate,uniform{w=3,a=16},fake-quant")(gm, ctx).graph_module
    first = find_layers(gm)[0].node.name

    def mean_first(graph) -> torch.Tensor:
        return torch.cat([v.reshape(-1, v.shape[-1]) for v in collect_activations(graph, [first], ctx.batches())[first]]).mean(0)

    with quantizers_disabled(gm):
        float_mean = mean_first(gm)
    assert (mean_first(gm) - float_mean).abs().max() > 1e-3
    Pipeline.from_spec("bias-correct")(gm, ctx)
    assert torch.allclose(mean_first(gm), float_mean, atol=1e-5)
