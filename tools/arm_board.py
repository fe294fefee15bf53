"""The emulated AArch64 development board: a TVM RPC server on 127.0.0.1 that runs under qemu-user,
so the ARM backend can run its cross-compiled libraries on this x86 host.

    python -m lcpaq.tools.arm_board setup|start|stop|status [--port P] [--cpu cortex-a76]
                                                             [--tracker HOST:PORT --key NAME]

``make arm-board`` sets it up (once: it is kept in ``$LCPAQ_ARM_BOARD_DIR``, by default
``~/.cache/lcpaq/arm-board``) and starts it; ``make arm-board-stop`` stops it. Code and tests find
it with :func:`running_address` and :func:`ensure_running`. The board is built by
:mod:`lcpaq.tools.arm_board_setup`.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from lcpaq.ir.errors import LcpaqError
from lcpaq.tools.arm_board_setup import (DEFAULT_CPU, ROOTFS, SERVER_MODULE, STAMP, BoardError, build_board,
                                         ensure_host_tools, install_command, recipe)

HOST = "127.0.0.1"
PORTS = range(9090, 9200)  # the first free one is taken when no --port is given
SERVER_STATE = "server.json"
SERVER_LOG = "server.log"
START_TIMEOUT_S = 300.0
NOT_SET_UP = "the emulated ARM board is not set up: run `make arm-board`"
_children: dict[int, subprocess.Popen] = {}  # servers this process started (reaped when stopped)


def board_dir() -> Path:
    """``$LCPAQ_ARM_BOARD_DIR``, else ``~/.cache/lcpaq/arm-board`` (not the per-session
    ``$LCPAQ_CACHE_DIR`` of the tests: the board is built once per user)."""
    return Path(os.path.realpath(os.environ.get("LCPAQ_ARM_BOARD_DIR") or Path.home() / ".cache" / "lcpaq" / "arm-board"))


def is_set_up() -> bool:
    """Whether a complete board for this host's TVM is there."""
    try:
        stamp = json.loads((board_dir() / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("recipe") == recipe()


def setup(say: Callable[[str], None] = print) -> Path:
    """Install the missing host tools (as root) and build the board unless it is there."""
    ensure_host_tools(say)
    board = board_dir()
    if is_set_up():
        say(f"the ARM board is set up at {board}")
        return board
    if running_address() is not None:
        raise BoardError("an out-of-date ARM board is running: stop it first (`make arm-board-stop`)")
    start = time.monotonic()
    say(f"building the ARM board at {board}")
    build_board(board, say)
    say(f"the ARM board is set up at {board} ({_size_mib(board):.0f} MiB, {time.monotonic() - start:.0f} s)")
    return board


def running_address() -> str | None:
    """``127.0.0.1:PORT`` of the board's RPC server if it runs, else None."""
    state = _server_state()
    return f"{HOST}:{state['port']}" if state else None


def ensure_running(port: int | None = None, cpu: str = DEFAULT_CPU) -> str:
    """The address of the running board, started first if needed (it must be set up)."""
    return start(port, cpu, say=lambda line: None)


def start(port: int | None = None, cpu: str = DEFAULT_CPU, tracker: str | None = None, key: str = "",
          say: Callable[[str], None] = print, timeout: float = START_TIMEOUT_S) -> str:
    """Start the board's RPC server in the background and wait until it serves; its address."""
    tracker_addr = _tracker_address(tracker, key)
    if not is_set_up():
        raise BoardError(NOT_SET_UP)
    board = board_dir()
    _check_cpu(json.loads((board / STAMP).read_text())["qemu"], cpu)
    state = _server_state()
    if state:
        say(f"the ARM board is already running (pid {state['pid']}, cpu {state['cpu']})")
        return f"{HOST}:{state['port']}"
    port = port if port is not None else next((p for p in PORTS if _port_free(p)), None)
    if port is None or not _port_free(port):
        raise BoardError(f"port {port} on {HOST} is in use: pick another with --port" if port else
                         f"no free port in {PORTS.start}..{PORTS.stop - 1} on {HOST}: pick one with --port")
    cmd = [str(board / "bin" / "python"), "-m", SERVER_MODULE, "--host", HOST, "--port", str(port),
           "--port-end", str(port + 1)]
    cmd += ["--tracker", tracker, "--key", key] if tracker else (["--key", key] if key else [])
    log = board / SERVER_LOG
    say(f"starting the ARM board's RPC server on {HOST}:{port} (qemu -cpu {cpu}; log: {log})")
    with open(log, "wb") as out:  # this run's log only
        proc = subprocess.Popen(cmd, cwd=board, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "LCPAQ_ARM_BOARD_CPU": cpu})
    _children[proc.pid] = proc
    state = {"pid": proc.pid, "port": port, "cpu": cpu, "tracker": tracker, "key": key}
    (board / SERVER_STATE).write_text(json.dumps(state) + "\n")
    deadline = time.monotonic() + timeout
    try:
        while not _serves(port, tracker_addr, key):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exited with code {proc.returncode}" if proc.returncode is not None else f"did not serve in {timeout:.0f} s"
                raise BoardError(f"the ARM board's RPC server {why}: {_last_line(log)} (log: {log})")
            time.sleep(0.5)
    except BaseException:  # an interrupt too: no server is left behind half started
        stop(say)
        raise
    return f"{HOST}:{port}"


def stop(say: Callable[[str], None] = print) -> bool:
    """Stop the board's RPC server and its workers; whether one was running."""
    state = _server_state()
    (board_dir() / SERVER_STATE).unlink(missing_ok=True)
    if state is None:
        say("the ARM board is not running")
        return False
    pid = state["pid"]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)  # the server leads its own process group (its workers are in it)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            if pid in _children:
                _children[pid].poll()
            time.sleep(0.1)
    if pid in _children:
        _children.pop(pid).wait()
    say(f"stopped the ARM board (pid {pid})")
    return True


