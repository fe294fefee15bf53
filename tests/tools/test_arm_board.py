"""The emulated AArch64 board (lcpaq.tools.arm_board): paths, the files setup writes, arguments and
errors, without a board; and, on the board (`make arm-board`), a cross-compiled function over RPC."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lcpaq.tools import arm_board, arm_board_setup
from lcpaq.tools.arm_board_setup import HOOK, PLUGIN_DIST, TVM_PLUGIN, BoardError, recipe, wrapper_text

@pytest.fixture
def empty_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LCPAQ_ARM_BOARD_DIR", str(tmp_path / "board"))
    return tmp_path / "board"


def test_board_dir_is_the_user_cache_not_the_session_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LCPAQ_ARM_BOARD_DIR", str(tmp_path / "elsewhere"))
    assert arm_board.board_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("LCPAQ_ARM_BOARD_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert arm_board.board_dir() == tmp_path / ".cache" / "lcpaq" / "arm-board"
    assert os.environ["LCPAQ_CACHE_DIR"] not in str(arm_board.board_dir())


def test_set_up_only_with_a_stamp_of_this_hosts_tvm(empty_board: Path) -> None:
    assert not arm_board.is_set_up()
    empty_board.mkdir()
    (empty_board / "board.json").write_text("{not json")
    assert not arm_board.is_set_up()
    (empty_board / "board.json").write_text(json.dumps({"recipe": {**recipe(), "apache-tvm": "0.1"}}))
    assert not arm_board.is_set_up()
    (empty_board / "board.json").write_text(json.dumps({"recipe": recipe()}))
    assert arm_board.is_set_up()


def test_wrapper_runs_the_boards_python_under_qemu_from_wherever_the_board_is(tmp_path: Path) -> None:
    fake_qemu = tmp_path / "qemu"
    fake_qemu.write_text('#!/bin/sh\necho "$@"\necho "$LCPAQ_ARM_BOARD_PYTHON|$PYTHONPATH|$TVM_USE_RUNTIME_LIB"\n')
    fake_qemu.chmod(0o755)
    board = tmp_path / "board"
    (board / "bin").mkdir(parents=True)
    (board / "bin" / "python").write_text(wrapper_text(str(fake_qemu), "python3.11"))
    (board / "bin" / "python").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": "/host/site"}
    env.pop("LCPAQ_ARM_BOARD_CPU", None)
    args, exported = subprocess.run([board / "bin" / "python", "-c", "pass"], capture_output=True, text=True, env=env,
                                    check=True).stdout.splitlines()
    assert args == f"-L {board}/rootfs -cpu cortex-a76 {board}/rootfs/usr/bin/python3.11 -c pass"
    assert exported == f"{board}/bin/python||1"
    moved = tmp_path / "moved"
    board.rename(moved)
    env["LCPAQ_ARM_BOARD_CPU"] = "max"
    args = subprocess.run([moved / "bin" / "python"], capture_output=True, text=True, env=env, check=True).stdout
    assert args.splitlines()[0] == f"-L {moved}/rootfs -cpu max {moved}/rootfs/usr/bin/python3.11"


def test_hook_makes_the_wrapper_every_board_pythons_executable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/board/rootfs/usr/bin/python3.11")
    monkeypatch.delenv("LCPAQ_ARM_BOARD_PYTHON", raising=False)
    exec(HOOK)  # noqa: S102 (what site.py does with the .pth line)
    assert sys.executable == "/board/rootfs/usr/bin/python3.11"
    monkeypatch.setenv("LCPAQ_ARM_BOARD_PYTHON", "/board/bin/python")
    exec(HOOK)  # noqa: S102
    assert sys.executable == "/board/bin/python"


def test_tvm_plugin_is_the_entry_point_it_declares() -> None:
    functions = {node.name for node in ast.parse(TVM_PLUGIN).body if isinstance(node, ast.FunctionDef)}
    entry = PLUGIN_DIST["entry_points.txt"].splitlines()
    assert entry[0] == "[tvm.backends]"
    module, function = entry[1].split(" = ")[1].split(":")
    assert module == "lcpaq_arm_board" and function in functions


def test_debian_mirror_is_the_hosts_main_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LCPAQ_ARM_BOARD_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("# deb http://old.example/debian bookworm main\n"
                                           "deb http://sec.example/debian-security bookworm-security main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\nSigned-By: /keys/debian.gpg\n")
    assert arm_board_setup.debian_mirror(tmp_path) == ("http://mirror.example/debian", "/keys/debian.gpg")
    (tmp_path / "sources.list").write_text("deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm main\n")
    assert arm_board_setup.debian_mirror(tmp_path) == ("http://one.example/debian", "/k.gpg")
    monkeypatch.setenv("LCPAQ_ARM_BOARD_MIRROR", "http://env.example/debian/")
    assert arm_board_setup.debian_mirror(tmp_path) == ("http://env.example/debian", None)
    monkeypatch.delenv("LCPAQ_ARM_BOARD_MIRROR")
    with pytest.raises(BoardError, match="LCPAQ_ARM_BOARD_MIRROR"):
        arm_board_setup.debian_mirror(tmp_path / "nothing")


def test_missing_host_tools_name_the_apt_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arm_board_setup.shutil, "which", lambda tool: None if tool.startswith("qemu") else f"/usr/bin/{tool}")
    monkeypatch.setattr(arm_board_setup.os, "geteuid", lambda: 1000)
    with pytest.raises(BoardError, match=r"apt-get install -y --no-install-recommends qemu-user-static'`$"):
        arm_board_setup.ensure_host_tools(print)


@pytest.mark.parametrize("argv, message", [
    (["start", "--tracker", "nohost"], "--tracker 'nohost' is not HOST:PORT"),
    (["start", "--tracker", "127.0.0.1:9190"], "--tracker needs --key NAME"),
    (["start", "--port", "0"], "--port 0 is not a port number"),
    (["start"], "not set up: run `make arm-board`"),
])
def test_cli_errors_are_one_line_and_exit_2(argv: list[str], message: str, empty_board: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert arm_board.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("arm-board: error: ") and message in err


def test_without_a_board_status_and_stop_say_so(empty_board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert arm_board.main(["status"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"board: {empty_board} (not set up: run `make arm-board`)",
                                                    "server: not running"]
    assert arm_board.main(["stop"]) == 0
    assert "not running" in capsys.readouterr().out
    assert arm_board.running_address() is None
    with pytest.raises(BoardError, match="make arm-board"):
        arm_board.ensure_running()


def test_a_server_file_of_another_process_is_not_a_running_board(empty_board: Path) -> None:
    empty_board.mkdir()
    (empty_board / "server.json").write_text(json.dumps({"pid": os.getpid(), "port": 9090, "cpu": "max"}))
    assert arm_board.running_address() is None


def test_interrupted_setup_leaves_what_was_there(empty_board: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_board.mkdir()
    (empty_board / "old").write_text("kept")

    def interrupted(work: Path, say: object) -> list[Path]:
        raise KeyboardInterrupt

    monkeypatch.setattr(arm_board_setup, "ensure_host_tools", lambda say: None)
    monkeypatch.setattr(arm_board_setup, "_fetch_debs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        arm_board.setup(say=lambda line: None)
    assert sorted(p.name for p in empty_board.iterdir()) == ["old"]
    assert sorted(p.name for p in empty_board.parent.iterdir() if p.name != ".board.lock") == ["board"]


def test_a_cross_compiled_function_runs_on_the_board(arm_board: str) -> None:
    import tvm
    from tvm import te

    from lcpaq.backends.common.remote import board_device
    from lcpaq.hw_targets.remote import RemoteDevice
    from tvm.support import cc

    n = 64
    a, b = te.placeholder((n,), "int8", "a"), te.placeholder((n,), "int8", "b")
    add = te.create_prim_func([a, b, te.compute((n,), lambda i: a[i] + b[i], "c")])
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]})
    library = Path(os.environ["LCPAQ_CACHE_DIR"]) / "arm_board_add.so"
    tvm.compile(add, target=target).export_library(str(library), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))
    session = board_device(RemoteDevice(rpc=arm_board), "aarch64").remote  # the process's one session to the board
    assert session.get_function("lcpaq.board.emulation")().startswith("qemu-aarch64 -cpu ")
    session.upload(str(library))
    module, device = session.load_module(library.name), session.cpu(0)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(-64, 64, n).astype("int8") for _ in range(2))
    out = tvm.runtime.tensor(np.zeros(n, "int8"), device)
    module["main"](tvm.runtime.tensor(x, device), tvm.runtime.tensor(y, device), out)
    np.testing.assert_array_equal(out.numpy(), x + y)
