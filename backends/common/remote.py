"""Reaching a board over TVM RPC: connect to a server or through a tracker, tell whether the
board is emulated, and load a built library there.

A board started by ``make arm-board`` runs under qemu-user on this machine; its timings say
nothing about a real board's speed. :func:`emulation` tells so: the board's server answers the
global function :data:`EMULATION_FUNC` with what emulates it, and any board on this machine's
loopback whose architecture is not this machine's is emulated by definition.
"""
from __future__ import annotations

import ipaddress
import os
import platform
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

from lcpaq.hw_targets.remote import RemoteDevice
from lcpaq.ir.errors import ConfigError

#: Global function an emulated board's RPC server registers; it returns what emulates it.
EMULATION_FUNC = "lcpaq.board.emulation"
#: Seconds a tracker may take to hand out a board; an RPC session's idle limit.
REQUEST_TIMEOUT_S = 120
SESSION_TIMEOUT_S = 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def connect(remote: RemoteDevice) -> Any:
    """An RPC session on ``remote`` (one line naming the address on failure)."""
    from tvm import rpc

    host, port = remote.address
    try:
        if remote.rpc:
            return rpc.connect(host, port, session_timeout=SESSION_TIMEOUT_S)
        tracker = rpc.connect_tracker(host, port)
        return tracker.request(remote.key, session_timeout=SESSION_TIMEOUT_S, max_retry=2)
    except Exception as exc:  # noqa: BLE001 (TVM raises RuntimeError, TVMError, socket errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = " (an emulated board on this machine: `make arm-board`)" if _loopback(host) else ""
        raise ConfigError(f"cannot reach the {remote}: {first[:200]}{hint}") from exc


def emulation(remote: RemoteDevice, session: Any, arch: str = "aarch64") -> str | None:
    """What emulates the board (e.g. ``qemu-aarch64 -cpu cortex-a76``), None for real hardware.

    Asked of the board first (:data:`EMULATION_FUNC`); a board of another architecture on this
    machine's loopback is emulated whatever it says."""
    try:
        what = session.get_function(EMULATION_FUNC)()
        if what:
            return str(what)
    except Exception:  # noqa: BLE001 (not registered: a real board's plain TVM server)
        pass
    if remote.rpc and _loopback(remote.address[0]) and platform.machine().lower() not in (arch, "arm64"):
        return f"emulated on this {platform.machine()} machine"
    return None


def load_remote(session: Any, executable: Any, export: Callable[[Any, str], None]) -> Any:
    """``executable`` exported (by the backend's ``export``) into a temporary library, uploaded
    to the board and loaded there: the remote module."""
    with tempfile.TemporaryDirectory(prefix="lcpaq-rpc-") as tmp:
        path = Path(tmp) / f"lcpaq_{os.getpid()}_{id(executable)}.so"
        export(executable, str(path))
        session.upload(str(path))
        return session.load_module(path.name)
