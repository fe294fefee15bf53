import json
import textwrap
import time

import pytest

from lcpaq.passes import Pipeline, parse_spec
from lcpaq.tools.cli import main
from tests.conftest import UNIMPLEMENTED_TOML


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "alexnet"], "unknown model 'alexnet'; built-in models: resnet-digits"),
    (["--target", "tpu"], "unknown target 'tpu'"),
    (["--bits", "w9a8"], "bad precision 'w9a8': unsupported weight bit-width 9"),
    (["--bits", "8bit"], "bad precision '8bit': write it as wNaM"),
    (["--compare", "w4a4"], "target 'x86-host' has no 4-bit activations"),
    (["--model", "missing/model.py:build"], "model file missing/model.py does not exist"),
    (["--pipeline", "fold-bn,shape-prop,costt"], "unknown pass 'costt'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, argv, message) -> None:
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "quantize", *argv, "--out", str(out_dir), "--no-progress")
    assert code == 2
    assert err.startswith("lcpaq: error: ") and message in err
    assert err.count("\n") == 1
    assert not out_dir.exists()


def test_spec_file_without_function(capsys, tmp_path) -> None:
    path = tmp_path / "model.py"
    path.write_text("x = 1\n")
    code, _, err = _run(capsys, "quantize", "--model", f"{path}:build", "--no-progress")
    assert code == 2 and f"model file {path} has no function 'build'" in err


