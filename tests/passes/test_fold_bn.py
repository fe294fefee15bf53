import torch

from lcpaq.ir import capture
from lcpaq.passes.fold_bn import FoldBatchNorm
from lcpaq.tools.models.resnet import resnet_digits
from tests.conftest import make_ctx


def _randomise_bn(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen))
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen))


def test_fold_is_equivalent_and_removes_bn(x86) -> None:
    model = resnet_digits().eval()
    _randomise_bn(model)
    x = torch.randn(16, 1, 8, 8)
    gm = capture(model, (x[:1],))
    result = FoldBatchNorm()(gm, make_ctx(x86, x[:1]))
    assert result.modified
    targets = [str(n.target) for n in gm.graph.nodes]
    assert "aten.batch_norm.default" not in targets
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-4, rtol=1e-4)
    # every conv now has a bias (BN's shift went there)
    convs = [n for n in gm.graph.nodes if n.target is torch.ops.aten.conv2d.default]
    assert all(n.args[2] is not None for n in convs)


def test_fold_is_idempotent(block, x86) -> None:
    x = torch.randn(1, 3, 8, 8)
    gm = capture(block, (x,))
    ctx = make_ctx(x86, x)
    assert FoldBatchNorm()(gm, ctx).modified
    code = gm.code
    assert not FoldBatchNorm()(gm, ctx).modified
    assert gm.code == code


def test_fold_leaves_original_model_untouched(block, x86) -> None:
    before = block.c1.weight.detach().clone()
    x = torch.randn(1, 3, 8, 8)
    FoldBatchNorm()(capture(block, (x,)), make_ctx(x86, x))
    assert torch.equal(block.c1.weight, before)
