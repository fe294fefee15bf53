"""What stays in float is never silent: report.json and report.md list every tensor kept in
float with its size and why, on a target whose backend runs some layers only in float."""
from __future__ import annotations

import json

import torch
from torch import nn

from lcpaq.tools.api import quantize
from lcpaq.tools.models.zoo import ModelBundle


class Tagger(nn.Module):
    """An embedding (16 x 8, 512 B in fp32), a layer norm (8 + 8 parameters), a linear 8 -> 4."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.emb(ids)))


def _bundle() -> ModelBundle:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(5)
    batches = tuple((torch.randint(0, 16, (4, 6), generator=gen),) for _ in range(3))
    return ModelBundle("tagger", Tagger().eval(), (batches[0][0][:1],), batches, batches)


def test_report_lists_what_is_kept_in_float(x86, tmp_path) -> None:
    result = quantize(_bundle(), target=x86, bits="w8a8", out=tmp_path / "run", build=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {r["tensor"]: r for r in report["kept_in_float"]}
    assert {name: r["bytes"] for name, r in rows.items()} == {"norm.weight": 32, "norm.bias": 32, "emb.weight": 512}
    assert rows["norm.bias"]["reason"] == "normalization parameter (aten.layer_norm.default): norms run in float"
    assert rows["emb.weight"]["reason"] == (
        "layer emb runs in float: backend 'x86-vnni' has no integer kernel for embedding emb (aten.embedding.default)"
    )
    assert report["configs"][1]["size_bytes"] == 512 + 64 + 32 + 4 * 4  # float table and norm (fp32), fc: int8 weights, int32 bias
    assert result.report["kept_in_float"] == report["kept_in_float"]
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "## Kept in float" in markdown and "3 tensors, 576 B in all" in markdown
    assert "| emb.weight  |     512 B | layer emb runs in float: backend 'x86-vnni' has no integer kernel" in markdown
