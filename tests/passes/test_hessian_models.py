"""Small seeded models whose graphs have ops without double backward in PyTorch, and each one's
math written out by hand (decomposed: clamp for hardsigmoid/hardswish, matmul-softmax-matmul
for attention, a broadcast norm for cdist), in float64, with a perturbation added to the input
of each quantizable layer. The tests of ``hessian`` on such graphs compare against these.

No tests here: this module is imported by them, and its source is written out as a model file
for the CLI (it imports nothing but torch)."""
import math

import torch
import torch.nn.functional as F
from torch import nn


class SqueezeExcite(nn.Module):
    """MobileNetV3-style: conv, hardswish, squeeze-excite gate (relu, hardsigmoid), linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1 = nn.Conv2d(4, 2, 1)
        self.fc2 = nn.Conv2d(2, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.hardswish(self.c1(x))
        s = self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True))))
        y = y * F.hardsigmoid(s)
        return self.head(y.mean((2, 3)))


def squeeze_excite_ref(p: dict, d: dict, x: torch.Tensor) -> torch.Tensor:
    y = F.conv2d(x + d["c1"], p["c1.weight"], p["c1.bias"], padding=1)
    y = y * torch.clamp(y + 3, 0, 6) / 6
    s = F.conv2d(y.mean((2, 3), keepdim=True) + d["fc1"], p["fc1.weight"], p["fc1.bias"])
    s = F.conv2d(torch.relu(s) + d["fc2"], p["fc2.weight"], p["fc2.bias"])
    y = y * (torch.clamp(s + 3, 0, 6) / 6)
    return F.linear(y.mean((2, 3)) + d["head"], p["head.weight"], p["head.bias"])


class TinyAttention(nn.Module):
    """One attention layer through F.scaled_dot_product_attention: no mask, causal, an additive
    float mask or a boolean keep-mask."""

    def __init__(self, mask: str = "none", d: int = 8, heads: int = 2, seq: int = 5) -> None:
        super().__init__()
        self.mask, self.heads = mask, heads
        self.qkv = nn.Linear(d, 3 * d)
        self.o = nn.Linear(d, d)
        self.register_buffer("bias", torch.randn(seq, seq) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mask = {"float": self.bias, "bool": keep_mask(self.bias)}.get(self.mask)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.mask == "causal")
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class FlashAttention(TinyAttention):
    """Causal attention calling the fused CPU kernel itself, as a graph decomposed for CPU has it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True)[0]
        return self.o(y.transpose(1, 2).reshape(b, t, d))


def keep_mask(bias: torch.Tensor) -> torch.Tensor:
    return (bias > -0.2) | torch.eye(bias.shape[0], dtype=torch.bool)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, mask=None) -> torch.Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(), -math.inf)
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, -math.inf)
    elif mask is not None:
        scores = scores + mask
    return torch.softmax(scores, -1) @ v


def tiny_attention_ref(mask: str):
    def ref(p: dict, d: dict, x: torch.Tensor) -> torch.Tensor:
        b, t, dim = x.shape
        qkv = F.linear(x + d["qkv"], p["qkv.weight"], p["qkv.bias"]).view(b, t, 3, 2, dim // 2).permute(2, 0, 3, 1, 4)
        y = attention(qkv[0], qkv[1], qkv[2], mask == "causal", {"float": p["bias"], "bool": keep_mask(p["bias"])}.get(mask))
        return F.linear(y.transpose(1, 2).reshape(b, t, dim) + d["o"], p["o.weight"], p["o.bias"])
    return ref


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaBlock(nn.Module):
    """Pre-norm decoder block: RMSNorm, rotary q/k, causal SDPA, SiLU-gated MLP, residuals."""

    def __init__(self, d: int = 8, heads: int = 2, hidden: int = 12, seq: int = 5) -> None:
        super().__init__()
        self.heads, self.hd = heads, d // heads
        self.norm1, self.norm2 = RMSNorm(d), RMSNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, self.hd, 2).float() / self.hd))
        angles = torch.outer(torch.arange(seq).float(), inv)
        self.register_buffer("cos", torch.cat((angles, angles), -1).cos())
        self.register_buffer("sin", torch.cat((angles, angles), -1).sin())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (m(h).view(b, t, self.heads, self.hd).transpose(1, 2) for m in (self.q, self.k, self.v))
        q = q * self.cos + rotate_half(q) * self.sin
        k = k * self.cos + rotate_half(k) * self.sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


def llama_block_ref(p: dict, d: dict, x: torch.Tensor) -> torch.Tensor:
    b, t, dim = x.shape
    heads = 2
    norm = lambda z, w: z / torch.sqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) * w  # noqa: E731
    h = norm(x, p["norm1.weight"]) + d["q"]
    q, k, v = (F.linear(h, p[f"{n}.weight"]).view(b, t, heads, dim // heads).transpose(1, 2) for n in "qkv")
    rot = lambda z: z * p["cos"] + torch.cat((-z[..., dim // heads // 2:], z[..., : dim // heads // 2]), -1) * p["sin"]  # noqa: E731
    a = attention(rot(q), rot(k), v, causal=True)
    x = x + F.linear(a.transpose(1, 2).reshape(b, t, dim) + d["o"], p["o.weight"])
    h = norm(x, p["norm2.weight"]) + d["gate"]
    g = F.linear(h, p["gate.weight"])
    return x + F.linear(g / (1 + torch.exp(-g)) * F.linear(h, p["up.weight"]) + d["down"], p["down.weight"])


class Prototypes(nn.Module):
    """An RBF layer: distances (torch.cdist, no double backward and no decomposition) to learned
    prototypes of a tanh embedding, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 4)
        self.protos = nn.Parameter(torch.randn(5, 4))
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.exp(-torch.cdist(torch.tanh(self.embed(x)), self.protos)))


def prototypes_ref(p: dict, d: dict, x: torch.Tensor) -> torch.Tensor:
    z = torch.tanh(F.linear(x + d["embed"], p["embed.weight"], p["embed.bias"]))
    dist = ((z[:, None, :] - p["protos"][None]) ** 2).sum(-1).sqrt()
    return F.linear(torch.exp(-dist) + d["head"], p["head.weight"], p["head.bias"])


def build_squeeze_excite():
    torch.manual_seed(0)
    return SqueezeExcite().eval(), (torch.randn(1, 3, 6, 6),)


def build_llama_block():
    torch.manual_seed(0)
    return LlamaBlock().eval(), (torch.randn(1, 5, 8),)
