import collections

import pytest
import torch

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.backend import Conventions
from lcpaq.backends.common.code_domains import FINE_BITS
from lcpaq.backends.common.integerize import integerize
from lcpaq.ir.meta import DOMAIN
from lcpaq.ir.metrics import first_output
from tests.backends._nets import TinyResNet, quantized, sqnr


def _ops(ig):
    return collections.Counter(n.target.__name__ for n in ig.graph.nodes if n.op == "call_function" and callable(n.target)
                               and n.target.__module__ == iops.__name__)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    gm = quantized(model, x)
    return model, gm, integerize(gm), x


def test_golden_structure(tiny) -> None:
    _, gm, ig, _ = tiny
    # the ReLU/ReLU6 are fused; the pool's sum is taken on finer int32 codes, then requantized
    assert _ops(ig) == {"quantize": 1, "qconv2d": 5, "max_pool2d": 1, "qadd": 1, "global_avg_pool": 1, "requantize": 1,
                        "qlinear": 1, "dequantize_channels": 1}
    order = [n.target.__name__ for n in ig.graph.nodes if n.op == "call_function" and n.target.__module__ == iops.__name__]
    assert order[:3] == ["quantize", "qconv2d", "max_pool2d"]
    assert order[-4:] == ["global_avg_pool", "requantize", "qlinear", "dequantize_channels"]


def test_relu_and_relu6_fuse_into_requantization(tiny) -> None:
    _, _, ig, _ = tiny
    convs = [n for n in ig.graph.nodes if n.target is iops.qconv2d]
    stem = convs[0]
    assert stem.kwargs["qmin"] == stem.kwargs["out_zp"]  # ReLU: codes below the zero point are cut
    c3 = convs[-1]  # ReLU6 on int32 codes 2^8 finer than the pooled domain
    dom = DOMAIN.get(c3)
    assert dom.dtype == "int32" and (c3.kwargs["qmin"], c3.kwargs["qmax"]) == (0, dom.code(6.0))


def test_residual_inputs_use_int32_fine_codes(tiny) -> None:
    _, _, ig, _ = tiny
    add = next(n for n in ig.graph.nodes if n.target is iops.qadd)
    producers = add.args[:2]
    assert {p.kwargs.get("out_dtype") for p in producers} == {"int32"}
    out = DOMAIN.get(add)
    assert out.dtype == "uint8" and add.kwargs["qmin"] == out.zero_point  # the block's ReLU, fused
    assert DOMAIN.get(producers[0]).scale == pytest.approx(out.scale / 2**FINE_BITS)


def test_integer_graph_matches_fake_quant_and_fp32(tiny) -> None:
    model, gm, ig, x = tiny
    with torch.no_grad():
        y_int, y_fq, y_fp = first_output(ig(x)), first_output(gm(x)), model(x)
    assert sqnr(y_fq, y_int) > 30.0
    assert sqnr(y_fp, y_int) > 25.0


def test_integer_graph_is_integer_between_layers(tiny) -> None:
    _, _, ig, _ = tiny
    floats = [n for n in ig.graph.nodes if n.op == "call_function" and n.target.__module__ != iops.__name__
              and "flatten" not in str(n.target)]
    assert floats == []


def test_sixteen_bit_activations_run_in_float(tiny) -> None:
    model, _, _, x = tiny
    gm = quantized(model, x, "uniform{w=8,a=16},fake-quant", target="sim")
    ig = integerize(gm)
    assert "qconv2d" not in _ops(ig)
    with torch.no_grad():
        assert sqnr(model(x), first_output(ig(x))) > 30.0


def test_int8_activation_codes_mean_the_same_values(tiny) -> None:
    """A backend whose kernels read int8 codes (ARM sdot) gets the same integer graph, codes offset
    by -128 with their zero points: every value, and so the output, is the same to the bit."""
    _, gm, ig_u8, x = tiny
    ig_s8 = integerize(gm, Conventions(act_dtype="int8"))
    assert _ops(ig_s8) == _ops(ig_u8)
    q_u8, q_s8 = (next(n for n in g.graph.nodes if n.target is iops.quantize) for g in (ig_u8, ig_s8))
    d_u8, d_s8 = DOMAIN.get(q_u8), DOMAIN.get(q_s8)
    assert (d_s8.dtype, d_s8.zero_point, d_s8.qmin, d_s8.qmax) == ("int8", d_u8.zero_point - 128, -128, 127)
    with torch.no_grad():
        assert torch.equal(first_output(ig_s8(x)), first_output(ig_u8(x)))


