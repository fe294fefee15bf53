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
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from lcpaq.hw_targets.remote import RemoteDevice
from lcpaq.ir.errors import ConfigError

#: Global function an emulated board's RPC server registers; it returns what emulates it.
EMULATION_FUNC = "lcpaq.board.emulation"
#: Seconds to wait for a board's server to take the session; an RPC session's limit (0: none).
CONNECT_TIMEOUT_S = 120
SESSION_TIMEOUT_S = 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def connect(remote: RemoteDevice, timeout_s: float | None = None) -> Any:
    """An RPC session on ``remote`` (one line naming the address on failure). A board's server
    serves one session at a time: one held elsewhere makes this wait, at most ``timeout_s``
    (default ``$LCPAQ_RPC_TIMEOUT`` or :data:`CONNECT_TIMEOUT_S`), then it is an error."""
    from tvm import rpc

    host, port = remote.address
    timeout_s = float(os.environ.get("LCPAQ_RPC_TIMEOUT", CONNECT_TIMEOUT_S)) if timeout_s is None else timeout_s
    hint = " (an emulated board on this machine: `make arm-board`)" if _loopback(host) else ""
    try:  # nothing listening is said at once (TVM's own clients retry for a minute)
        socket.create_connection((host, port), timeout=min(timeout_s, 10)).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the {remote}: {exc.strerror or exc}{hint}") from exc
    result: dict[str, Any] = {}

    def attempt() -> None:
        try:
            if remote.rpc:
                result["session"] = rpc.connect(host, port, session_timeout=SESSION_TIMEOUT_S)
            else:
                tracker = rpc.connect_tracker(host, port)
                result["session"] = tracker.request(remote.key, session_timeout=SESSION_TIMEOUT_S, max_retry=2)
        except Exception as exc:  # noqa: BLE001 (TVM raises RuntimeError, TVMError, socket errors)
            result["error"] = exc

    worker = threading.Thread(target=attempt, daemon=True)  # TVM's handshake has no timeout of its own
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ConfigError(f"the {remote} did not answer within {timeout_s:.0f} s: a board serves one session at a "
                          f"time; is another program using it?{hint}")
    if "error" in result:
        exc = result["error"]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot reach the {remote}: {first[:200]}{hint}") from exc
    return result["session"]


_SESSIONS: dict[RemoteDevice, Any] = {}


def board_device(remote: RemoteDevice, arch: str) -> Any:
    """The :class:`~lcpaq.backends.common.backend.Device` of ``remote`` (a board of
    architecture ``arch``): one session per board for the whole process (a board serves one
    session at a time, so a second one would wait for the first to close), connected on first use."""
    from lcpaq.backends.common.backend import Device

    device = _SESSIONS.get(remote)
    if device is None:
        session = connect(remote)
        device = _SESSIONS[remote] = Device(session.cpu(0), session, emulation(remote, session, arch))
    return device


def release(remote: RemoteDevice) -> None:
    """Close this process's session to ``remote`` (the next use connects again)."""
    _SESSIONS.pop(remote, None)


def died(device: Any, exc: BaseException) -> ConfigError | None:
    """The one-line error for ``exc`` when it says the board's session process died (a crash,
    or an instruction its CPU lacks: SIGILL); that session is forgotten. None for other errors."""
    if "kShutdown" not in str(exc) and "Broken pipe" not in str(exc):
        return None
    for remote, held in list(_SESSIONS.items()):
        if held is device:
            del _SESSIONS[remote]
    return ConfigError("the board's process died running the model: a crash, or an instruction its CPU lacks "
                       "(SIGILL: do the target's mattr, e.g. +dotprod, match the board's CPU?); the board's server log says which")


def emulation(remote: RemoteDevice, session: Any, arch: str) -> str | None:
    """What emulates the board (e.g. ``qemu-aarch64 -cpu cortex-a76``), None for real hardware.

    Asked of the board first (:data:`EMULATION_FUNC`); a board of another architecture
    (``arch``, the target's: ``aarch64``) on this machine's loopback is emulated whatever it says."""
    try:
        what = session.get_function(EMULATION_FUNC)()
        if what:
            return str(what)
    except Exception:  # noqa: BLE001 (not registered: a real board's plain TVM server)
        pass
    here = platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")
    if remote.rpc and _loopback(remote.address[0]) and arch != here:
        return f"emulated on this {platform.machine()} machine"
    return None


def load_remote(session: Any, executable: Any, export: Callable[[Any, str], None]) -> Any:
    """``executable`` exported (by the backend's ``export``) into a temporary library, uploaded
    to the board and loaded there: the remote module."""
    with tempfile.TemporaryDirectory(prefix="lcpaq-rpc-") as tmp:
        # a fresh name each time: the board keeps what it loaded mapped, and a library written
        # over one it has loaded crashes it
        path = Path(tmp) / f"lcpaq_{uuid.uuid4().hex}.so"
        export(executable, str(path))
        session.upload(str(path))
        return session.load_module(path.name)
