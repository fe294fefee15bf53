"""fold-bn: fold inference batch norms into the conv before them."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from lcpaq.ir.capture import get_attr, set_attr
from lcpaq.ir.surgery import set_layer_bias
from lcpaq.ir.layers import CONV_OPS
from lcpaq.passes.base import Pass, PassResult, register_pass
from lcpaq.passes.context import PassContext

aten = torch.ops.aten


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Folds ``batch_norm(conv(x, W, b))`` (inference mode) into ``conv(x, W', b')``.

    Reads: nothing. Rewrites: conv weights/biases and removes the batch norm nodes.
    Guarantees: outputs equal to float rounding; no batch norm fed by a foldable conv is left;
    idempotent (a second run changes nothing). Convs whose weight other nodes share are left."""

    name = "fold-bn"
    rewrites = True

    def call(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        for bn in list(gm.graph.nodes):
            conv = _foldable_conv(bn)
            if conv is not None:
                _fold(gm, conv, bn)
                modified = True
        if modified:
            _erase_unused_attrs(gm)
            gm.graph.lint()
            gm.recompile()
        return PassResult(gm, modified)


def _foldable_conv(bn: fx.Node) -> fx.Node | None:
    if bn.op != "call_function" or bn.target is not aten.batch_norm.default:
        return None
    conv = bn.args[0]
    training = bn.args[5]
    if training or not isinstance(conv, fx.Node) or conv.target not in CONV_OPS or len(conv.users) != 1:
        return None
    if conv.target is aten.convolution.default and conv.args[6]:  # transposed convolution
        return None
    weight = conv.args[1]
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr" and len(weight.users) == 1):
        return None
    same_target = [n for n in conv.graph.nodes if n.op == "get_attr" and n.target == weight.target]
    return conv if len(same_target) == 1 else None


def _fold(gm: fx.GraphModule, conv: fx.Node, bn: fx.Node) -> None:
    _, gamma, beta, mean, var, _, _, eps = bn.args[:8]
    w_node = conv.args[1]
    weight = get_attr(gm, w_node.target).detach()
    b_node = conv.args[2] if len(conv.args) > 2 else None
    bias = get_attr(gm, b_node.target).detach() if isinstance(b_node, fx.Node) else torch.zeros(weight.shape[0])
    mean_t, var_t = get_attr(gm, mean.target), get_attr(gm, var.target)
    gamma_t = get_attr(gm, gamma.target) if isinstance(gamma, fx.Node) else torch.ones_like(mean_t)
    beta_t = get_attr(gm, beta.target) if isinstance(beta, fx.Node) else torch.zeros_like(mean_t)

    scale = gamma_t.detach() / torch.sqrt(var_t + eps)
    new_w = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    new_b = (bias - mean_t) * scale + beta_t.detach()

    set_attr(gm, w_node.target, torch.nn.Parameter(new_w, requires_grad=False))
    set_layer_bias(gm, conv, w_node.target, new_b)
    bn.replace_all_uses_with(conv)
    gm.graph.erase_node(bn)


def _erase_unused_attrs(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users:
            gm.graph.erase_node(node)
