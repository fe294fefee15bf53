"""Boards over TVM RPC, through a device farm's tracker: a tracker and an RPC server of this
machine registered under a key stand in for a farm and its board; a target whose device is
``rpc`` builds, runs bit-exact and times there, reached by ``--tracker``/``--key``."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from lcpaq.backends.common.build import build_model
from lcpaq.backends.common.measure import measure_latency
from lcpaq.backends.common.remote import connect, release
from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.remote import RemoteDevice
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.metrics import first_output
from tests.backends._nets import TinyResNet, quantized

KEY = "lcpaq-test-board"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_key(tracker: str, deadline_s: float = 60) -> None:
    from tvm import rpc

    host, port = tracker.split(":")
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if KEY in rpc.connect_tracker(host, int(port)).text_summary():
                return
        except Exception:  # noqa: BLE001 (the tracker is still starting)
            pass
        time.sleep(0.5)
    raise TimeoutError(f"no board registered under {KEY!r} at {tracker}")


@pytest.fixture(scope="module")
def farm() -> Iterator[str]:
    """``HOST:PORT`` of a TVM tracker with one x86 RPC server of this machine under :data:`KEY`."""
    pytest.importorskip("tornado", reason="TVM's tracker needs tornado (the test extra installs it)")
    port = _free_port()
    tracker = f"127.0.0.1:{port}"
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                               "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1.0)
        server_port = _free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
                                       "--port-end", str(server_port + 1), "--tracker", tracker, "--key", KEY],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_key(tracker)
        yield tracker
    finally:
        release(RemoteDevice(tracker=tracker, key=KEY))
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_board_of_a_tracker_builds_runs_bit_exact_and_is_timed(farm: str, tmp_path: Path) -> None:
    toml = tmp_path / "x86-board.toml"
    toml.write_text(Path(load_target("x86-host").source).read_text().replace('kind = "local"', 'kind = "rpc"'))
    target = load_target(str(toml)).reached_over(RemoteDevice(tracker=farm, key=KEY))
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    gm = quantized(TinyResNet().eval(), x)
    built = build_model(gm, (x[:1],), target)
    assert built.device.remote is not None and built.device.emulation is None  # same architecture: a real machine
    with torch.no_grad():
        assert np.array_equal(built.run(x[:1]), first_output(built.integer_graph(x[:1])).numpy())
    assert measure_latency(built, [x[:1]], repeats=2, number=1).median > 0


def test_an_unknown_key_or_tracker_is_one_line(farm: str) -> None:
    with pytest.raises(ConfigError, match=r"cannot reach the key 'no-such-board' of tracker|did not answer within 3 s"):
        connect(RemoteDevice(tracker=farm, key="no-such-board"), timeout_s=3)
    with pytest.raises(ConfigError, match=r"cannot reach the key 'k' of tracker 127.0.0.1:1: Connection refused \(an emulated"):
        connect(RemoteDevice(tracker="127.0.0.1:1", key="k"))
