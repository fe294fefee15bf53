"""The wide (16-bit) GEMM kernels' exactness bookkeeping: chunk sizes, weight parts, packing."""
from __future__ import annotations

import pytest
import torch

from lcpaq.backends.common import gemm_te, wide_te


@pytest.mark.parametrize(("act", "bits", "reduction", "chunk", "parts"), [
    ("int16", 8, 4608, 512, 1),     # 2^15 * 127 per product: 516 fit int32
    ("uint8", 16, 4608, 256, 1),    # 255 * 32767: 257 fit
    ("int16", 16, 4608, 256, 2),    # split weights: 2^15 * 255 per product
    ("int16", 8, 384, 384, 1),      # the whole reduction in one chunk
    ("int16", 16, 6, 6, 2),
    ("uint8", 16, 1000, 250, 1),    # the largest even divisor that fits
])
def test_chunk_size_and_parts(act: str, bits: int, reduction: int, chunk: int, parts: int) -> None:
    assert wide_te.chunk_size(reduction, act, bits) == chunk and wide_te.parts_of(act, bits) == parts
    x_max, w_max = (255 if act == "uint8" else 2**15), (127 if bits == 8 else 255 if parts == 2 else 2**15 - 1)
    assert chunk * x_max * w_max <= 2**31 - 1  # no chunk sum can overflow int32


def test_odd_reduction_is_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        wide_te.chunk_size(7, "int16", 8)


def test_split_parts_reconstruct_every_weight() -> None:
    w = torch.arange(-(2**15) + 1, 2**15, dtype=torch.int32).to(torch.int16).reshape(-1, 1)
    hi, lo = wide_te.split_parts(w, 2).to(torch.int64)
    assert torch.equal(256 * hi + lo, w.to(torch.int64))
    assert int(hi.min()) >= -128 and int(hi.max()) <= 127 and int(lo.min()) >= 0 and int(lo.max()) <= 255
    assert torch.equal(wide_te.split_parts(w, 1)[0], w)


def test_packed_layouts() -> None:
    w = torch.arange(32 * 6, dtype=torch.int16).reshape(32, 6)
    p = wide_te.pack_wide_weight(w, 1, 16)
    assert p.shape == (1, 2, 3, 16, 2) and p[0, 1, 2, 5, 1] == w[16 + 5, 2 * 2 + 1]
    c = torch.arange(16 * 4 * 3 * 3, dtype=torch.int16).reshape(16, 4, 3, 3)
    q = wide_te.pack_wide_weight(c, 2, 16)
    assert q.shape == (2, 1, 3, 3, 2, 16, 2) and q[1, 0, 2, 1, 1, 7, 0] == c[7, 2, 2, 1] % 256


def test_bias_eff_folds_the_zero_point_in_int64() -> None:
    w = torch.full((2, 1000), 2**15 - 1, dtype=torch.int16)
    b = gemm_te.channel_params(gemm_te.bias_eff(w, -(2**15), torch.tensor([7, 8])), 1, 1, 2, 16, "int64")[0]
    assert b.dtype.name == "int64" and b[0] == 7 + 2**15 * (2**15 - 1) * 1000 and b[2:].sum() == 0
