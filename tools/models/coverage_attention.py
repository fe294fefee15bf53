"""The attention models of the coverage zoo (:mod:`lcpaq.tools.models.coverage`): a ViT with a
class token and a position-embedding parameter, Swin-like window attention with a relative
position bias, and a Llama-like decoder block (RMSNorm, rotary embedding, causal
``F.scaled_dot_product_attention``, SiLU-gated MLP) on int64 token ids."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lcpaq.tools.models.coverage_common import Built, image, with_data


class _ViT(nn.Module):
    """Patch embedding (4x4 conv), class token, learned position embedding, one pre-norm block
    with nn.MultiheadAttention and a GELU MLP, head on the class token."""

    def __init__(self, dim: int = 32, heads: int = 4, tokens: int = 64) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.5)
        self.norm1, self.attn = nn.LayerNorm(dim), nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.mlp(self.norm2(t))
        return self.head(self.norm(t[:, 0]))


def vit() -> Built:
    torch.manual_seed(0)
    return with_data(_ViT(), image())


class _WindowAttention(nn.Module):
    """Swin window attention: partition into ``win``x``win`` windows by reshape/permute, multi-head
    attention inside each window plus a learned relative position bias, reverse the partition."""

    def __init__(self, dim: int, heads: int, win: int) -> None:
        super().__init__()
        self.heads, self.win, self.scale = heads, win, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.randn((2 * win - 1) ** 2, heads) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (win - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * win - 1) + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, H, W, C]
        b, h, w, c = x.shape
        n, win = self.win * self.win, self.win
        wins = x.reshape(b, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        q, k, v = self.qkv(wins).reshape(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.rel_index.reshape(-1)].reshape(n, n, self.heads).permute(2, 0, 1)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1) + bias.unsqueeze(0), dim=-1)
        y = self.proj((attn @ v).transpose(1, 2).reshape(-1, n, c))
        return y.reshape(b, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class _Swin(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.patch, self.norm0 = nn.Conv2d(3, dim, 4, stride=4), nn.LayerNorm(dim)
        self.norm1, self.attn = nn.LayerNorm(dim), _WindowAttention(dim, 4, 4)
        self.norm2, self.mlp = nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm0(self.patch(x).permute(0, 2, 3, 1))  # [B, 8, 8, C]
        t = t + self.attn(self.norm1(t))
        t = t + self.mlp(self.norm2(t))
        return self.head(t.mean((1, 2)))


def swin() -> Built:
    torch.manual_seed(0)
    return with_data(_Swin(), image())


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class _Llama(nn.Module):
    """Token embedding, one decoder block (RMSNorm, rotary q/k, causal SDPA, SiLU-gated MLP),
    final RMSNorm and an LM head."""

    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 4, seq: int = 16) -> None:
        super().__init__()
        self.heads, hd = heads, dim // heads
        self.embed = nn.Embedding(vocab, dim)
        self.norm1, self.norm2, self.norm = _RMSNorm(dim), _RMSNorm(dim), _RMSNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.gate, self.up, self.down = nn.Linear(dim, 64, bias=False), nn.Linear(dim, 64, bias=False), nn.Linear(64, dim, bias=False)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        freqs = torch.outer(torch.arange(seq).float(), 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd))
        angles = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        h = self.norm1(x)
        q, k, v = self._heads(self.q(h)), self._heads(self.k(h)), self._heads(self.v(h))
        q, k = q * self.cos + _rotate_half(q) * self.sin, k * self.cos + _rotate_half(k) * self.sin
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(x.shape))
        h = self.norm2(x)
        x = x + self.down(F.silu(self.gate(h)) * self.up(h))
        return self.lm_head(self.norm(x))


def llama() -> Built:
    torch.manual_seed(0)
    return with_data(_Llama(), (torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(1)),), vocab=64)


# -- others ----------------------------------------------------------------------------------------
