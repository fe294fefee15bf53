"""What `lcpaq build` shows on the terminal: its own lines only (TVM's native logs, written to file
descriptor 2 by C++, appear with --debug alone), and each input's real dtype and shape."""
from __future__ import annotations

import subprocess
import sys
import textwrap

EMBEDDING_MODEL = textwrap.dedent("""
    import torch
    from torch import nn


    class Tagger(nn.Module):
        '''Token ids (int64) -> embedding -> linear: TVM's `take` warns "Fast mode segfaults ...".'''

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(32, 16)
            self.fc = nn.Linear(16, 8)

        def forward(self, ids, mask):
            return self.fc(self.emb(ids)) * mask.unsqueeze(-1)


    def build():
        torch.manual_seed(0)
        return Tagger(), (torch.randint(0, 32, (1, 6)), torch.ones(1, 6))
""")


def _lcpaq(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lcpaq.tools.cli", *argv], capture_output=True, text=True, timeout=600)


def test_build_keeps_tvm_native_logs_off_the_terminal_and_prints_real_input_types(tmp_path) -> None:
    model = tmp_path / "tagger.py"
    model.write_text(EMBEDDING_MODEL)
    quiet = _lcpaq("build", "--model", f"{model}:build", "-o", str(tmp_path / "a.so"), "--no-progress")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""  # neither "Fast mode segfaults ..." nor "Scope Saving" lines
    assert f"wrote {tmp_path / 'a.so'} (input int64 1x6, input float32 1x6; on this machine: load with" in quiet.stdout
    assert "bit-exact vs integer reference" in quiet.stdout
    debug = _lcpaq("build", "--model", f"{model}:build", "-o", str(tmp_path / "b.so"), "--no-progress", "--debug")
    assert debug.returncode == 0, debug.stderr
    assert "Warning: Fast mode segfaults when there are out-of-bounds indices" in debug.stderr  # the model does emit it
