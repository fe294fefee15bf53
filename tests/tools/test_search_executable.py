"""The proxy search offers each layer only what the target's backend executes (the `executable`
pass), as a plain `--budget` run does: an embedding on x86 stays float and is costed so."""
from __future__ import annotations

import json
import textwrap

from lcpaq.tools.cli import main

MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc, self.out = nn.Embedding(50, 16), nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, ids):
            return self.out(torch.relu(self.fc(self.emb(ids)))).mean(1)

    def build():
        torch.manual_seed(0)
        return M().eval(), (torch.randint(0, 50, (1, 8), generator=torch.Generator().manual_seed(1)),)
''')


def test_search_keeps_a_layer_without_an_integer_kernel_in_float(tmp_path, capsys) -> None:
    model = tmp_path / "emb.py"
    model.write_text(MODEL)
    # fp32: 50*16*4 + (256+16)*4 + (64+4)*4 = 3200 + 1088 + 272 = 4560 B; the float table alone is 3200 B
    code = main(["quantize", "--model", f"{model}:build", "--search", "proxy", "--budget", "size=0.6x", "--trials", "3",
                 "--no-build", "--out", str(tmp_path / "small")])
    assert code == 2
    err = capsys.readouterr().err
    assert "of which 3.125 KiB is kept in float (1 layer without an integer kernel)" in err
    code = main(["quantize", "--model", f"{model}:build", "--search", "proxy", "--budget", "size=0.8x", "--trials", "3",
                 "--no-build", "--out", str(tmp_path / "out")])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    bits = {layer["name"]: layer["w_bits"] for layer in report["layers"]}
    assert bits["emb"] == 32 and {bits["fc"], bits["out"]} <= set(range(2, 9))
    assert [t["tensor"] for t in report["kept_in_float"]] == ["emb.weight"]
    held = report["search"]["held_out"]  # scored by output cosine: half its evaluation batches held out
    assert held["held_out_batches"] >= 1 and held["selection_batches"] >= held["held_out_batches"]
    assert "which no trial saw" in (tmp_path / "out" / "report.md").read_text()
