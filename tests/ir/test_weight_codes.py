"""The shared weight codes: computed once per (tensor, spec), never stale, bounded."""
import torch

from lcpaq.ir.precision import QuantSpec
from lcpaq.ir.quantizer import fake_quantize_weight, quantization_error
from lcpaq.ir.weight_codes import WeightCodes


def _spec(bits: int, ch_axis: int | None = 0) -> QuantSpec:
    return QuantSpec(bits=bits, symmetric=True, ch_axis=ch_axis)


def test_a_code_is_the_quantizer_arithmetic_and_is_computed_once() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=gen)
    codes = WeightCodes()
    code = codes.get(w, _spec(4))
    assert torch.equal(code.fake, fake_quantize_weight(w, _spec(4)))
    assert code.error == quantization_error(w, _spec(4))
    assert codes.get(w, _spec(4)) is code  # the same tensor object hits
    assert codes.get(w, _spec(4, None)) is not code and (codes.hits, codes.misses) == (1, 2)
    assert codes.get(w.detach(), _spec(4)) is not code and codes.misses == 3  # another object is another key


def test_a_dead_weight_takes_its_codes_with_it() -> None:
    codes = WeightCodes()
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    codes.get(w, _spec(8))
    codes.get(w, _spec(4))
    assert len(codes) == 2
    del w
    assert len(codes) == 0 and codes._bytes == 0


def test_an_in_place_write_or_a_copy_never_reads_a_stale_code() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(8, 16, generator=gen)
    codes = WeightCodes()
    first = codes.get(w, _spec(8))
    w.mul_(2.0)
    assert torch.equal(codes.get(w, _spec(8)).fake, fake_quantize_weight(w, _spec(8)))
    clone = w.clone()
    assert codes.get(clone, _spec(8)) is not first and codes.misses == 3


def test_entries_beyond_the_bound_are_evicted_least_recent_first() -> None:
    gen = torch.Generator().manual_seed(2)
    ws = [torch.randn(64, generator=gen) for _ in range(3)]
    codes = WeightCodes(max_bytes=2 * 64 * 4)  # two entries' quantized copies (the weights are not counted)
    for w in ws:
        codes.get(w, _spec(8, None))
    assert len(codes) == 2
    codes.get(ws[1], _spec(8, None))
    assert codes.hits == 1
    codes.get(ws[0], _spec(8, None))  # evicted, recomputed
    assert codes.misses == 4
