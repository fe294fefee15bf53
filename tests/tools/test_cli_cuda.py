"""`lcpaq build` and `lcpaq targets` for the NVIDIA targets on this GPU-less machine: the library
is built (x86-64 host code, the kernels as a fatbin inside) and said not to have run; a missing
nvcc is one line, exit 2, before any work and with nothing written."""
from __future__ import annotations

from pathlib import Path

import pytest

from lcpaq.tools.cli import main

EM_X86_64 = 62


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--no-progress"]) if argv[0] != "targets" else main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_for_sm90_writes_a_library_not_run(capsys, tmp_path: Path) -> None:
    lib = tmp_path / "digits.so"
    code, out, err = _run(capsys, "build", "--model", "resnet-digits", "--target", "nvidia-sm90", "-o", str(lib))
    assert code == 0 and err == "", err
    assert "built, not run: this machine has no CUDA GPU" in out and "python -m lcpaq.tools.gpu_bundle" in out
    assert f"wrote {lib}" in out and "on an NVIDIA GPU (sm_90) with the TVM runtime" in out
    data = lib.read_bytes()
    assert int.from_bytes(data[18:20], "little") == EM_X86_64  # the host side runs on the GPU machine's x86-64 CPU
    assert b"fatbin" in data and b"__global__" not in data


def test_build_without_nvcc_is_one_line_before_any_work(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvcc anywhere
    lib = tmp_path / "m.so"
    code, out, err = _run(capsys, "build", "--model", "resnet-digits", "--target", "nvidia-sm75", "-o", str(lib))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "needs nvcc (the CUDA toolkit, 12 or 13) on PATH" in err and not lib.exists()


def test_targets_lists_the_gpus_as_built_here(capsys) -> None:
    code, out, _ = _run(capsys, "targets")
    assert code == 0
    for name in ("nvidia-sm75", "nvidia-sm90"):
        block = out[out.index(name):].split("\n")[:4]
        assert "builds with backend cuda-tensorcore" in block[2] and "compiled here with nvcc" in block[3]
