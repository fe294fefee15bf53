"""Integer transformer glue in the integer lowering: a BERT-style layer becomes integer from its
embeddings to its last layer norm (golden structure), with the glue off it keeps float glue,
and both integer graphs stay close to the fp32 model."""
import collections

import pytest
import torch

from lcpaq.backends.common import integer_glue as g
from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.backend import Conventions
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
    assert {k: ops[k] for k in ("qlayer_norm", "qsoftmax", "qgelu", "qlinear", "qmatmul", "qadd")} == {
        "qlayer_norm": 3, "qsoftmax": 1, "qgelu": 1, "qlinear": 6, "qmatmul": 2, "qadd": 4}
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
    softmax = next(n for n in ig.graph.nodes if n.target is g.qsoftmax)
    add = softmax.args[0]
    mask = next(a for a in add.args[:2] if a.target is iops.quantize)
    assert mask.kwargs["out_dtype"] == "int32" and mask.kwargs["qmin"] == -(2**31 - 128)
    # the score scale includes attention's 1 / sqrt(d) (a relabelled domain, no node)
    qk = next(a for a in add.args[:2] if a.target is iops.qmatmul)
    assert DOMAIN.get(add).scale == pytest.approx(2 * DOMAIN.get(qk).scale * 16**-0.5)


def test_integer_glue_is_as_close_to_fp32_as_float_glue(bert) -> None:
    model, gm = bert
    x = tiny_bert_inputs(16, seed=9)
    with torch.no_grad():
        ref = model(*x).flatten(1)
        cos = {glue: torch.nn.functional.cosine_similarity(first_output(integerize(gm, GLUE_ON, glue=glue)(*x)).flatten(1), ref)
               for glue in (True, False)}
    assert float(cos[True].min()) > 0.999
    assert float(cos[True].mean()) >= float(cos[False].mean()) - 1e-3
