"""Linking AArch64 shared libraries on this x86 machine.

TVM compiles the kernels to AArch64 objects with its own LLVM; a linker for the board's ABI
turns them into the ``.so`` the board loads. The linker, in order of preference:

1. ``$LCPAQ_AARCH64_CXX``: a program of the user's choice (a vendor SDK's g++, a wrapper);
2. Debian's ``aarch64-linux-gnu-g++`` (``apt-get install g++-aarch64-linux-gnu``; `make arm-board`
   installs it): the standard cross toolchain, the same glibc ABI as the emulated board's root;
3. zig's bundled clang (``pip install ziglang``, no root needed), targeting glibc 2.28 so the
   library also loads on older board images.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from typing import Any, Callable

from lcpaq.ir.errors import ConfigError
from lcpaq.ir.fileio import cache_dir

CXX_ENV = "LCPAQ_AARCH64_CXX"
DEBIAN_CXX = "aarch64-linux-gnu-g++"
DEBIAN_PACKAGE = "g++-aarch64-linux-gnu"
ZIG_TRIPLE = "aarch64-linux-gnu.2.28"


def _zig_wrapper() -> str:
    """A one-line script running ``python -m ziglang c++ -target ...`` (TVM calls one program)."""
    path = cache_dir() / "toolchain" / "zig-aarch64-linux-gnu-c++"
    text = f'#!/bin/sh\nexec "{sys.executable}" -m ziglang c++ -target {ZIG_TRIPLE} "$@"\n'
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    return str(path)


def aarch64_linker() -> str:
    """The program that links AArch64 shared libraries here (see the module docstring);
    ConfigError saying how to get one when there is none."""
    chosen = os.environ.get(CXX_ENV)
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise ConfigError(f"${CXX_ENV} names {chosen!r}, which is not an executable program")
        return found
    found = shutil.which(DEBIAN_CXX)
    if found:
        return found
    if importlib.util.find_spec("ziglang") is not None:
        return _zig_wrapper()
    raise ConfigError(
        f"no AArch64 linker on this machine: `apt-get install {DEBIAN_PACKAGE}` "
        f"(or `make arm-board`), `pip install ziglang`, or set ${CXX_ENV}"
    )


def cross_compiler() -> Callable[..., Any]:
    """The ``fcompile`` for TVM's ``export_library`` that links with :func:`aarch64_linker`."""
    from tvm.support import cc

    return cc.cross_compiler(aarch64_linker())
