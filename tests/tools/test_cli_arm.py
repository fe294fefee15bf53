"""`lcpaq build`, `quantize` and `profile` on the ARM target (arm-a76, backend arm-dotprod), end to
end through :func:`lcpaq.tools.cli.main`: cross-compiled here into an AArch64 library, run on a
board over TVM RPC (the emulated board of `make arm-board`: the ``arm_board`` fixture), its timings
marked emulated and never taken as predictions; every misuse of --rpc/--tracker/--key, an
unreachable board and an emulated profile are one line, exit 2, and write nothing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lcpaq.tools.cli import main

MODEL = "resnet-digits"
TARGET = "arm-a76"
EM_AARCH64 = 183  # ELF e_machine of AArch64
NOWHERE = "127.0.0.1:1"  # nothing listens on port 1
#: The quantizable layers of resnet-digits, for a hand-written arm-a76 latency table (profiling
#: the emulated board is refused, so no test can measure one).
DIGITS_LAYERS = ("conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.downsample.0", "layer2.0.conv1",
                 "layer2.0.conv2", "layer3.0.downsample.0", "layer3.0.conv1", "layer3.0.conv2", "fc")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def _elf_machine(path: Path) -> int:
    """e_machine of a 64-bit little-endian ELF file (fails on anything else)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert header[4] == 2 and header[5] == 1, "not a 64-bit little-endian ELF"
    return int.from_bytes(header[18:20], "little")