def test_untraceable_spec_model_names_source_line(capsys, tmp_path) -> None:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent("""
        import torch

        class Branchy(torch.nn.Module):
            def forward(self, x):
                if x.mean() > 0:
                    return x
                return -x

        def build():
            return Branchy(), (torch.randn(1, 4),)
    """))
    code, _, err = _run(capsys, "quantize", "--model", f"{path}:build", "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 2
    assert f"{path}:6" in err and "if x.mean() > 0:" in err and "data-dependent control flow" in err
    assert not (tmp_path / "o").exists()


def test_quantize_default_model_report(capsys, tmp_path) -> None:
    out_dir = tmp_path / "report"
    code, out, _ = _run(capsys, "quantize", "--compare", "w4a8", "--out", str(out_dir), "--no-progress")
    assert code == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert report["model"] == "resnet-digits" and report["target"] == "x86-host"
    assert len(report["layers"]) == 10
    assert {row["w_bits"] for row in report["layers"]} == {8}
    labels = [c["label"] for c in report["configs"]]
    assert labels == ["fp32", "W8A8", "W4A8"]
    acc = {c["label"]: c["metrics"]["accuracy"] for c in report["configs"]}
    assert acc["fp32"] > 0.97 and acc["W8A8"] >= acc["fp32"] - 0.01 and acc["W4A8"] > 0.9
    totals = report["totals"]
    w8 = report["configs"][1]
    weights = sum(r["params"] for r in report["layers"])
    biases = sum(r["bias"] for r in report["layers"])
    assert w8["size_bytes"] == weights + 4 * biases + 4 * (totals["params"] - totals["quantizable_params"])
    assert w8["bops"] == totals["macs"] * 64 and report["configs"][2]["bops"] == totals["macs"] * 32
    assert report["configs"][0]["metrics"]["sqnr_db"] is None  # fp32 vs itself: exact
    md = (out_dir / "report.md").read_text()
    assert "| W4A8" in md and "layer3.0.conv2" in md
    assert "W8A8" in out and "accuracy" in out
    # built for this host by default: both configurations run, bit-exact against the integer reference
    for label in ("W8A8", "W4A8"):
        dep = report["deployment"][label]
        assert dep["built"] and dep["bit_exact_vs_integer_reference"] and dep["latency_ms"] > 0
    assert report["deployment"]["W8A8"]["sqnr_vs_fp32_db"] > 30
    assert "## Deployment on x86-host" in md and "ms measured" in out


def test_data_free_spec_model(capsys, tmp_path) -> None:
    path = tmp_path / "mlp.py"
    path.write_text(textwrap.dedent("""
        import torch

        def build():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
            return model, (torch.randn(1, 16),)
    """))
    out_dir = tmp_path / "r"
    code, _, _ = _run(capsys, "quantize", "--model", f"{path}:build", "--target", "sim", "--bits", "w8a8",
                      "--compare", "w2a8", "--out", str(out_dir), "--no-progress")
    assert code == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert report["data"].startswith("data-free")
    sqnr = {c["label"]: c["metrics"]["sqnr_db"] for c in report["configs"]}
    assert sqnr["W8A8"] > 30 and sqnr["W8A8"] > sqnr["W2A8"] + 15


def test_spec_model_with_data_and_evaluate(capsys, tmp_path) -> None:
    path = tmp_path / "lab.py"
    path.write_text(textwrap.dedent("""
        import torch

        def build():
            torch.manual_seed(0)
            model = torch.nn.Linear(8, 2)
            data = [torch.randn(4, 8) for _ in range(4)]
            return model, (torch.randn(1, 8),), data, lambda m: {"score": 0.5}
    """))
    code, out, _ = _run(capsys, "quantize", "--model", f"{path}:build", "--no-progress", "--no-build")
    assert code == 0 and "score" in out and "0.5000" in out


def test_custom_pipeline(capsys, tmp_path) -> None:
    out_dir = tmp_path / "p"
    spec = "fold-bn,shape-prop,cost,quant-scheme,calibrate{method=entropy},uniform{w=6,a=8},fake-quant"
    code, _, _ = _run(capsys, "quantize", "--pipeline", spec, "--out", str(out_dir), "--no-progress", "--no-build")
    assert code == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert report["pipeline"] == spec.replace(",a=8}", "}")  # canonical: defaults left out
    assert {row["w_bits"] for row in report["layers"]} == {6}


def test_listing_commands(capsys) -> None:
    assert _run(capsys, "targets")[1].count("x86-host") == 1
    passes = _run(capsys, "passes")[1]
    assert "fold-bn" in passes and "reads lcpaq.qspec, lcpaq.act_range" in passes
    assert "quant-scheme" in passes and "writes lcpaq.quant_scheme" in passes
    assert "minilm" in _run(capsys, "models")[1]


def test_help_on_every_subcommand(capsys) -> None:
    for sub in ("quantize", "targets", "models", "passes"):
        with pytest.raises(SystemExit) as info:
            main([sub, "--help"])
        assert info.value.code == 0
        assert "usage: lcpaq" in capsys.readouterr().out


def test_budget_gives_mixed_assignment_with_pareto_plots(capsys, tmp_path) -> None:
    out_dir = tmp_path / "ilp"
    code, out, _ = _run(capsys, "quantize", "--budget", "size=0.15x", "--compare", "w8a8,w4a8", "--probes", "16",
                        "--out", str(out_dir), "--no-progress", "--no-build")
    assert code == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert len({row["w_bits"] for row in report["layers"]}) > 1  # a mixed assignment
    assert all(row["sensitivity"] is not None for row in report["layers"])
    ilp, w8, w4 = report["configs"][1:]
    assert ilp["label"] == "ILP(size=0.15x)"
    limit = report["assignment"]["budgets"][0]["limit"]
    assert limit == 0.15 * report["totals"]["fp32_bytes"]
    assert ilp["size_bytes"] <= limit and ilp["size_bytes"] == report["assignment"]["predicted"]["size"]
    assert ilp["sensitivity"] == pytest.approx(report["assignment"]["sensitivity"])
    assert ilp["sensitivity"] < w4["sensitivity"]  # W4A8 also fits the budget: the ILP must beat it
    assert set(report["pareto"]["fronts"]) == {"size", "bops"}
    for name in ("pareto_size.png", "pareto_bops.png"):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out_dir / "report.md").read_text()
    assert "![sensitivity against size](pareto_size.png)" in md and "ILP under size=0.15x" in md
    assert "ILP under size=0.15x" in out