@contextmanager
def board_for_session() -> Iterator[str | None]:
    """For a test session: the running board's address (started if needed, then stopped at the
    end if it was started here), or None if no board is set up."""
    if not is_set_up():
        yield None
        return
    address = running_address()
    if address is not None:
        yield address
        return
    address = ensure_running()
    try:
        yield address
    finally:
        stop(say=lambda line: None)


def _server_state() -> dict | None:
    try:
        state = json.loads((board_dir() / SERVER_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if _alive(state.get("pid")) else None


def _alive(pid: object) -> bool:
    """Whether ``pid`` is a live (not zombie) process of this board's emulated python."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return status != "Z" and str(board_dir() / ROOTFS).encode() in cmdline


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _tracker_address(tracker: str | None, key: str) -> tuple[str, int] | None:
    if not tracker:
        return None
    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit():
        raise BoardError(f"--tracker {tracker!r} is not HOST:PORT")
    if not key:
        raise BoardError("--tracker needs --key NAME (the key the board registers under)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise BoardError(f"cannot reach the RPC tracker at {tracker}: {exc.strerror or exc}") from exc
    return host, int(port)


def _check_cpu(qemu: str, cpu: str) -> None:
    if not os.path.exists(qemu):
        raise BoardError(f"{qemu} is missing: run `sudo sh -c '{install_command(['qemu-user-static'])}'`")
    listing = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True).stdout.split()
    cpus = listing[listing.index("CPUs:") + 1:] if "CPUs:" in listing else listing
    if cpu not in cpus:
        raise BoardError(f"--cpu {cpu!r} is not a CPU qemu emulates; one of: {', '.join(cpus)}")


def _serves(port: int, tracker: tuple[str, int] | None, key: str) -> bool:
    """Whether an RPC session opens (through the tracker when the board registers with one) and
    sees the board's CPU device."""
    from tvm import rpc  # noqa: PLC0415 (TVM takes seconds to import; only start needs it)

    try:
        if tracker is None:
            session = rpc.connect(HOST, port, key=key, session_timeout=60)
        else:
            client = rpc.connect_tracker(*tracker)
            if client.summary().get("queue_info", {}).get(key, {}).get("free", 0) == 0:
                return False
            session = client.request(key, session_timeout=60, max_retry=1)
        return bool(session.cpu(0).exist)
    except Exception:  # noqa: BLE001 (not serving yet: the caller retries until its deadline)
        return False


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _size_mib(path: Path) -> float:
    return sum(p.lstat().st_size for p in path.rglob("*")) / 2**20


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lcpaq.tools.arm_board", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("setup", "start", "stop", "status"))
    parser.add_argument("--port", type=int, help=f"RPC port on {HOST} (default: the first free one from {PORTS.start})")
    parser.add_argument("--cpu", default=DEFAULT_CPU, help=f"the CPU qemu emulates (default {DEFAULT_CPU})")
    parser.add_argument("--tracker", help="HOST:PORT of a TVM RPC tracker to register with")
    parser.add_argument("--key", default="", help="the key to register under (with --tracker)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.port is not None and not 0 < args.port < 65535:
            raise BoardError(f"--port {args.port} is not a port number")
        if args.command == "setup":
            setup()
        elif args.command == "start":
            print(start(args.port, args.cpu, args.tracker, args.key))
        elif args.command == "stop":
            stop()
        else:
            _status()
        return 0
    except LcpaqError as exc:
        print(f"arm-board: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("arm-board: interrupted", file=sys.stderr)
        return 130


def _status() -> None:
    board = board_dir()
    print(f"board: {board} ({'set up' if is_set_up() else 'not set up: run `make arm-board`'})")
    state = _server_state()
    if state is None:
        print("server: not running")
        return
    tracker = f", registered with the tracker at {state['tracker']} as {state['key']!r}" if state.get("tracker") else ""
    print(f"server: running (pid {state['pid']}, cpu {state['cpu']}{tracker}, log {board / SERVER_LOG})")
    print(f"{HOST}:{state['port']}")


if __name__ == "__main__":
    sys.exit(main())
