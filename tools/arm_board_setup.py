"""Builds the emulated AArch64 board (``python -m lcpaq.tools.arm_board setup``): an arm64 Debian
root with Python and TVM's runtime, run by qemu-user on this x86 host without binfmt_misc.

Debian packages come from this host's apt mirror (read from /etc/apt at run time) through a private
apt configuration, so the host's apt state is untouched; the wheels (TVM, numpy, ...) come from the
package index through the host's pip, at the versions installed on the host (the RPC client and
server must match). Only TVM's runtime libraries are kept (a device runs no compiler). The board is
built in a temporary sibling directory and renamed into place when complete.
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from lcpaq.ir.errors import LcpaqError
from lcpaq.ir.fileio import atomic_directory

SUITE = "bookworm"  # Debian 12: Python 3.11, glibc 2.36
GLIBC_MINOR = 36
FORMAT = 3  # bump when the board's layout changes: older boards are then rebuilt
DEB_PACKAGES = ("python3", "libstdc++6", "libgcc-s1")
#: The wheels of the board, at the host's versions. TVM's RPC server needs the last two
#: (tvm.exec.popen_worker imports cloudpickle, PopenWorker.kill imports psutil).
WHEELS = ("apache-tvm", "apache-tvm-ffi", "numpy", "ml_dtypes", "typing_extensions", "cloudpickle", "psutil")
FALLBACK_VERSIONS = {"apache-tvm": "0.27.0.post1", "apache-tvm-ffi": "0.1.14.post1"}
#: Parts of the TVM wheel a device does not need: the compiler (240 MB; without it TVM runs
#: runtime-only and imports in half the time), CUDA, headers and sources.
SKIPPED_MEMBERS = ("tvm/lib/libtvm_compiler.so", "tvm/lib/libtvm_runtime_cuda.so", "tvm/3rdparty/",
                   "tvm/src/", "tvm/include/", "tvm/web/")
#: Host tools and the Debian packages that provide them.
HOST_TOOLS = {"qemu-aarch64-static": "qemu-user-static", "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu"}
STAMP = "board.json"
ROOTFS = "rootfs"
SITE = "usr/lib/python3/dist-packages"
DEFAULT_CPU = "cortex-a76"

#: bin/python of the board, an x86 shell script: runs the board's python under qemu-user. Its paths
#: are found from its own location, so the board can be moved; it exports its own path, which
#: the hook below makes every board python's sys.executable (TVM's RPC server re-executes it).
WRAPPER = """#!/bin/sh
# The emulated AArch64 board's python (written by lcpaq.tools.arm_board setup).
board=$(cd "$(dirname "$0")/.." && pwd -P)
root="$board/{rootfs}"
export LCPAQ_ARM_BOARD_PYTHON="$board/bin/python" LCPAQ_ARM_BOARD_CPU="${{LCPAQ_ARM_BOARD_CPU:-{cpu}}}"
export TVM_USE_RUNTIME_LIB=1 PYTHONNOUSERSITE=1
unset PYTHONPATH PYTHONHOME PYTHONSTARTUP TVM_LIBRARY_PATH LD_LIBRARY_PATH LD_PRELOAD
exec "{qemu}" -L "$root" -cpu "$LCPAQ_ARM_BOARD_CPU" "$root/usr/bin/{python}" "$@"
"""
#: A .pth file in the board's site-packages: its import line runs at every board python's start.
HOOK = 'import os, sys; sys.executable = os.environ.get("LCPAQ_ARM_BOARD_PYTHON") or sys.executable\n'
#: A module TVM runs at every ``import tvm`` on the board (a ``tvm.backends`` entry point): it
#: loads the runtime's extra library, which runtime-only TVM leaves out (random_fill, sort, ...),
#: and answers ``lcpaq.board.emulation`` (lcpaq.backends.common.remote) with what emulates the board.
TVM_PLUGIN = """\"\"\"lcpaq's emulated AArch64 board, registered at `import tvm` (written by lcpaq.tools.arm_board setup).\"\"\"
import ctypes
import os
from pathlib import Path

import tvm_ffi

EXTRA = Path(__file__).parent / "tvm" / "lib" / "libtvm_runtime_extra.so"


def register():
    if EXTRA.exists():
        ctypes.CDLL(str(EXTRA), ctypes.RTLD_LOCAL)
    emulation = "qemu-aarch64 -cpu " + os.environ.get("LCPAQ_ARM_BOARD_CPU", "unknown")
    tvm_ffi.register_global_func("lcpaq.board.emulation", lambda: emulation, override=True)
"""
#: The board's RPC server: TVM's, kept listening when a session's process dies (a kernel that
#: crashes, an instruction the emulated CPU lacks); TVM's own listen loop raises then and stops.
SERVER_MODULE = "lcpaq_board_server"
SERVER = """\"\"\"TVM's RPC server for lcpaq's emulated board (written by lcpaq.tools.arm_board setup).\"\"\"
import logging
import runpy

import tvm.rpc.server as server

_serving = server._serving


