from dataclasses import dataclass

import pytest
import torch
import torch.fx as fx

from lcpaq.ir import PassContractError, capture
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import COST, SHAPE
from lcpaq.passes import Pass, PassError, PassResult, Pipeline, parse_spec
from lcpaq.passes.calibrate import Calibrate
from lcpaq.passes.cost import Cost
from lcpaq.passes.instruments import DumpGraphs, Timing
from tests.conftest import make_ctx


@pytest.fixture
def gm_ctx(block, x86):
    x = torch.randn(1, 3, 8, 8)
    return capture(block, (x,)), make_ctx(x86, x)


def test_missing_input_names_pass_and_key(gm_ctx) -> None:
    gm, ctx = gm_ctx
    with pytest.raises(PassContractError) as info:
        Cost()(gm, ctx)
    msg = str(info.value)
    assert "pass 'cost'" in msg and "'lcpaq.shape'" in msg and "shape-prop" in msg


def test_fake_quant_needs_bits(gm_ctx) -> None:
    gm, ctx = gm_ctx
    with pytest.raises(PassContractError, match="pass 'fake-quant' needs 'lcpaq.bits'"):
        Pipeline.from_spec("shape-prop,calibrate,fake-quant")(gm, ctx)


@dataclass(frozen=True)
class _Sneaky(Pass):
    """An analysis pass that breaks its promise not to touch the graph."""

    name = "sneaky"

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            gm.graph.call_function(torch.relu, (out.args[0][0],))
        return PassResult(gm, False)


@dataclass(frozen=True)
class _Forgetful(Pass):
    """Declares that it writes lcpaq.cost but does not."""

    name = "forgetful"
    writes = (COST,)

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        return PassResult(gm, False)


@dataclass(frozen=True)
class _Crashing(Pass):
    name = "crashing"

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        raise RuntimeError("boom")


def test_analysis_pass_may_not_change_graph(gm_ctx) -> None:
    with pytest.raises(PassContractError, match="pass 'sneaky' is an analysis pass but changed the graph"):
        _Sneaky()(*gm_ctx)


def test_postcondition_checked(gm_ctx) -> None:
    with pytest.raises(PassContractError, match="pass 'forgetful' promised 'lcpaq.cost'.*c1"):
        _Forgetful()(*gm_ctx)


def test_unexpected_failure_names_pass(gm_ctx) -> None:
    with pytest.raises(PassError, match="pass 'crashing' failed: RuntimeError: boom"):
        _Crashing()(*gm_ctx)


def test_shape_prop_records_every_tensor(gm_ctx) -> None:
    gm, ctx = gm_ctx
    Pipeline.from_spec("shape-prop")(gm, ctx)
    shapes = {n.name: SHAPE.get(n).shape for n in gm.graph.nodes if SHAPE.has(n)}
    assert shapes["conv2d"] == (1, 8, 8, 8)
    assert shapes["linear"] == (1, 4)


def test_spec_parses_options_and_round_trips() -> None:
    spec = "fold-bn,shape-prop,cost,calibrate{method=mse,bits=4:8,percentile=99.9},uniform{w=4,a=8},fake-quant{weight_granularity=per-tensor}"
    passes = parse_spec(spec)
    assert [p.name for p in passes] == ["fold-bn", "shape-prop", "cost", "calibrate", "uniform", "fake-quant"]
    assert passes[3] == Calibrate(method="mse", bits=(4, 8), percentile=99.9)
    canonical = (
        "fold-bn,shape-prop,cost,calibrate{method=mse,percentile=99.9,bits=4:8},uniform{w=4},"
        "fake-quant{weight_granularity=per-tensor}"
    )
    assert Pipeline(passes).spec() == canonical  # field order, defaults left out
    assert Pipeline(parse_spec(canonical)).spec() == canonical


@pytest.mark.parametrize(("spec", "message"), [
    ("fold-bn,cosst", "unknown pass 'cosst' in pipeline spec; valid passes: .*cost"),
    ("calibrate{methd=mse}", "pass 'calibrate' has no option 'methd'; its options: method, percentile"),
    ("calibrate{method=median}", "bad value 'median' for option 'method': choose from minmax, percentile, mse, entropy"),
    ("uniform{w=9}", "pass 'uniform': unsupported weight bit-width 9"),
    ("calibrate{percentile=40}", "percentile must be in"),
    ("cost{per_sample=maybe}", "expected true or false"),
    ("calibrate{method=mse", "unbalanced"),
    ("", "empty pipeline spec"),
])
def test_bad_spec_is_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_spec(spec)
    assert "\n" not in str(info.value)


def test_instruments(gm_ctx, tmp_path) -> None:
    gm, ctx = gm_ctx
    timing = Timing()
    Pipeline.from_spec("fold-bn,shape-prop,cost", [timing, DumpGraphs(tmp_path)])(gm, ctx)
    assert [name for name, _ in timing.times] == ["fold-bn", "shape-prop", "cost"]
    assert all(t >= 0 for _, t in timing.times)
    dumped = sorted(p.name for p in tmp_path.iterdir())
    assert dumped == ["01-fold-bn.py"]
    assert "batch_norm" not in (tmp_path / "01-fold-bn.py").read_text()
