"""Integer transformer glue in the integer lowering: a BERT-style layer becomes integer from its
embeddings to its last layer norm (golden structure), with the glue off it keeps float glue,
and both integer graphs stay close to the fp32 model."""
import collections
import math

import pytest
import torch

from lcpaq.backends.common import integer_glue as g
from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.backend import Conventions
from lcpaq.backends.common.integer_ref import quantize_multiplier
from lcpaq.backends.common.integerize import integerize
from lcpaq.ir.meta import DOMAIN
from lcpaq.ir.metrics import first_output
from tests.backends._nets import TinyBert, quantized_bert, tiny_bert_inputs

GLUE_ON = Conventions(integer_glue=True)


def _ops(ig: torch.fx.GraphModule) -> collections.Counter:
    return collections.Counter(getattr(n.target, "__name__", str(n.target)) for n in ig.graph.nodes if n.op == "call_function")


@pytest.fixture(scope="module")
def bert() -> tuple[torch.nn.Module, torch.fx.GraphModule]:
    torch.manual_seed(0)
    model = TinyBert().eval()
    return model, quantized_bert(model)


def test_golden_structure_with_integer_glue(bert) -> None:
    _, gm = bert
    ops = _ops(integerize(gm, GLUE_ON))
    # the embedding, residual and mask adds are fused into the layer norms and the softmax
    assert {k: ops[k] for k in ("qlayer_norm", "qsoftmax", "qgelu", "qlinear", "qmatmul", "qadd")} == {
        "qlayer_norm": 3, "qsoftmax": 1, "qgelu": 1, "qlinear": 6, "qmatmul": 2, "qadd": 0}
    assert ops["transpose.int"] == 5 and ops["dequantize"] == 1  # heads split and merged on codes; one float exit
    for name in ("layer_norm.default", "softmax.int", "gelu.default", "dequantize_channels"):
        assert ops[name] == 0


def test_float_glue_when_the_backend_has_none(bert) -> None:
    _, gm = bert
    for ig in (integerize(gm, Conventions()), integerize(gm, GLUE_ON, glue=False)):
        ops = _ops(ig)
        assert ops["qlayer_norm"] == ops["qsoftmax"] == ops["qgelu"] == 0
        assert ops["layer_norm.default"] == 3 and ops["softmax.int"] == 1 and ops["gelu.default"] == 1
        reasons = {n.meta.get(iops.FLOAT_REASON) for n in ig.graph.nodes if n.target is torch.ops.aten.layer_norm.default}
        assert reasons == {"no integer form of layer_norm"}


def test_glue_reads_wide_int32_codes_and_the_mask_saturates(bert) -> None:
    _, gm = bert
    ig = integerize(gm, GLUE_ON)
    for node in ig.graph.nodes:
        if node.target in g.GLUE_OPS:
            assert DOMAIN.get(node.args[0]).dtype == "int32" and DOMAIN.get(node.args[0]).zero_point == 0
            assert node.target is g.qgelu or node.kwargs["add"][0].kwargs.get("out_dtype") == "int32"
    softmax = next(n for n in ig.graph.nodes if n.target is g.qsoftmax)
    qk, mask = softmax.args[0], softmax.kwargs["add"][0]
    assert qk.target is iops.qmatmul and mask.target is iops.quantize
    assert mask.kwargs["out_dtype"] == "int32" and mask.kwargs["qmin"] == -(2**31 - 128)
    # the sum's scale: twice the scores' (headroom), which include attention's 1 / sqrt(d)
    # (a relabelled domain, no node); the softmax's exponent multiplier is made from it
    scale = 2 * DOMAIN.get(qk).scale * 16**-0.5
    assert softmax.args[2:4] == quantize_multiplier(scale * 2**g.EXP_FRAC / math.log(2))


def test_fused_adds_compute_what_the_separate_add_does(bert) -> None:
    _, gm = bert
    fused = integerize(gm, GLUE_ON)
    node = next(n for n in fused.graph.nodes if n.target is g.qlayer_norm and "add" in n.kwargs)
    a = torch.randint(-(2**20), 2**20, (2, 8, 32), generator=torch.Generator().manual_seed(6), dtype=torch.int32)
    b = torch.randint(-(2**20), 2**20, (2, 8, 32), generator=torch.Generator().manual_seed(7), dtype=torch.int32)
    params = node.kwargs["add"][1:]
    gamma, beta = (getattr(fused, n.target) for n in node.args[2:4])
    args = (node.args[1], gamma, beta, *node.args[4:])
    separate = g.qlayer_norm(iops.qadd(a, b, *params, out_dtype="int32"), *args, **{k: v for k, v in node.kwargs.items() if k != "add"})
    together = g.qlayer_norm(a, *args, **{**node.kwargs, "add": (b, *params)})
    assert torch.equal(separate, together)


def test_integer_glue_is_as_close_to_fp32_as_float_glue(bert) -> None:
    model, gm = bert
    x = tiny_bert_inputs(16, seed=9)
    with torch.no_grad():
        ref = model(*x).flatten(1)
        cos = {glue: torch.nn.functional.cosine_similarity(first_output(integerize(gm, GLUE_ON, glue=glue)(*x)).flatten(1), ref)
               for glue in (True, False)}
    assert float(cos[True].min()) > 0.999
    assert float(cos[True].mean()) >= float(cos[False].mean()) - 1e-3