def _guarded(*args, **kwargs):
    try:
        _serving(*args, **kwargs)
    except RuntimeError as exc:  # the session's process died: log it, keep serving
        logging.warning("session ended abnormally: %s", exc)


server._serving = _guarded
runpy.run_module("tvm.exec.rpc_server", run_name="__main__", alter_sys=True)
"""
PLUGIN_DIST = {"METADATA": "Metadata-Version: 2.1\nName: lcpaq-arm-board\nVersion: 1.0\n",
               "entry_points.txt": "[tvm.backends]\nlcpaq_arm_board = lcpaq_arm_board:register\n"}


class BoardError(LcpaqError):
    """The emulated ARM board cannot be set up, started or reached; the message says what to do."""


def recipe() -> dict[str, object]:
    """What a board is built from; a board whose stamp records another recipe is rebuilt."""
    return {"format": FORMAT, "suite": SUITE, "apache-tvm": host_version("apache-tvm"),
            "apache-tvm-ffi": host_version("apache-tvm-ffi")}


def host_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return FALLBACK_VERSIONS.get(dist)


def wrapper_text(qemu: str, python: str, cpu: str = DEFAULT_CPU) -> str:
    return WRAPPER.format(rootfs=ROOTFS, qemu=qemu, python=python, cpu=cpu)


def install_command(packages: list[str]) -> str:
    return f"apt-get update && apt-get install -y --no-install-recommends {' '.join(packages)}"


def ensure_host_tools(say: Callable[[str], None]) -> None:
    """Install the missing host tools with apt-get as root; otherwise name the command to run."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise BoardError("the ARM board is built with apt-get and dpkg-deb: it needs a Debian or Ubuntu host")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise BoardError(f"the ARM board needs {', '.join(missing)}: run `sudo sh -c '{install_command(missing)}'`")
    say(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "-q", "update"], "apt-get update", env=env)
    _run(["apt-get", "-q", "install", "-y", "--no-install-recommends", *missing], "apt-get install", env=env)


def debian_mirror(apt_etc: Path = Path("/etc/apt")) -> tuple[str, str | None]:
    """The URI and keyring of the host's main Debian archive (not its security archive), read from
    ``sources.list`` and ``sources.list.d`` (one-line and deb822 formats); ``$LCPAQ_ARM_BOARD_MIRROR``
    overrides it."""
    if os.environ.get("LCPAQ_ARM_BOARD_MIRROR"):
        return os.environ["LCPAQ_ARM_BOARD_MIRROR"].rstrip("/"), None
    for types, uris, suites, components, keyring in _apt_sources(apt_etc):
        if "deb" in types and "main" in components and any("-" not in s for s in suites):
            for uri in uris:
                if "security" not in uri and uri.split(":")[0] in ("http", "https", "file"):
                    return uri.rstrip("/"), keyring
    raise BoardError(f"no Debian archive in {apt_etc}/sources.list(.d): set LCPAQ_ARM_BOARD_MIRROR to a Debian mirror's URL")


