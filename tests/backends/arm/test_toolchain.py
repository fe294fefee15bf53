"""Which program links AArch64 libraries: the user's, Debian's cross g++, or zig; and the one
line that says how to get one when there is none."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from lcpaq.backends.arm import toolchain
from lcpaq.ir.errors import ConfigError


def test_the_users_linker_comes_first_and_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mine = tmp_path / "my-aarch64-g++"
    mine.write_text("#!/bin/sh\nexit 0\n")
    mine.chmod(0o755)
    monkeypatch.setenv(toolchain.CXX_ENV, str(mine))
    assert toolchain.aarch64_linker() == str(mine)
    monkeypatch.setenv(toolchain.CXX_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match=r"\$LCPAQ_AARCH64_CXX names .*missing', which is not an executable program"):
        toolchain.aarch64_linker()


def test_debian_cross_gxx_then_zig_then_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(toolchain.CXX_ENV, raising=False)
    gxx = tmp_path / toolchain.DEBIAN_CXX
    gxx.write_text("#!/bin/sh\nexit 0\n")
    gxx.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert toolchain.aarch64_linker() == str(gxx)
    gxx.unlink()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "ziglang" else real_find_spec(name, *a))
    wrapper = Path(toolchain.aarch64_linker())
    assert os.access(wrapper, os.X_OK) and f"-m ziglang c++ -target {toolchain.ZIG_TRIPLE}" in wrapper.read_text()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ziglang" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"no AArch64 linker on this machine: `apt-get install g\+\+-aarch64-linux-gnu`.*pip install ziglang"):
        toolchain.aarch64_linker()
