"""Ahead-of-time CUDA binaries in exported libraries.

TVM 0.27 keeps a CUDA module as CUDA C++ source and compiles it when the library is loaded (its
runtime calls back into Python for ``tvm_callback_cuda_compile``), so a library exported as it
is needs a CUDA compiler and TVM's Python on the GPU machine. lcpaq compiles the source here
instead, with ``nvcc``, into a fatbin (SASS for the target's ``sm_XX`` and its PTX for newer
GPUs) and packs that in the library in place of the source: the GPU machine needs only the TVM
runtime and the driver (``cuModuleLoadData`` takes the fatbin as it is).

The library's import blob (``ModulePackImportsToTensor``) holds each imported module as its type key
and its serialized bytes; a CUDA module's bytes are its format, its function table and its
data. :func:`embed_fatbins` swaps format ``cuda`` + source for ``fatbin`` + binary and leaves the
function table as TVM wrote it.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sysconfig
import tempfile
from typing import Any

import tvm
from tvm.runtime import _ffi_api
from tvm.runtime.executable import Executable
from tvm.support import nvcc

from lcpaq.ir.errors import ConfigError

_U64 = struct.Struct("<Q")
NO_NVCC = "building for a CUDA target needs nvcc (the CUDA toolkit, 12 or 13) on PATH"


def _string(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data


def gencode(arch: str) -> list[str]:
    """nvcc options for ``sm_XX``: its SASS, and its PTX (JIT-compiled by newer GPUs' drivers)."""
    match = re.fullmatch(r"sm_(\d+[a-z]?)", arch)
    if not match:
        raise ConfigError(f"CUDA arch must look like sm_90, got {arch!r}")
    v = match.group(1)
    return ["-gencode", f"arch=compute_{v},code=sm_{v}", "-gencode", f"arch=compute_{v},code=compute_{v}"]


def nvcc_path() -> str:
    """The nvcc that compiles the kernels; ConfigError (one line) without one."""
    found = shutil.which("nvcc")
    if found is None:
        raise ConfigError(NO_NVCC)
    return found


def compile_fatbin(source: str, arch: str) -> bytes:
    """``source`` (CUDA C++) compiled by nvcc for ``arch``; ConfigError (one line) without nvcc
    or when it fails."""
    try:
        with tvm.target.Target({"kind": "cuda", "arch": arch}):  # nvcc's helper reads the current target
            return bytes(nvcc.compile_cuda(source, target_format="fatbin", arch=gencode(arch), compiler="nvcc"))
    except FileNotFoundError as exc:
        raise ConfigError(NO_NVCC) from exc
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if any("Unsupported gpu architecture" in line for line in lines):
            raise ConfigError(f"this nvcc cannot compile for {arch}: CUDA 13 dropped GPUs older than Turing (sm_75); "
                              "put a CUDA 12 nvcc first on PATH") from exc
        first = next((line for line in lines if ("error" in line or "fatal" in line) and not line.endswith(":")), lines[0] if lines else "")
        raise ConfigError(f"nvcc failed on the generated CUDA kernels: {first}") from exc


def cuda_modules(mod: Any) -> list[Any]:
    """The CUDA modules in ``mod``'s import tree."""
    found, stack = [], [mod]
    while stack:
        m = stack.pop()
        if m.kind == "cuda":
            found.append(m)
        stack.extend(m.imports)
    return found


def embed_fatbins(blob: bytes, binaries: dict[bytes, bytes]) -> bytes:
    """The import blob with each CUDA module whose source is a key of ``binaries`` carrying
    that binary instead (format ``fatbin``); the blob's leading length is updated.

    A CUDA module in the blob: type key ``cuda`` | payload length | format ``cuda`` | function
    table | source (each string and the payload prefixed by its u64 length)."""
    out, key = blob, _string(b"cuda")
    for source, binary in binaries.items():
        tail = _string(source)
        end = out.find(tail)
        fmt_at = out.rfind(key, 0, end) if end >= 0 else -1
        key_at = fmt_at - 8 - len(key)
        if end < 0 or key_at < 0 or out[key_at:key_at + len(key)] != key:
            raise ValueError("unexpected layout of a CUDA module in TVM's packed imports")
        payload = _string(b"fatbin") + out[fmt_at + len(key):end] + _string(binary)
        out = out[:fmt_at - 8] + _U64.pack(len(payload)) + payload + out[end + len(tail):]
    return _U64.pack(len(out) - 8) + out[8:]


def write_packed_imports(mod: Any, prefix: str, binaries: dict[bytes, bytes], workspace: str) -> str:
    """TVM's packed imports of ``mod`` (the blob its loader reads from ``__tvm_ffi__library_bin``)
    with CUDA sources replaced by ``binaries``, as an assembly file that includes the blob as
    it is (a model's weights make it tens of MB: no C array of hex literals)."""
    blob = embed_fatbins(_ffi_api.ModulePackImportsToTensor(mod).numpy().tobytes(), binaries)
    data = os.path.join(workspace, f"{prefix}devc.bin")
    with open(data, "wb") as f:
        f.write(blob)
    symbol = f"{prefix}__tvm_ffi__library_bin"
    out = os.path.join(workspace, f"{prefix}devc.S")
    with open(out, "w") as f:
        f.write(f'  .section .rodata\n  .globl {symbol}\n  .type {symbol}, @object\n  .balign 16\n{symbol}:\n'
                f'  .incbin "{data}"\n  .size {symbol}, {len(blob)}\n  .section .note.GNU-stack,"",@progbits\n')
    return out


class CudaExecutable(Executable):
    """A compiled model whose CUDA kernels are also compiled for ``arch`` (``fatbins``: source
    -> binary), packed in place of the sources when it is exported."""

    def __init__(self, mod: Any, arch: str, fatbins: dict[bytes, bytes]) -> None:
        super().__init__(mod)
        self.arch, self.fatbins = arch, fatbins

    @classmethod
    def compile(cls, executable: Executable, arch: str) -> "CudaExecutable":
        """``executable`` with its CUDA kernels compiled by nvcc for ``arch`` now."""
        sources = [m.inspect_source() for m in cuda_modules(executable.mod)]
        return cls(executable.mod, arch, {src.encode(): compile_fatbin(src, arch) for src in sources})

    def export_library(self, file_name: str, **kwargs: Any) -> Any:  # noqa: D102 (Executable's, with the fatbins packed)
        def pack(module: Any, is_system_lib: bool, prefix: str, workspace: str) -> str:  # noqa: ARG001
            return write_packed_imports(module, prefix, self.fatbins, workspace)

        return super().export_library(file_name, fpack_imports=pack, **kwargs)


def cuobjdump() -> str:
    """The ``cuobjdump`` to read SASS with: on PATH, or from the ``nvidia-cuda-cuobjdump`` wheel
    (``pip install -e .[test]``; it needs ``nvidia-cuda-nvdisasm`` beside it)."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    wheel = os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu13", "bin", "cuobjdump")
    if os.path.exists(wheel):
        return wheel
    raise ConfigError("reading SASS needs cuobjdump: pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")


def disassemble(binary: bytes, what: str = "sass") -> str:
    """The SASS (``what="sass"``) or PTX (``"ptx"``) in a fatbin, by cuobjdump."""
    tool = cuobjdump()
    env = dict(os.environ, PATH=os.path.dirname(tool) + os.pathsep + os.environ.get("PATH", ""))  # nvdisasm beside it
    with tempfile.NamedTemporaryFile(suffix=".fatbin") as f:
        f.write(binary)
        f.flush()
        done = subprocess.run([tool, f"-{what}", f.name], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise ConfigError(f"cuobjdump failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return done.stdout