def _apt_sources(apt_etc: Path) -> Iterator[tuple[list[str], list[str], list[str], list[str], str | None]]:
    files = [apt_etc / "sources.list", *sorted((apt_etc / "sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".list":
            for line in text.splitlines():
                words = line.split("#")[0].split()
                options: dict[str, str] = {}
                if len(words) > 1 and words[1].startswith("["):
                    end = next(i for i, w in enumerate(words) if w.endswith("]"))
                    options = dict(o.split("=", 1) for o in " ".join(words[1:end + 1]).strip("[]").split() if "=" in o)
                    words = words[:1] + words[end + 1:]
                if len(words) >= 4:
                    yield [words[0]], [words[1]], [words[2]], words[3:], options.get("signed-by")
            continue
        for paragraph in text.split("\n\n"):
            fields: dict[str, str] = {}
            for line in paragraph.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() != "no":
                yield (fields.get("types", "").split(), fields.get("uris", "").split(), fields.get("suites", "").split(),
                       fields.get("components", "").split(), fields.get("signed-by"))


def build_board(board: Path, say: Callable[[str], None]) -> None:
    """Build the board at ``board`` whole, or leave what was there (under a lock, so two setups
    do not interleave); the host tools must be there (:func:`ensure_host_tools`)."""
    board.parent.mkdir(parents=True, exist_ok=True)
    with open(board.parent / f".{board.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in board.parent.glob(f".{board.name}.*.tmp"):  # left by a killed setup
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_directory(board) as tmp, tempfile.TemporaryDirectory(dir=tmp) as work:
            root = tmp / ROOTFS
            debs = _fetch_debs(Path(work), say)
            say(f"unpacking {len(debs)} Debian packages")
            for deb in debs:
                _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}")
            for doc in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
                shutil.rmtree(root / doc, ignore_errors=True)
            python = _board_python(root)
            wheels = _fetch_wheels(Path(work), python.removeprefix("python"), say)
            say(f"installing {len(wheels)} wheels")
            for wheel in wheels:
                _unpack_wheel(wheel, root / SITE)
            (root / SITE / "lcpaq_arm_board.pth").write_text(HOOK)
            (root / SITE / "lcpaq_arm_board.py").write_text(TVM_PLUGIN)
            (root / SITE / f"{SERVER_MODULE}.py").write_text(SERVER)
            (root / SITE / "lcpaq_arm_board-1.0.dist-info").mkdir()
            for name, text in PLUGIN_DIST.items():
                (root / SITE / "lcpaq_arm_board-1.0.dist-info" / name).write_text(text)
            (tmp / "bin").mkdir()
            qemu = shutil.which("qemu-aarch64-static") or "/usr/bin/qemu-aarch64-static"
            (tmp / "bin" / "python").write_text(wrapper_text(os.path.realpath(qemu), python))
            (tmp / "bin" / "python").chmod(0o755)
            _smoke_test(tmp, say)
            stamp = {"recipe": recipe(), "python": python, "qemu": qemu, "debs": sorted(d.name for d in debs),
                     "wheels": sorted(w.name for w in wheels)}
            (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")


def _fetch_debs(work: Path, say: Callable[[str], None]) -> list[Path]:
    """Python and its libraries for arm64, with their dependencies, resolved and downloaded by
    apt from an empty package database (apt's own configuration is only read)."""
    mirror, keyring = debian_mirror()
    apt = work / "apt"
    for sub in ("lists/partial", "archives/partial", "cache", "sources.list.d", "preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    signed = f" signed-by={keyring}" if keyring and Path(keyring).exists() else ""
    (apt / "sources.list").write_text(f"deb [arch=arm64{signed}] {mirror} {SUITE} main\n")
    conf = {"APT::Architecture": "arm64", "Dir::State": apt, "Dir::State::status": apt / "status",
            "Dir::State::Lists": apt / "lists", "Dir::Cache": apt / "cache", "Dir::Cache::archives": apt / "archives",
            "Dir::Etc::SourceList": apt / "sources.list", "Dir::Etc::SourceParts": apt / "sources.list.d",
            "Dir::Etc::Preferences": apt / "preferences", "Dir::Etc::PreferencesParts": apt / "preferences.d",
            "Debug::NoLocking": "true", "Acquire::Languages": "none", "Acquire::Check-Valid-Until": "false",
            "APT::Install-Recommends": "false", "APT::Sandbox::User": "root" if os.geteuid() == 0 else ""}
    lines = [f'{key} "{value}";' for key, value in conf.items() if value != ""]
    (apt / "apt.conf").write_text("\n".join(lines + ['APT::Architectures { "arm64"; };']) + "\n")
    env = {**os.environ, "APT_CONFIG": str(apt / "apt.conf")}
    say(f"downloading arm64 {SUITE} packages from {mirror}")
    _run(["apt-get", "-q", "update"], f"apt-get update (arm64 {SUITE} from {mirror})", env=env)
    _run(["apt-get", "-q", "-y", "install", "--download-only", *DEB_PACKAGES], "apt-get install --download-only", env=env)
    return sorted((apt / "archives").glob("*.deb"))


def _board_python(root: Path) -> str:
    found = sorted(p.name for p in (root / "usr/bin").glob("python3.*") if p.name[len("python3."):].isdigit())
    if not found:
        raise BoardError(f"the arm64 {SUITE} packages brought no python3.X into {root}/usr/bin")
    return found[-1]


def _fetch_wheels(work: Path, python_version: str, say: Callable[[str], None]) -> list[Path]:
    """The board's wheels for aarch64 (manylinux up to the board's glibc), at the host's versions."""
    specs = [f"{name}=={v}" if (v := host_version(name)) else name for name in WHEELS]
    platforms = [f"manylinux_2_{minor}_aarch64" for minor in range(GLIBC_MINOR, 16, -1)] + ["manylinux2014_aarch64"]
    say(f"downloading aarch64 wheels: {' '.join(specs)}")
    _run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
          "--only-binary=:all:", "--python-version", python_version, *(f"--platform={p}" for p in platforms),
          "-d", str(work / "wheels"), *specs], "pip download (aarch64 wheels)")
    return sorted((work / "wheels").glob("*.whl"))


def _unpack_wheel(wheel: Path, site: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site, [m for m in archive.namelist() if not m.startswith(SKIPPED_MEMBERS)])


def _smoke_test(board: Path, say: Callable[[str], None]) -> None:
    say("checking the board's python under qemu")
    probe = ("import platform, sys, tvm; print(platform.machine(), tvm.__version__, "
             "tvm.get_global_func('tvm.contrib.random.random_fill', allow_missing=True) is not None, sys.executable)")
    out = _run([str(board / "bin" / "python"), "-c", probe], "the board's python").split()
    if out[:1] != ["aarch64"] or out[2:] != ["True", str(board / "bin" / "python")]:
        raise BoardError(f"the board's python is not set up right: it printed {' '.join(out)!r}")


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run ``cmd``; its stdout, or BoardError with the last line it printed."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("E:", "ERROR", "error"))]
        raise BoardError(f"{what} failed (exit {proc.returncode}): {(errors or lines or ['no output'])[-1]}")
    return proc.stdout