@pytest.mark.parametrize(("budget", "message"), [
    ("size=0.01x", "infeasible budget: size=0.01x asks size <="),
    ("latency=2ms", "a latency budget needs a latency table measured on x86-host's device: run `lcpaq profile"),
    ("speed=2", "bad budget 'speed=2'"),
])
def test_bad_budget_exit_2(capsys, tmp_path, budget, message) -> None:
    out_dir = tmp_path / "o"
    code, _, err = _run(capsys, "quantize", "--budget", budget, "--probes", "4", "--out", str(out_dir), "--no-progress")
    assert code == 2 and message in err and err.count("\n") == 1
    assert not out_dir.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--search", "proxy"], "give at least one --budget"),
    (["--search", "proxy", "--budget", "size=0.2x", "--space-set", "colour=red"], "bad --space-set 'colour=red'"),
    (["--search", "proxy", "--budget", "size=0.2x", "--trials", "0"], "--trials must be >= 1"),
    (["--search", "proxy", "--budget", "size=0.2x", "--confirm", "0"], "--confirm must be >= 1"),
    (["--search", "proxy", "--budget", "size=0.2x", "--pipeline", "cost"], "cannot be combined with --pipeline"),
    (["--distill", "-5"], "--distill takes a number of steps >= 0"),
])
def test_bad_search_options(capsys, tmp_path, argv, message) -> None:
    code, _, err = _run(capsys, "quantize", *argv, "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


def test_proxy_search_with_distillation_report(capsys, tmp_path) -> None:
    out_dir = tmp_path / "s"
    start = time.perf_counter()
    code, out, _ = _run(capsys, "quantize", "--budget", "size=0.12x", "--search", "proxy", "--trials", "6",
                        "--confirm", "3", "--space-set", "probes=8", "--distill", "20", "--out", str(out_dir), "--no-progress", "--no-build")
    wall = time.perf_counter() - start
    assert code == 0
    report = json.loads((out_dir / "report.json").read_text())
    search = report["search"]
    # the search's own stages lie inside its "search" stage: the run's stages add up, no second counted twice
    stages = report["timing_s"]["stages"]
    assert not any(name.startswith("search: ") for name in stages)
    assert report["timing_s"]["total"] == pytest.approx(sum(stages.values()), abs=1e-3) and report["timing_s"]["total"] <= wall
    assert search["seconds"]["total"] <= stages["search"]
    assert search["mode"] == "proxy" and search["proxy"] == "cosine" and search["trials"] == 6
    assert len(search["confirmed"]) == 3 and search["best"]["probes"] == 8
    assert {"prepare", "sensitivity", "search", "confirm", "total"} <= set(search["seconds"])
    labels = [c["label"] for c in report["configs"]]
    assert labels == ["fp32", "searched ILP(size=0.12x)", "searched ILP(size=0.12x) + distill"]
    assert report["configs"][1]["metrics"]["accuracy"] == pytest.approx(search["best_metric"])
    assert report["distillation"]["steps"] == 20
    assert "hessian{probes=8" in report["pipeline"] and "ilp{size=0.12x" in report["pipeline"]
    assert Pipeline(parse_spec(report["pipeline"])).spec() == report["pipeline"]
    md = (out_dir / "report.md").read_text()
    assert "## Search" in md and "## Distillation" in md
    assert "evaluate function" in search["held_out"]["reason"] and "No held-out check: the model's own evaluate" in md
    assert "proxy search (6 trials" in out
    # the reported pipeline, run from scratch (its own Hessian probes), gives the searched result
    again = tmp_path / "again"
    assert _run(capsys, "quantize", "--pipeline", report["pipeline"], "--out", str(again), "--no-progress", "--no-build")[0] == 0
    rerun = json.loads((again / "report.json").read_text())
    assert rerun["configs"][1]["metrics"] == report["configs"][1]["metrics"]
    assert [r["w_bits"] for r in rerun["layers"]] == [r["w_bits"] for r in report["layers"]]
    assert round(search["best_metric"], 6) == rerun["configs"][1]["metrics"]["accuracy"]
    assert search["best_metric"] == max(c["metric"] for c in search["confirmed"])  # the confirmed best is kept


def test_infeasible_search_budget_is_one_line(capsys, tmp_path) -> None:
    code, _, err = _run(capsys, "quantize", "--budget", "size=0.01x", "--search", "proxy", "--trials", "3",
                        "--space-set", "probes=8", "--out", str(tmp_path / "o"), "--no-progress", "--no-build")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "o").exists()
    assert err.startswith("lcpaq: error: no configuration meets the budgets: infeasible budget: size=0.01x asks size <=")
    assert "the smallest achievable is" in err


