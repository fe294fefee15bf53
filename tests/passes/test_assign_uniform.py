"""uniform: one precision everywhere, and the layers a recipe keeps float."""
import pytest
import torch

from lcpaq.ir import capture, find_layers
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import BitAssignment
from lcpaq.passes import Pipeline
from lcpaq.passes.assign_uniform import UniformBits
from lcpaq.passes.cost_model import assignment_of
from tests.conftest import make_ctx

PREPARE = "fold-bn,shape-prop,cost,quant-scheme,calibrate{method=minmax}"


def _prepared(block, target):
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = make_ctx(target, x)
    return Pipeline.from_spec(PREPARE)(capture(block, (x,)), ctx).graph_module, ctx


def test_keep_float_leaves_named_layers_float(block, x86) -> None:
    gm, ctx = _prepared(block, x86)
    names = [layer.name for layer in find_layers(gm)]
    keep = (names[0], names[-1])
    out = UniformBits(w=8, a=8, keep_float=keep)(gm, ctx).graph_module
    got = assignment_of(out)
    assert {n: got[n] for n in keep} == {n: BitAssignment(32, 32) for n in keep}
    assert all(got[n] == BitAssignment(8, 8) for n in names if n not in keep)


def test_keep_float_refuses_unknown_layers(block, x86) -> None:
    gm, ctx = _prepared(block, x86)
    with pytest.raises(ConfigError, match="pass 'uniform': keep_float or layers names no layer of this model: nope"):
        UniformBits(keep_float=("nope",))(gm, ctx)


def test_layers_of_their_own_precision(block, x86) -> None:
    gm, ctx = _prepared(block, x86)
    names = [layer.name for layer in find_layers(gm)]
    out = UniformBits(w=8, a=8, layers=((names[0], 16, 16), (names[1], 4, 16)))(gm, ctx).graph_module
    got = assignment_of(out)
    assert (got[names[0]], got[names[1]]) == (BitAssignment(16, 16), BitAssignment(4, 16))
    assert all(got[n] == BitAssignment(8, 8) for n in names[2:])
    with pytest.raises(ConfigError, match="no 6-bit activations"):
        UniformBits(layers=((names[0], 8, 6),))(gm, ctx)
