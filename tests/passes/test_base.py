import time
from dataclasses import dataclass

import pytest
import torch
import torch.fx as fx

from lcpaq.ir import PassContractError, capture
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.meta import COST, SHAPE
from lcpaq.passes import Pass, PassError, PassResult, Pipeline, parse_spec
from lcpaq.passes.assign_uniform import UniformBits
from lcpaq.passes.calibrate import Calibrate
from lcpaq.passes.cost import Cost
from lcpaq.passes.fold_bn import FoldBatchNorm
from lcpaq.passes.shape_prop import ShapeProp
from lcpaq.passes.instruments import DumpGraphs, Timing
from lcpaq.passes.quant_scheme import SetQuantScheme
from tests.conftest import make_ctx


@pytest.fixture
def gm_ctx(block, x86):
    x = torch.randn(1, 3, 8, 8)
    return capture(block, (x,)), make_ctx(x86, x)


def test_missing_input_names_pass_and_key(gm_ctx) -> None:
    gm, ctx = gm_ctx
    with pytest.raises(PassContractError) as info:
        Cost()(gm, ctx)
    assert str(info.value) == (  # the block's layers, in graph order: c1, c2, fc, fc2
        "pass 'cost' needs 'lcpaq.shape' (output shape and dtype), missing on layer(s) c1, c2, fc and 1 more; "
        "run a pass that writes it first (shape-prop)"
    )


def test_fake_quant_needs_qspec(gm_ctx) -> None:
    gm, ctx = gm_ctx
    with pytest.raises(PassContractError) as info:
        Pipeline.from_spec("shape-prop,calibrate,fake-quant")(gm, ctx)
    assert str(info.value) == (
        "pass 'fake-quant' needs 'lcpaq.qspec' (the layer's quantization spec: weight and activation QuantSpec, "
        "None = float), missing on layer(s) c1, c2, fc and 1 more; run a pass that writes it first (ilp, uniform)"
    )


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


@dataclass(frozen=True)
class _Sleepy(Pass):
    """An analysis pass that takes a known time."""

    name = "sleepy"
    seconds: float = 0.05

    def call(self, gm: fx.GraphModule, ctx) -> PassResult:
        time.sleep(self.seconds)
        return PassResult(gm, False)


def test_analysis_pass_may_not_change_graph(gm_ctx) -> None:
    with pytest.raises(PassContractError, match="^pass 'sneaky' is an analysis pass but changed the graph$"):
        _Sneaky()(*gm_ctx)


def test_postcondition_checked(gm_ctx) -> None:
    with pytest.raises(PassContractError) as info:
        _Forgetful()(*gm_ctx)
    assert str(info.value) == "pass 'forgetful' promised 'lcpaq.cost' but left it missing on layer(s) c1, c2, fc and 1 more"


def test_unexpected_failure_names_pass(gm_ctx) -> None:
    with pytest.raises(PassError, match="^pass 'crashing' failed: RuntimeError: boom$") as info:
        _Crashing()(*gm_ctx)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_config_error_inside_a_pass_is_prefixed_with_its_name(gm_ctx) -> None:
    @dataclass(frozen=True)
    class _Refusing(Pass):
        name = "refusing"

        def call(self, gm: fx.GraphModule, ctx) -> PassResult:
            raise ConfigError("no 3-bit anything")

    with pytest.raises(ConfigError, match="^pass 'refusing': no 3-bit anything$"):
        _Refusing()(*gm_ctx)


def test_shape_prop_records_every_tensor(gm_ctx) -> None:
    gm, ctx = gm_ctx
    Pipeline.from_spec("shape-prop")(gm, ctx)
    shapes = {n.name: (SHAPE.get(n).shape, SHAPE.get(n).dtype) for n in gm.graph.nodes if SHAPE.has(n)}
    f32 = "float32"
    act = ((1, 8, 8, 8), f32)
    assert shapes == {  # from the block's definition: 3->8 channels at 8x8, pooled, 8->4 twice
        "c1_weight": ((8, 3, 3, 3), f32), "bn_weight": ((8,), f32), "bn_bias": ((8,), f32),
        "c2_weight": ((8, 3, 1, 1), f32), "c2_bias": ((8,), f32), "fc_weight": ((4, 8), f32), "fc_bias": ((4,), f32),
        "fc2_weight": ((4, 8), f32), "fc2_bias": ((4,), f32), "bn_running_mean": ((8,), f32),
        "bn_running_var": ((8,), f32), "bn_num_batches_tracked": ((), "int64"),
        "x": ((1, 3, 8, 8), f32), "conv2d": act, "batch_norm": act, "relu": act, "conv2d_1": act, "add": act,
        "mean": ((1, 8), f32), "linear": ((1, 4), f32), "linear_1": ((1, 4), f32), "add_1": ((1, 4), f32),
    }
    assert not SHAPE.has(next(n for n in gm.graph.nodes if n.op == "output"))


def test_spec_parses_options_and_round_trips() -> None:
    spec = (
        "fold-bn,shape-prop,cost,quant-scheme{weight_granularity=per-tensor},"
        "calibrate{method=mse,bits=4:8,percentile=99.9},uniform{w=4,a=8},fake-quant"
    )
    passes = parse_spec(spec)
    assert [p.name for p in passes] == ["fold-bn", "shape-prop", "cost", "quant-scheme", "calibrate", "uniform", "fake-quant"]
    assert passes[3] == SetQuantScheme(weight_granularity="per-tensor", act_symmetric=False)
    assert passes[4] == Calibrate(method="mse", bits=(4, 8), percentile=99.9)
    assert passes[5] == UniformBits(w=4, a=8)
    canonical = (
        "fold-bn,shape-prop,cost,quant-scheme{weight_granularity=per-tensor},"
        "calibrate{method=mse,percentile=99.9,bits=4:8},uniform{w=4},fake-quant"
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
    ("quant-scheme{weight_granularity=per-row}", "bad value 'per-row' for option 'weight_granularity': choose from per-channel, per-tensor"),
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
    sleepy = _Sleepy(seconds=0.05)
    start = time.perf_counter()
    result = Pipeline([FoldBatchNorm(), ShapeProp(), sleepy, Cost()], [timing, DumpGraphs(tmp_path / "a")])(gm, ctx)
    elapsed = time.perf_counter() - start
    assert [name for name, _ in timing.times] == ["fold-bn", "shape-prop", "sleepy", "cost"]
    times = dict(timing.times)
    assert times["sleepy"] >= sleepy.seconds  # seconds, of this pass alone
    assert sum(times.values()) <= elapsed
    assert result.modified  # fold-bn rewrote the graph
    # Dumped: the first pass always, later ones only when they changed the graph (none did).
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["01-fold-bn.py"]
    code = (tmp_path / "a" / "01-fold-bn.py").read_text()
    assert code == result.graph_module.code and "batch_norm" not in code


def test_dump_graphs_writes_the_first_pass_and_each_that_changed_the_graph(gm_ctx, tmp_path) -> None:
    gm, ctx = gm_ctx
    before = gm.code
    Pipeline.from_spec("shape-prop,fold-bn", [DumpGraphs(tmp_path)])(gm, ctx)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01-shape-prop.py", "02-fold-bn.py"]
    assert (tmp_path / "01-shape-prop.py").read_text() == before  # unchanged by shape-prop
    assert "batch_norm" in before and "batch_norm" not in (tmp_path / "02-fold-bn.py").read_text()