def test_targets_reports_host_support(capsys) -> None:
    from lcpaq.hw_targets import load_target
    from lcpaq.hw_targets.host import host_support

    code, out, _ = _run(capsys, "targets")
    assert code == 0
    expected = "runs on" if host_support(load_target("x86-host")).ok else "cannot run on"
    assert f"{expected} this host" in out and "avx512_vnni" in out


_TINY_MODEL = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 8))
    return model, (torch.randn(1, 4, 6, 6),)
"""


def test_profile_writes_a_table(capsys, tmp_path) -> None:
    from lcpaq.hw_targets.latency_table import LatencyTable
    from lcpaq.hw_targets import load_target
    from lcpaq.hw_targets.host import host_support

    if not host_support(load_target("x86-host")).ok:
        pytest.skip("this host lacks AVX-512 VNNI")
    path = tmp_path / "tiny.py"
    path.write_text(_TINY_MODEL)
    out = tmp_path / "t.json"
    code, stdout, err = _run(capsys, "profile", "--model", f"{path}:build", "--target", "x86-host", "--out", str(out),
                             "--repeats", "2", "--no-progress")
    assert code == 0, err
    table = LatencyTable.load(out, "x86-host")
    assert len(table.entries) == 2 and all("w8a8" in row and "fp32" in row for row in table.entries.values())
    assert f"wrote {out}" in stdout


@pytest.mark.parametrize(("argv", "message"), [
    (["--target", "arm-a76"], "target 'arm-a76' runs on a board reached over RPC: give --rpc HOST:PORT"),
    (["--target", "nvidia-sm90"], "this machine has no CUDA GPU"),
    (["--target", "tpu"], "unknown target 'tpu'"),
    (["--trials", "-1"], "--trials must be >= 0"),
    (["--model", "missing/model.py:build"], "model file missing/model.py does not exist"),
])
def test_profile_bad_input_is_one_line(capsys, tmp_path, argv, message) -> None:
    out = tmp_path / "t.json"
    code, _, err = _run(capsys, "profile", "--out", str(out), "--no-progress", *argv)
    assert code == 2 and err.startswith("lcpaq: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_build_writes_library_and_reports_measured_latency(tmp_path, capsys) -> None:
    out = tmp_path / "digits.so"
    assert main(["build", "--model", "resnet-digits", "-o", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and out.stat().st_size > 0
    assert "bit-exact vs integer reference" in text and "ms measured" in text


def test_build_refuses_a_directory_and_other_targets(tmp_path, capsys) -> None:
    assert main(["build", "--model", "resnet-digits", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    npu = tmp_path / "npu-x.toml"
    npu.write_text(UNIMPLEMENTED_TOML)
    assert main(["build", "--model", "resnet-digits", "--target", str(npu), "-o", str(tmp_path / "m.so")]) == 2
    assert "target 'npu-x' needs backend 'npu-magic', which is not implemented" in capsys.readouterr().err
    assert not (tmp_path / "m.so").exists()
