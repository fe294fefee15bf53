import collections
import os

import pytest
import torch
from torch import nn

from lcpaq.ir import CaptureError, capture, find_layers
from lcpaq.ir.capture import copy_sharing_tensors, get_attr, set_attr
from lcpaq.tools.models.mobilenetv2 import mobilenetv2
from lcpaq.tools.models.resnet import resnet18


def _ops(gm) -> collections.Counter:
    return collections.Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


def test_resnet18_captures_with_identical_outputs() -> None:
    model = resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    gm = capture(model, (x,))
    assert _ops(gm)["aten.conv2d.default"] == 20
    assert _ops(gm)["aten.batch_norm.default"] == 20
    assert [layer.kind for layer in find_layers(gm)].count("conv") == 20
    assert torch.allclose(gm(x), model(x), atol=1e-5)


def test_mobilenetv2_captures_with_identical_outputs() -> None:
    model = mobilenetv2().eval()
    x = torch.randn(1, 3, 224, 224)
    gm = capture(model, (x,))
    kinds = collections.Counter(layer.kind for layer in find_layers(gm))
    assert kinds == {"conv": 52, "linear": 1}
    assert _ops(gm)["aten.add.Tensor"] == 10  # residual connections
    assert torch.allclose(gm(x), model(x), atol=1e-5)


def test_batch_dimension_stays_dynamic() -> None:
    model = resnet18().eval()
    gm = capture(model, (torch.randn(1, 3, 64, 64),))
    x = torch.randn(3, 3, 64, 64)
    assert torch.allclose(gm(x), model(x), atol=1e-5)


def test_minilm_captures_real_weights() -> None:
    from lcpaq.tools.models import minilm

    model, tokenizer = minilm.load()
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    ids, mask = minilm.encode(tokenizer, minilm.SENTENCES[:2])
    gm = capture(model, (ids, mask))
    assert _ops(gm)["aten.linear.default"] == 37
    kinds = collections.Counter(layer.kind for layer in find_layers(gm))
    assert kinds == {"linear": 37, "matmul": 12, "embedding": 3}  # matmuls: 6 layers x (Q K^T, attention x V)
    ids3, mask3 = minilm.encode(tokenizer, minilm.SENTENCES[2:5])
    with torch.no_grad():
        assert torch.allclose(gm(ids3, mask3), model(ids3, mask3), atol=1e-5)


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class ToNumpy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy() * 2)


@pytest.mark.parametrize(("model", "op", "code"), [
    (DataDependent(), "data-dependent control flow", "if x.sum() > 0:"),
    (ToNumpy(), "Tensor.numpy", "x.numpy()"),
])
def test_untraceable_model_names_op_and_source_line(model: nn.Module, op: str, code: str) -> None:
    with pytest.raises(CaptureError) as info:
        capture(model, (torch.randn(2, 3),))
    message = str(info.value)
    assert "\n" not in message
    assert op in message and code in message
    assert f"{os.path.abspath(__file__)}:" in message
    line = next(i for i, text in enumerate(open(__file__), 1) if code in text)
    assert f":{line} " in message


def test_a_copy_sharing_tensors_shares_them_and_nothing_else() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    gm = capture(model, (torch.randn(1, 4),))
    twin = copy_sharing_tensors(gm)
    assert all(a is b for a, b in zip(gm.parameters(), twin.parameters()))
    assert twin.graph is not gm.graph and next(iter(twin.graph.nodes)).meta is not next(iter(gm.graph.nodes)).meta
    weight = next(n for n in twin.graph.nodes if n.op == "get_attr")
    set_attr(twin, weight.target, torch.zeros_like(get_attr(twin, weight.target)))  # how passes change a tensor
    assert not torch.equal(get_attr(gm, weight.target), get_attr(twin, weight.target))
