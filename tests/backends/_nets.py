"""Small seeded CNNs that exercise every op of the integer lowering, and their quantized graphs."""
from __future__ import annotations

import torch
from torch import nn

from lcpaq.hw_targets import load_target
from lcpaq.ir import capture
from lcpaq.passes import Pipeline
from tests.conftest import make_ctx

PREPARE = "fold-bn,shape-prop,cost,quant-scheme,calibrate{method=minmax}"


class TinyResNet(nn.Module):
    """Stem conv (3 input channels, 12 outputs: both padded by the kernels) + BN + ReLU, max pool,
    a residual block with a strided 1x1 downsample, ReLU6, global average pool, linear to 10."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.c1 = nn.Conv2d(12, 24, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(24, 24, 3, padding=1)
        self.down = nn.Conv2d(12, 24, 1, stride=2)
        self.c3 = nn.Conv2d(24, 32, 1)
        self.fc = nn.Linear(32, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.stem(x))))
        y = torch.relu(self.c2(torch.relu(self.c1(x))) + self.down(x))
        y = nn.functional.relu6(self.c3(y))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def quantized(model: nn.Module, x: torch.Tensor, spec: str = "uniform{w=8,a=8},fake-quant", target: str = "x86-host"):
    """(fake-quantized graph module, its fp32 graph) of ``model`` calibrated on seeded noise."""
    torch.manual_seed(0)
    model = model.eval()
    gm = capture(model, (x[:1],))
    ctx = make_ctx(load_target(target), x[:1])
    gm = Pipeline.from_spec(PREPARE)(gm, ctx).graph_module
    return Pipeline.from_spec(spec)(gm, ctx).graph_module


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))


class TinyMobile(nn.Module):
    """An inverted residual: 1x1 expand + ReLU6, 3x3 depthwise (stride 1) + ReLU6, 1x1 project,
    added to its input without a ReLU; then a strided depthwise and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 48, 1)
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.project = nn.Conv2d(48, 16, 1)
        self.dw2 = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.stem(x))
        y = self.project(nn.functional.relu6(self.dw(nn.functional.relu6(self.expand(x))))) + x
        y = nn.functional.relu6(self.dw2(y))
        return self.fc(y.mean((2, 3)))


def mixed(model: nn.Module, x: torch.Tensor, float_layers: int) -> "torch.fx.GraphModule":
    """W8A8 except the first ``float_layers`` layers (in graph order), left in float (32 bits)."""
    from lcpaq.ir import find_layers
    from lcpaq.ir.meta import QSPEC, LayerQuantSpec

    torch.manual_seed(0)
    gm = capture(model.eval(), (x[:1],))
    ctx = make_ctx(load_target("x86-host"), x[:1])
    gm = Pipeline.from_spec(PREPARE + ",uniform{w=8,a=8}")(gm, ctx).graph_module
    for layer in find_layers(gm)[:float_layers]:
        QSPEC.set(layer.node, LayerQuantSpec(None, None))
    return Pipeline.from_spec("fake-quant")(gm, ctx).graph_module


def widths(gm: "torch.fx.GraphModule", pairs: list[tuple[int, int]], ctx: object) -> "torch.fx.GraphModule":
    """``gm`` (calibrated, uniformly assigned) with layer ``i`` at ``pairs[i % len(pairs)]``
    (weight, activation) bits, fake-quantized; layers without a weight or an activation
    quantizer (matmuls, embeddings) keep their assignment."""
    from dataclasses import replace

    from lcpaq.ir import find_layers
    from lcpaq.ir.meta import QSPEC, LayerQuantSpec

    for i, layer in enumerate(find_layers(gm)):
        spec, (w, a) = QSPEC.get(layer.node), pairs[i % len(pairs)]
        if spec.weight is not None and spec.act is not None:
            QSPEC.set(layer.node, LayerQuantSpec(replace(spec.weight, bits=w), replace(spec.act, bits=a)))
    return Pipeline.from_spec("fake-quant")(gm, ctx).graph_module


def mixed_widths(model: nn.Module, x: torch.Tensor, pairs: list[tuple[int, int]]) -> "torch.fx.GraphModule":
    """``model`` with its layers cycling through ``pairs`` of (weight, activation) bits."""
    torch.manual_seed(0)
    gm = capture(model.eval(), (x[:1],))
    ctx = make_ctx(load_target("x86-host"), x[:1])
    return widths(Pipeline.from_spec(PREPARE + ",uniform{w=8,a=8}")(gm, ctx).graph_module, pairs, ctx)


class TinyEncoder(nn.Module):
    """One transformer encoder layer on token ids (int64 input): embedding, attention with an
    additive mask, layer norms, GELU MLP. Linear layers are int8; the rest is float glue."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 2, tokens: int = 8) -> None:
        super().__init__()
        self.heads, self.tokens = heads, tokens
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = self.ln1(x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))


class TinyBert(nn.Module):
    """A BERT-style layer as Hugging Face writes it: token and position embeddings added and
    layer-normed, separate q / k / v linears split into heads by view + transpose, scores
    scaled by a Python scalar plus an additive mask (-3.4e38 at padding), softmax, residual
    adds into layer norms, a GELU MLP. Inputs: token ids and an attention mask (int64)."""

    def __init__(self, vocab: int = 40, dim: int = 32, heads: int = 2, tokens: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.embed, self.pos = nn.Embedding(vocab, dim), nn.Embedding(tokens, dim)
        self.ln0, self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        x = self.ln0(self.embed(ids) + self.pos.weight[:t])
        split = lambda y: y.view(b, t, self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        att = torch.softmax(q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5) + bias, dim=-1)
        x = self.ln1(x + self.o((att @ v).transpose(1, 2).reshape(b, t, -1)))
        return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))


def tiny_bert_inputs(rows: int, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded token ids and masks (each row padded after a random length)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (rows, 8), generator=gen)
    lengths = torch.randint(3, 9, (rows,), generator=gen)
    mask = (torch.arange(8)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def quantized_bert(model: nn.Module, pairs: list[tuple[int, int]] | None = None) -> "torch.fx.GraphModule":
    """``model`` (a :class:`TinyBert`) at W8A8 (or its layers cycling through ``pairs`` of
    (weight, activation) bits), calibrated on seeded token batches."""
    from lcpaq.passes import PassContext

    torch.manual_seed(0)
    example = tiny_bert_inputs(1)
    gm = capture(model.eval(), example)
    ctx = PassContext(load_target("x86-host"), example, tuple(tiny_bert_inputs(4, seed=s) for s in range(3)))
    gm = Pipeline.from_spec(PREPARE + ",uniform{w=8,a=8}")(gm, ctx).graph_module
    return widths(gm, pairs or [(8, 8)], ctx)