def test_integer_width_comes_from_the_conventions(tiny) -> None:
    """A backend whose widest integer kernel is narrower than a quantizer runs that layer in float."""
    _, gm, _, _ = tiny
    ig = integerize(gm, Conventions(integer_bits=4))
    assert "qconv2d" not in _ops(ig) and "qlinear" not in _ops(ig)


def test_original_graph_is_unchanged(tiny) -> None:
    _, gm, _, x = tiny
    before = [n.format_node() for n in gm.graph.nodes]
    integerize(gm)
    assert [n.format_node() for n in gm.graph.nodes] == before


class _ConstMatmul(torch.nn.Module):
    """``x @ W`` with a constant [K, N] weight, then a mean over the last two dims of a 3-d value."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(16, 12) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.w
        return y + y.mean((-2, -1), keepdim=True)


def test_matmul_with_a_constant_weight_is_a_qlinear() -> None:
    x = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(9))
    model = _ConstMatmul().eval()
    gm = quantized(model, x)
    ig = integerize(gm)
    assert _ops(ig)["qlinear"] == 1 and "global_avg_pool" not in _ops(ig)  # a 3-d mean over (-2, -1) is no 2-d pool
    (lin,) = [n for n in ig.graph.nodes if n.target is iops.qlinear]
    assert tuple(getattr(ig, lin.args[1].target).shape) == (12, 16)  # the weight transposed to [N, K]
    with torch.no_grad():
        fq, got, fp32 = first_output(gm(x)), first_output(ig(x)), model(x)
    assert sqnr(fq, got) > 35.0 and sqnr(fp32, got) > 25.0


def test_conv_without_integer_form_runs_in_float_with_its_reason() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=2, dilation=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1)).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    gm = quantized(model, x)
    ig = integerize(gm)
    (conv,) = [n for n in ig.graph.nodes if n.target is torch.ops.aten.conv2d.default]
    assert conv.meta[iops.FLOAT_REASON] == "dilated conv (dilation=2)"
    assert _ops(ig)["qconv2d"] == 1
    with torch.no_grad():  # float on the fake-quantized weight and dequantized input: the fake-quant graph's numbers
        assert sqnr(first_output(gm(x)), first_output(ig(x))) > 35.0


WIDE = Conventions(wide_bits=16)


def test_sixteen_bit_layers_are_wide_integer_layers(tiny) -> None:
    """With wide kernels, W16A16 layers are integer: int16 activation codes, int16 weights, int64
    sums requantized by multipliers small enough that the largest sum times them stays below 2^62."""
    from lcpaq.backends.common.integer_ref import acc_bound

    model, _, _, x = tiny
    gm = quantized(model, x, "uniform{w=16,a=16},fake-quant", target="sim")
    ig = integerize(gm, WIDE)
    assert _ops(ig) == {"quantize": 1, "qconv2d": 5, "max_pool2d": 1, "qadd": 1, "global_avg_pool": 1, "requantize": 1,
                        "qlinear": 1, "dequantize": 1}
    assert DOMAIN.get(next(n for n in ig.graph.nodes if n.target is iops.quantize)).dtype == "int16"
    for node in (n for n in ig.graph.nodes if n.target in (iops.qconv2d, iops.qlinear)):
        w, bias, mult = (getattr(ig, a.target) if a is not None else None for a in node.args[1:4])
        src = node.args[0]
        d = DOMAIN.get(src) if "lcpaq.domain" in src.meta else None
        span = 2**16 if d is None else max(d.zero_point - d.qmin, d.qmax - d.zero_point)
        assert w.dtype == torch.int16 and (bias is None or bias.dtype == torch.int64)
        assert bool(((acc_bound(w, span, bias).double() * mult.double()) < 2.0**62).all())
    with torch.no_grad():
        y_int, y_fq = first_output(ig(x)), first_output(gm(x))
    assert sqnr(y_fq, y_int) > 60.0  # 16-bit codes: far finer than 8-bit's 30 dB


def test_wide_kernels_cover_only_convs_with_one_group() -> None:
    from tests.backends._nets import TinyMobile

    torch.manual_seed(0)
    model = TinyMobile().eval()
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    ig = integerize(quantized(model, x, "uniform{w=16,a=16},fake-quant", target="sim"), WIDE)
    reasons = {n.meta["lcpaq.source"]: n.meta[iops.FLOAT_REASON] for n in ig.graph.nodes if iops.FLOAT_REASON in n.meta}
    assert reasons["conv2d_2"] == "16-bit quantizer: the backend's 16-bit kernels cover linears and convs with groups = 1"
    assert _ops(ig)["qconv2d"] == 3  # stem, expand, project; both depthwise convs in float
    with torch.no_grad():
        assert sqnr(model(x), first_output(ig(x))) > 50.0
