"""What the coverage zoo's builders share: the bundle shape, seeded data and the example image."""
from __future__ import annotations

import torch
from torch import nn

Batch = tuple[torch.Tensor, ...]
Built = tuple[nn.Module, Batch, tuple[Batch, ...]]
ROWS, BATCHES = 4, 4


def with_data(model: nn.Module, example: Batch, vocab: int = 0) -> Built:
    """The model in eval mode, its example and ``BATCHES`` seeded batches of ``ROWS`` rows like
    it (Gaussian, or token ids below ``vocab``)."""
    gen = torch.Generator().manual_seed(2)
    like = lambda x: (torch.randint(0, vocab, (ROWS, *x.shape[1:]), generator=gen) if vocab  # noqa: E731
                      else torch.randn(ROWS, *x.shape[1:], generator=gen))
    return model.eval(), example, tuple(tuple(like(x) for x in example) for _ in range(BATCHES))


def image() -> Batch:
    return (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)),)