def _assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (code, out, err)
    assert err.startswith("lcpaq: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_build_without_a_board_writes_an_aarch64_library_not_run(capsys, tmp_path) -> None:
    lib = tmp_path / "digits.so"
    code, out, err = _run(capsys, "build", "--model", MODEL, "--target", TARGET, "-o", str(lib), "--seed", "0")
    assert code == 0 and err == "", err
    assert _elf_machine(lib) == EM_AARCH64
    assert "W8A8" in out and "built, not run" in out and "give --rpc HOST:PORT" in out
    assert f"wrote {lib} (input float32 1x1x8x8; on the board (aarch64-linux-gnu)" in out


def test_build_on_the_board_is_bit_exact_and_marked_emulated(capsys, tmp_path, arm_board) -> None:
    lib = tmp_path / "digits.so"
    code, out, err = _run(capsys, "build", "--model", MODEL, "--target", TARGET, "-o", str(lib), "--seed", "0",
                          "--rpc", arm_board)
    assert code == 0 and err == "", err
    assert _elf_machine(lib) == EM_AARCH64
    line = next(line for line in out.splitlines() if "W8A8" in line)
    assert "ms measured on an emulated board (EMULATED: qemu-aarch64" in line and "not the board's speed" in line
    assert "bit-exact vs integer reference" in line and "built, not run" not in out
    assert "predicted" not in line
    assert f"wrote {lib}" in out


def test_quantize_on_the_board_reports_emulated_timings_and_no_prediction(capsys, tmp_path, arm_board) -> None:
    table = tmp_path / "arm-table.json"  # a table, so that only the emulation keeps a prediction out
    table.write_text(json.dumps({
        "schema": 1, "target": TARGET, "device": "a hand-written table", "tvm_version": "0.27.0", "date": "2026-01-01",
        "trials": 0, "model": MODEL, "fixed_seconds": 0.0, "notes": [],
        "layers": {name: {"fp32": 2e-4, "w8a8": 1e-4} for name in DIGITS_LAYERS},
    }))
    out_dir = tmp_path / "report"
    code, out, err = _run(capsys, "quantize", "--model", MODEL, "--target", TARGET, "--budget", "size=0.3x",
                          "--latency-table", str(table), "--rpc", arm_board, "--out", str(out_dir), "--seed", "0")
    assert code == 0 and err == "", err
    assert "EMULATED: qemu-aarch64" in out and "bit-exact vs integer reference" in out
    report = json.loads((out_dir / "report.json").read_text())
    assert report["target"] == TARGET
    (label, entry), = report["deployment"].items()
    assert label.startswith("ILP(size=0.3x")
    assert entry["built"] is True and entry["ran"] is True
    assert entry["bit_exact_vs_integer_reference"] is True and entry["max_diff_vs_integer_reference"] == 0.0
    assert isinstance(entry["emulation"], str) and entry["emulation"].startswith("qemu-aarch64")
    assert entry["latency_ms"] > 0
    assert not {"predicted_ms", "measured_over_predicted", "predicted_reason"} & entry.keys()  # an emulator predicts nothing
    md = (out_dir / "report.md").read_text()
    assert f"{entry['latency_ms']:.3f} (emulated)" in md
    assert f"Timings marked emulated ran on {entry['emulation']}" in md


def _command(command: str, tmp_path: Path, target: str = TARGET) -> tuple[list[str], Path]:
    """argv of ``command`` for ``target`` writing under ``tmp_path / "out"``, and that path."""
    out = tmp_path / "out"
    if command == "quantize":
        return ["quantize", "--model", MODEL, "--target", target, "--out", str(out)], out
    if command == "build":
        return ["build", "--model", MODEL, "--target", target, "-o", str(out)], out
    return ["profile", "--model", MODEL, "--target", target, "--out", str(out)], out


@pytest.mark.parametrize("command", ["quantize", "build", "profile"])
@pytest.mark.parametrize(("target", "options", "message"), [
    (TARGET, ["--rpc", "127.0.0.1"], "--rpc takes HOST:PORT (e.g. 127.0.0.1:9090), got '127.0.0.1'"),
    (TARGET, ["--tracker", "127.0.0.1", "--key", "K"], "--tracker takes HOST:PORT (e.g. 127.0.0.1:9090), got '127.0.0.1'"),
    (TARGET, ["--key", "K"], "--key needs --tracker HOST:PORT"),
    (TARGET, ["--tracker", "127.0.0.1:9190"], "--tracker needs --key NAME"),
    (TARGET, ["--rpc", "127.0.0.1:9090", "--tracker", "127.0.0.1:9190", "--key", "K"],
     "give either --rpc HOST:PORT or --tracker HOST:PORT --key NAME, not both"),
    ("x86-host", ["--rpc", "127.0.0.1:9090"],
     "target 'x86-host' runs on this machine; --rpc and --tracker are for targets reached over RPC"),
], ids=["rpc-without-port", "tracker-without-port", "key-without-tracker", "tracker-without-key", "rpc-and-tracker",
        "rpc-for-a-local-target"])
def test_bad_board_options_are_one_line_and_write_nothing(capsys, tmp_path, command, target, options, message) -> None:
    argv, out = _command(command, tmp_path, target)
    _assert_one_line_error(*_run(capsys, *argv, *options), message)
    assert not out.exists()


@pytest.mark.parametrize("command", ["build", "profile"])
def test_an_unreachable_board_is_one_line_naming_it(capsys, tmp_path, command) -> None:
    argv, out = _command(command, tmp_path)
    _assert_one_line_error(*_run(capsys, *argv, "--rpc", NOWHERE), f"cannot reach the RPC server {NOWHERE}", "`make arm-board`")
    assert not out.exists()


def test_quantize_with_an_unreachable_board_is_one_line_naming_it(capsys, tmp_path) -> None:
    """The board was asked for and does not answer: as build and profile, not a report of a
    configuration that could not be built."""
    argv, out = _command("quantize", tmp_path)
    _assert_one_line_error(*_run(capsys, *argv, "--rpc", NOWHERE), f"cannot reach the RPC server {NOWHERE}", "`make arm-board`")
    assert not out.exists()


def test_profile_without_a_board_says_give_rpc(capsys, tmp_path) -> None:
    argv, out = _command("profile", tmp_path)
    _assert_one_line_error(*_run(capsys, *argv), f"target '{TARGET}' runs on a board reached over RPC: give --rpc HOST:PORT",
                           "`make arm-board`")
    assert not out.exists()


def test_profile_on_an_emulated_board_is_refused(capsys, tmp_path, arm_board) -> None:
    table = tmp_path / "t.json"
    code, out, err = _run(capsys, "profile", "--model", MODEL, "--target", TARGET, "--rpc", arm_board, "--out", str(table))
    _assert_one_line_error(code, out, err, f"the board of target '{TARGET}' is emulated (qemu-aarch64",
                           "writes none into a latency table")
    assert not table.exists()


@pytest.mark.parametrize("command", ["quantize", "build"])
def test_a_latency_budget_without_a_table_names_the_profile_command(capsys, tmp_path, command) -> None:
    argv, out = _command(command, tmp_path)
    _assert_one_line_error(*_run(capsys, *argv, "--budget", "latency=0.5x"), "a latency budget needs a latency table",
                           f"`lcpaq profile --model M --target {TARGET} --rpc HOST:PORT", "--latency-table")
    assert not out.exists()


def test_tuning_trials_on_arm_are_refused_in_one_line(capsys, tmp_path) -> None:
    out = tmp_path / "m.so"
    code = main(["build", "--model", MODEL, "--target", TARGET, "--trials", "8", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "backend 'arm-dotprod' does not tune its kernels yet" in err and not out.exists()
