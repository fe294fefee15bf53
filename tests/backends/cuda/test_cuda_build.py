"""Whole models built for the NVIDIA targets on this GPU-less machine: TVM's CUDA pipeline, nvcc
into a fatbin packed in the library in place of the CUDA source (:mod:`lcpaq.backends.cuda.fatbin`),
built and not run; the packing's blob surgery in closed form, and its assembly-included blob
checked by loading an x86 library packed the same way."""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import lcpaq.backends.common.capability  # noqa: F401 (registers the executable pass)
from lcpaq.backends.common.build import build_model, load_library
from lcpaq.backends.cuda import fatbin
from lcpaq.hw_targets import load_target
from tests.backends._nets import TinyMobile, TinyResNet, quantized

SM90 = load_target("nvidia-sm90")


def _s(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def test_embed_fatbins_swaps_format_and_data_keeps_the_function_table() -> None:
    table = _s(b"k0") + b"\x01\x02table"
    other = _s(b"relax.VMExecutable") + _s(b"constants")
    payload = _s(b"cuda") + table + _s(b"__global__ void k0() {}")
    body = other + _s(b"cuda") + _s(payload)[:8] + payload + b"tail"
    blob = struct.pack("<Q", len(body)) + body
    out = fatbin.embed_fatbins(blob, {b"__global__ void k0() {}": b"\xba\x55\xed\x50BINARY"})
    new_payload = _s(b"fatbin") + table + _s(b"\xba\x55\xed\x50BINARY")
    expected = other + _s(b"cuda") + _s(new_payload)[:8] + new_payload + b"tail"
    assert out == struct.pack("<Q", len(expected)) + expected
    with pytest.raises(ValueError, match="layout"):
        fatbin.embed_fatbins(blob, {b"not in the blob": b""})


def test_gencode_names_sass_and_ptx_of_the_arch() -> None:
    assert fatbin.gencode("sm_90") == ["-gencode", "arch=compute_90,code=sm_90", "-gencode", "arch=compute_90,code=compute_90"]
    with pytest.raises(Exception, match="sm_90"):
        fatbin.gencode("hopper")


def test_blob_packed_by_assembly_loads_and_runs(tmp_path: Path) -> None:
    """The packing path (blob included by an assembly file) on an x86 build, loaded here."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    host = load_target("x86-host")
    built = build_model(quantized(TinyResNet(), x), (x[:1],), host)
    path = tmp_path / "packed.so"
    built.executable.export_library(str(path), fpack_imports=lambda m, _s, p, w: fatbin.write_packed_imports(m, p, {}, w))
    loaded = load_library(path, host, [(1, 3, 16, 16)])
    assert np.array_equal(loaded.run(x[:1]), built.run(x[:1]))


@pytest.fixture(scope="module")
def mobile_sm90() -> tuple:
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    gm = quantized(TinyMobile(), x, "executable,uniform{w=8,a=8},fake-quant", target="nvidia-sm90")
    return build_model(gm, (x[:1],), SM90), x


def test_model_builds_for_sm90_without_a_gpu_and_is_not_run(mobile_sm90) -> None:
    built, x = mobile_sm90
    assert built.device is None and "no CUDA GPU" in built.not_run
    assert not built.float_fallbacks  # convs, depthwise, pools, adds: all integer kernels
    with pytest.raises(Exception, match="not run: this machine has no CUDA GPU"):
        built.run(x[:1])
    assert built.executable.arch == "sm_90"
    (binary,) = built.executable.fatbins.values()
    sass = fatbin.disassemble(binary)
    assert len(re.findall(r"\bIMMA\.\w+\.S8\.S8", sass)) >= 4  # the convs' tensor-core tiles


def test_exported_library_carries_the_fatbin_not_the_source(mobile_sm90, tmp_path: Path) -> None:
    built, _ = mobile_sm90
    data = built.export(tmp_path / "mobile.so").read_bytes()
    (binary,) = built.executable.fatbins.values()
    assert b"__global__" not in data and b"nvcuda::wmma" not in data
    assert _s(b"fatbin") in data and _s(binary) in data
