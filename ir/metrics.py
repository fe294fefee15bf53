"""Quality metrics of a quantized model against its fp32 reference."""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.utils._pytree import tree_leaves


def _outputs(model: torch.nn.Module, batches: Iterable[tuple[Any, ...]]) -> list[torch.Tensor]:
    outs = []
    with torch.no_grad():
        for batch in batches:
            leaves = [t for t in tree_leaves(model(*batch)) if isinstance(t, torch.Tensor) and t.is_floating_point()]
            outs.append(torch.cat([t.reshape(t.shape[0] if t.dim() else 1, -1) for t in leaves], dim=1))
    return outs


def output_metrics(reference: list[torch.Tensor], model: torch.nn.Module, batches: Iterable[tuple[Any, ...]]) -> dict[str, float]:
    """SQNR in dB (signal power over error power, over all outputs) and the mean per-sample
    cosine similarity of ``model``'s outputs against the ``reference`` outputs."""
    signal = noise = 0.0
    cosines = []
    for ref, out in zip(reference, _outputs(model, batches)):
        signal += float(torch.sum(ref.double() ** 2))
        noise += float(torch.sum((ref.double() - out.double()) ** 2))
        cosines.append(torch.nn.functional.cosine_similarity(ref.double(), out.double(), dim=1))
    sqnr = math.inf if noise == 0.0 else 10.0 * math.log10(max(signal, 1e-300) / noise)
    return {"sqnr_db": sqnr, "cosine": float(torch.cat(cosines).mean())}


def first_output(out: Any) -> torch.Tensor:
    """The first tensor of a model's output: through tuples, lists, dicts and transformers'
    ``ModelOutput`` (its ``to_tuple``)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        return first_output(next(iter(out.values())))
    if hasattr(out, "to_tuple"):
        return first_output(out.to_tuple())
    return out


def reference_outputs(model: torch.nn.Module, batches: Iterable[tuple[Any, ...]]) -> list[torch.Tensor]:
    return _outputs(model, batches)
