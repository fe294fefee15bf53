"""Every way `lcpaq quantize`, `build`, `profile` and `--search` can fail is one line on stderr and
exit code 2 (an interrupt: 130), and leaves `--out` as it was; `--debug` adds the traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lcpaq.tools.cli import main

MODEL = textwrap.dedent("""
    from pathlib import Path
    import time

    import torch
    from torch import nn


    def build():
        Path(__file__).with_suffix(".loaded").touch()  # the test can tell whether the model was loaded
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), (torch.randn(1, 16),)


    def boom():
        raise ValueError("no weights at /nowhere")


    def bad_eval():
        model, example = build()
        return model, example, [torch.randn(4, 16) for _ in range(2)], lambda m: 1 / 0


    def slow():
        Path(__file__).with_suffix(".loaded").touch()
        time.sleep(60)
""")


@pytest.fixture
def model_file(tmp_path) -> Path:
    path = tmp_path / "mlp.py"
    path.write_text(MODEL)
    return path




def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _commands(tmp_path: Path, spec: str) -> dict[str, list[str]]:
    return {
        "quantize": ["quantize", "--model", spec, "--target", "sim", "--out", str(tmp_path / "out"), "--no-progress"],
        "search": ["quantize", "--model", spec, "--budget", "size=0.3x", "--search", "proxy", "--trials", "2",
                   "--out", str(tmp_path / "out"), "--no-progress"],
        "build": ["build", "--model", spec, "-o", str(tmp_path / "out" / "m.so"), "--no-progress"],
        "profile": ["profile", "--model", spec, "--out", str(tmp_path / "out" / "t.json"), "--no-progress"],
    }


@pytest.mark.parametrize("command", ["quantize", "search", "build", "profile"])
def test_a_model_function_that_raises_is_one_line(capsys, tmp_path, model_file, command) -> None:
    code, _, err = _run(capsys, *_commands(tmp_path, f"{model_file}:boom")[command])
    assert code == 2
    assert err == f"lcpaq: error: model file {model_file}:boom raised ValueError: no weights at /nowhere\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["quantize", "search", "build", "profile"])
def test_a_read_only_output_is_refused_before_the_model_is_loaded(capsys, tmp_path, model_file, read_only_dir, command) -> None:
    argv = _commands(tmp_path, f"{model_file}:build")[command]
    argv = [str(read_only_dir / "out" / Path(a).name) if a.startswith(str(tmp_path / "out")) else a for a in argv]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("lcpaq: error: ") and f"cannot be written: {read_only_dir}: " in err
    assert not model_file.with_suffix(".loaded").exists()


def test_a_foreign_directory_is_not_replaced_by_a_report(capsys, tmp_path, model_file) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = _run(capsys, *_commands(tmp_path, f"{model_file}:build")["quantize"][:-3], "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "is a non-empty directory without a report.json" in err
    assert os.listdir(out) == ["notes.txt"] and not model_file.with_suffix(".loaded").exists()


def _report_files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_a_second_report_replaces_the_first_whole(capsys, tmp_path, model_file) -> None:
    """A mixed-precision report (with Pareto plots), then a uniform one into the same --out: the
    directory holds the second report alone, not its files beside the first one's plots."""
    out = tmp_path / "out"
    base = ["quantize", "--model", f"{model_file}:build", "--target", "sim", "--out", str(out), "--no-progress"]
    assert _run(capsys, *base, "--budget", "size=0.3x", "--probes", "4")[0] == 0
    assert {"pareto_size.png", "pareto_bops.png", "report.json", "report.md"} == set(os.listdir(out))
    assert _run(capsys, *base)[0] == 0
    assert set(os.listdir(out)) == {"report.json", "report.md"}
    assert "assignment" not in json.loads((out / "report.json").read_text())
    assert os.listdir(tmp_path) == ["mlp.py", "mlp.loaded", "out"] or set(os.listdir(tmp_path)) == {"mlp.py", "mlp.loaded", "out"}


