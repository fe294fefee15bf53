"""The GPU-machine workflow without a GPU: a bundle of CUDA libraries and layer kernels written
here (fatbins inside, manifest last), the bench's bare-runtime loading checked on an x86 bundle
run on this CPU (bit-exact, tiled batches, no ``tvm`` package), and a latency table assembled
from bench results that a ``latency=`` budget then uses."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lcpaq.hw_targets import load_target
from lcpaq.hw_targets.latency_table import LatencyTable
from lcpaq.tools import gpu_bundle
from lcpaq.tools.api import load_bundle
from lcpaq.tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
MODEL = "resnet-digits"


@pytest.fixture(scope="module")
def cuda_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "bundle"
    assert gpu_bundle.main(["--models", MODEL, "--batches", "1", "--mixed", "", "--profile", "--out", str(out), "--no-progress"]) == 0
    return out


def test_cuda_bundle_holds_libraries_layer_kernels_and_the_runtime(cuda_bundle: Path) -> None:
    manifest = json.loads((cuda_bundle / MODEL / "manifest.json").read_text())
    assert manifest["target"] == "nvidia-sm90"
    (entry,) = manifest["models"]
    assert (entry["config"], entry["batch"], entry["float_nodes"]) == ("w8a8", 1, [])
    layers = {(r["layer"], r["key"]) for r in manifest["layers"]}
    names = {r["layer"] for r in manifest["layers"]}
    assert len(names) == 10 and layers == {(n, k) for n in names for k in ("fp32", "w8a8")}
    for r in [entry, *manifest["layers"]]:
        data = (cuda_bundle / MODEL / r["library"]).read_bytes()
        assert b"__global__" not in data and b"fatbin" in data  # compiled here, no CUDA source to JIT there
    runtime = sorted(p.name for p in (cuda_bundle / "runtime").iterdir())
    assert runtime[0].startswith("apache_tvm_ffi-") and "-cp312-" in runtime[0]
    assert runtime[1:] == ["libtvm_runtime.so", "libtvm_runtime_cuda.so"]


def test_bench_runs_an_x86_bundle_with_the_bare_runtime(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    assert gpu_bundle.main(["--target", "x86-host", "--models", MODEL, "--batches", "1,5", "--out", str(out), "--no-progress"]) == 0
    results = tmp_path / "results.json"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_bench.py"), "--bundle", str(out), "--device", "cpu",
                           "--repeats", "3", "--out", str(results)], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(results.read_text())
    assert data["tvm_package_loaded"] is False
    rows = {(r["config"], r["batch"]): r for r in data["models"]}
    assert set(rows) == {("w8a8", 1), ("w8a8", 5), ("mixed", 1), ("mixed", 5)}
    assert all(r["bit_exact"] and r["median_ms"] > 0 for r in rows.values())
    assert rows[("w8a8", 5)]["shape"] == [5, 10]  # 4 stored rows tiled to the batch
    assert data["baselines"]["resnet-digits-b5"]["torch_fp32_eager_ms"] > 0  # PyTorch on the same device, same rows


def test_a_transformer_is_rebuilt_from_its_bundled_config(tmp_path: Path) -> None:
    """MiniLM's PyTorch baseline on the GPU machine: its architecture from the bundled Hugging
    Face configuration (the weights are not there), run on the bundle's token rows."""
    import torch

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "tools" / "gpu_bench.py")  # the standalone script, as
    gpu_bench = importlib.util.module_from_spec(spec)  # the GPU machine runs it; sys.path untouched (tools/ holds a `profile`)
    spec.loader.exec_module(gpu_bench)

    bundle = load_bundle("minilm")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(gpu_bundle.hf_config(bundle.model))
    model = gpu_bench.torch_model(torch, "minilm", tmp_path, {"hf_config": "hf"})
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in bundle.model.bert.parameters())
    ids, mask = (x[:1].numpy() for x in bundle.example_inputs)
    times = gpu_bench.torch_baselines(torch, model, [ids.repeat(3, 0), mask.repeat(3, 0)], "cpu", repeats=2)
    assert times["torch_fp32_eager_ms"] > 0


def _fake_results(cuda_bundle: Path, path: Path) -> dict[str, float]:
    manifest = json.loads((cuda_bundle / MODEL / "manifest.json").read_text())
    order = list(dict.fromkeys(r["layer"] for r in manifest["layers"]))
    ms = {(r["layer"], r["key"]): 0.01 * (order.index(r["layer"]) + 1) * (3 if r["key"] == "fp32" else 1) for r in manifest["layers"]}
    layers = [{**r, "median_ms": ms[(r["layer"], r["key"])]} for r in manifest["layers"]]
    models = [{**manifest["models"][0], "median_ms": 2.5, "bit_exact": True}]
    path.write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "models": models, "layers": layers}))
    return {f"{k[0]}/{k[1]}": v for k, v in ms.items()}


def test_table_from_bench_results_drives_a_latency_budget(cuda_bundle: Path, tmp_path: Path, capsys) -> None:
    results, table_path = tmp_path / "results.json", tmp_path / "table.json"
    ms = _fake_results(cuda_bundle, results)
    argv = ["--models", MODEL, "--table", str(results), "--out", str(table_path)]
    assert gpu_bundle.main(argv) == 0
    table = LatencyTable.load(table_path, "nvidia-sm90")
    assert table.device == "NVIDIA H100 80GB HBM3" and len(table.entries) == 10
    for layer, row in table.entries.items():
        assert row["fp32"] == pytest.approx(ms[f"{layer}/fp32"] / 1e3) and row["w8a8"] == pytest.approx(ms[f"{layer}/w8a8"] / 1e3)
    layers = sum(row["w8a8"] for row in table.entries.values())
    assert table.fixed_seconds == pytest.approx(2.5e-3 - layers, rel=1e-3)
    capsys.readouterr()
    code = main(["quantize", "--model", MODEL, "--target", "nvidia-sm90", "--budget", "latency=1.2int8",
                 "--latency-table", str(table_path), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "latency" in out
    # the ILP's latency-budgeted build, bundled with the table's prediction beside it
    manifest = gpu_bundle.model_bundle(MODEL, load_target("nvidia-sm90"), [1], "latency=1.2int8", tmp_path / "mixed", progress=False,
                                       latency_table=str(table_path))
    mixed = [e for e in manifest["models"] if e["config"] == "mixed"]
    assert len(mixed) == 1 and 0 < mixed[0]["predicted_ms"] <= 1.2 * sum(r["w8a8"] for r in table.entries.values()) * 1e3 + table.fixed_seconds * 1e3 * 1.2


def test_table_from_unreadable_results_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "results.json"
    bad.write_text("{not json")
    assert gpu_bundle.main(["--models", MODEL, "--table", str(bad), "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and not (tmp_path / "t.json").exists()