def test_an_interrupt_while_the_report_is_written_leaves_the_previous_one(capsys, tmp_path, model_file, monkeypatch) -> None:
    out = tmp_path / "out"
    base = ["quantize", "--model", f"{model_file}:build", "--target", "sim", "--out", str(out), "--no-progress"]
    assert _run(capsys, *base)[0] == 0
    before = _report_files(out)

    def interrupted(*args, **kwargs):  # report.json of the new report is written by now
        raise KeyboardInterrupt

    monkeypatch.setattr("lcpaq.tools.report.render_markdown", interrupted)
    code, _, err = _run(capsys, *base, "--bits", "w4a8")
    assert code == 130 and err == "lcpaq: interrupted\n"
    assert _report_files(out) == before
    assert set(os.listdir(tmp_path)) == {"mlp.py", "mlp.loaded", "out"}  # no half-written directory beside it


def test_sigint_exits_130_in_one_line_and_leaves_out_as_it_was(tmp_path, model_file) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    cmd = [sys.executable, "-m", "lcpaq.tools.cli", "quantize", "--model", f"{model_file}:slow", "--target", "sim",
           "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not model_file.with_suffix(".loaded").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "lcpaq: interrupted\n"
    assert os.listdir(out) == ["report.json"] and (out / "report.json").read_text() == "{}"


def test_an_error_in_the_evaluate_function_names_the_model(capsys, tmp_path, model_file) -> None:
    code, _, err = _run(capsys, "quantize", "--model", f"{model_file}:bad_eval", "--target", "sim",
                        "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2
    assert err == "lcpaq: error: model mlp:bad_eval raised ZeroDivisionError: division by zero on its evaluation data\n"
    assert not (tmp_path / "out").exists()


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, tmp_path, model_file, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("cost model exploded\nsecond line of detail")

    monkeypatch.setattr("lcpaq.tools.api.totals", broken)
    argv = ["quantize", "--model", f"{model_file}:build", "--target", "sim", "--out", str(tmp_path / "out"), "--no-progress"]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err == "lcpaq: error: RuntimeError: cost model exploded (run again with --debug for the traceback)\n"
    code, _, err = _run(capsys, *argv, "--debug")
    assert code == 2 and err.startswith("Traceback (most recent call last):") and 'in broken\n' in err
    assert err.endswith("lcpaq: error: RuntimeError: cost model exploded (run again with --debug for the traceback)\n")
    assert not (tmp_path / "out").exists()


def _failing_lowering(*args, **kwargs):
    """A real TVM failure: TVM raises a TypeError, and the BlockBuilder it leaves behind logs
    "BlockBuilder destroyed with remaining blocks!" from C++ when it is destroyed."""
    from tvm import relax

    bb = relax.BlockBuilder()
    with bb.function("main", []):
        bb.emit(relax.const(1) + relax.const(1.0))


def test_a_tvm_error_in_the_build_is_the_configurations_reason(capfd, tmp_path, model_file, monkeypatch) -> None:
    monkeypatch.setattr("lcpaq.backends.common.build.lower_to_relax", _failing_lowering)
    out = tmp_path / "out"
    code = main(["quantize", "--model", f"{model_file}:build", "--target", "x86-host", "--compare", "w4a8", "--build",
                 "--out", str(out), "--no-progress"])
    stdout, stderr = capfd.readouterr()
    assert code == 0 and stderr == ""  # not even TVM's native warning
    report = json.loads((out / "report.json").read_text())
    for label in ("W8A8", "W4A8"):
        entry = report["deployment"][label]
        assert entry["built"] is False
        assert entry["reason"].startswith("TypeError: Binary operators must have the same datatype for both operands.")
        assert f"{label:<24} not built: TypeError: Binary operators" in stdout
    code = main(["build", "--model", f"{model_file}:build", "-o", str(tmp_path / "m.so"), "--no-progress"])
    stdout, stderr = capfd.readouterr()
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("lcpaq: error: cannot build W8A8 for x86-host: TypeError: Binary operators")
    assert not (tmp_path / "m.so").exists()
    code = main(["build", "--model", f"{model_file}:build", "-o", str(tmp_path / "m.so"), "--no-progress", "--debug"])
    stderr = capfd.readouterr().err
    assert code == 2 and "Traceback (most recent call last):" in stderr and "in _failing_lowering" in stderr  # with --debug
    assert "BlockBuilder destroyed with remaining blocks!" in stderr  # TVM's native log too
