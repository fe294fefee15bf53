"""What each ``lcpaq`` subcommand does (:mod:`lcpaq.tools.cli` parses the flags and imports this
module only once a command runs, so ``lcpaq --help`` starts fast)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import lcpaq.backends.common.capability  # noqa: F401  (registers the executable pass, listed by `lcpaq passes`)
from lcpaq.backends.common.backend import backend_for, runs_here
from lcpaq.backends.common.deploy import deploy
from lcpaq.hw_targets.host import host_features, host_support
from lcpaq.hw_targets.remote import remote_from_options
from lcpaq.hw_targets.target import OP_KINDS, Target, available_targets, load_target
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.fileio import check_writable
from lcpaq.passes import registered_passes
from lcpaq.passes.cost_model import load_table
from lcpaq.tools.api import load_bundle, quantize
from lcpaq.tools.deployment import deployment_lines
from lcpaq.tools.export import check_export_options, onnx_entry, onnx_lines
from lcpaq.tools.models.zoo import BUILTIN_MODELS
from lcpaq.tools.profile import profile
from lcpaq.tools.report import summary


def target_of(args: argparse.Namespace) -> Target:
    """The --target, reached over the board that --rpc or --tracker/--key name (if any)."""
    return load_target(args.target).reached_over(remote_from_options(args.rpc, args.tracker, args.key))


def quantize_command(args: argparse.Namespace) -> int:
    compare = [c for item in args.compare for c in item.split(",") if c]
    result = quantize(
        model=args.model, target=target_of(args), bits=args.bits, compare=compare, budget=args.budget,
        calibration=args.calibration, probes=args.probes, search=args.search, trials=args.trials, proxy=args.proxy,
        confirm=args.confirm, space=args.space, space_set=args.space_set, distill=args.distill, latency_table=args.latency_table,
        pipeline=args.pipeline, out=args.out, dump_graphs=args.dump_graphs, progress=args.progress, seed=args.seed,
        build=args.build, build_trials=args.build_trials, export=args.export, storage=args.storage, study=args.study,
    )
    print(summary(result.report))
    if args.out:
        print(f"wrote {args.out}/report.json and {args.out}/report.md")
    if "onnx" in result.report:
        print("\n".join(onnx_lines(result.report["onnx"], Path(args.out) / "model.onnx")))
    return 0


def export_command(args: argparse.Namespace) -> int:
    out = Path(args.output)
    check_export_options(args.format, args.onnx_flavor, out)
    target = target_of(args)
    bundle = load_bundle(args.model, args.progress)
    result = quantize(
        model=bundle, target=target, bits=args.bits, budget=args.budget, calibration=args.calibration, probes=args.probes,
        latency_table=args.latency_table, pipeline=args.pipeline, progress=args.progress, seed=args.seed, build=False,
        act_symmetric=args.onnx_flavor == "tensorrt",  # TensorRT's explicit quantization: symmetric int8 only
    )
    print("\n".join(onnx_lines(onnx_entry(result.results[0].graph_module, bundle, out, args.onnx_flavor))))
    return 0


def build_command(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {out} is a directory; give a file name such as {out / 'model.so'}")
    if args.trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {args.trials}")

    check_writable(out, "-o")  # before any work, as the device below

    target = target_of(args)
    backend = backend_for(target)
    backend.check_trials(args.trials)
    backend.check_toolchain(target)  # a missing compiler or linker, before any work
    if target.device == "local" or target.remote is not None:
        backend.device(target)  # before any work: the device must be reachable (a board target builds without one)

    bundle = load_bundle(args.model, args.progress)
    result = quantize(
        model=bundle, target=target, bits=args.bits, budget=args.budget, calibration=args.calibration,
        probes=args.probes, latency_table=args.latency_table, pipeline=args.pipeline, progress=args.progress,
        seed=args.seed, build=False,
    )

    table = load_table(args.latency_table, target)  # the table quantize loaded, not read again
    primary = result.results[0]
    entry = deploy(primary.graph_module, bundle.example_inputs, bundle.model, target, table, args.trials, library=out, glue=args.glue)
    if not entry["built"]:
        raise ConfigError(f"cannot build {primary.label} for {target.name}: {entry['reason']}")
    print("\n".join(deployment_lines({"target": target.name, "deployment": {primary.label: entry}})))
    where = {"local": "on this machine", "cuda": f"on an NVIDIA GPU ({target.tvm_target.get('arch', target.name)}) with the TVM runtime"}.get(
        target.device, f"on the board ({target.tvm_target.get('mtriple', target.name)})")
    print(f"wrote {out} ({input_signature(bundle.example_inputs)}; {where}: load with tvm.runtime.load_module and "
          "relax.VirtualMachine, call 'main')")
    return 0


def input_signature(example_inputs: Sequence[object]) -> str:
    """``input int64 1x7, input int64 1x7``: each built input's dtype and shape (batch 1)."""
    parts = []
    for x in example_inputs:
        dtype = str(getattr(x, "dtype", type(x).__name__)).removeprefix("torch.")
        shape = "x".join(str(d) for d in (1, *tuple(getattr(x, "shape", ()))[1:]))
        parts.append(f"input {dtype} {shape}")
    return ", ".join(parts)


def targets_command(args: argparse.Namespace) -> int:
    features = host_features()
    for name in available_targets():
        t = load_target(name)
        weights = "; ".join(f"{k} W{','.join(map(str, t.weight_bits(k)))}" for k in OP_KINDS)
        print(f"{t.name:<12} {t.description}")
        print(f"{'':<12} weights: {weights}; activations: A{','.join(map(str, t.act_bits))}; device: {t.device}")
        try:
            backend_for(t)
            built = f"builds with backend {t.backend}"
        except ConfigError as exc:
            built = f"not built: {exc}"
        print(f"{'':<12} {built}")
        if t.device == "local":
            support = host_support(t, features)
            print(f"{'':<12} {'runs on' if support.ok else 'cannot run on'} this host: {support}")
        elif t.device == "rpc" and t.backend is not None:
            print(f"{'':<12} cross-compiled here; runs on a board given by --rpc HOST:PORT or --tracker HOST:PORT --key NAME")
        elif t.device == "cuda":
            print(f"{'':<12} compiled here with nvcc; runs on an NVIDIA GPU ({'this machine has one' if runs_here(t) else 'none here'})")
    return 0


def profile_command(args: argparse.Namespace) -> int:
    if args.trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {args.trials}")
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    out = Path(args.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as {out / 'latency.json'}")

    check_writable(out, "--out")

    target = target_of(args)
    backend_for(target).check_trials(args.trials)
    backend_for(target).device(target)  # the device before the model, as profile() does
    bundle = load_bundle(args.model, args.progress)
    table = profile(bundle, target, trials=args.trials, repeats=args.repeats, progress=args.progress)
    table.save(out)
    total = sum(row["fp32"] for row in table.entries.values())
    int8 = sum(row.get("w8a8", row["fp32"]) for row in table.entries.values())
    print(f"{table.model} on {table.target} ({table.device}): {len(table.entries)} layers, "
          f"fp32 {total * 1e3:.3f} ms, w8a8 {int8 * 1e3:.3f} ms (sum over layers)")
    print(f"wrote {out}")
    return 0


def models_command(args: argparse.Namespace) -> int:
    print("\n".join(BUILTIN_MODELS))
    print("or path/to/file.py:function returning (model, example_inputs[, data[, evaluate]])")
    return 0


def passes_command(args: argparse.Namespace) -> int:
    for name, cls in registered_passes().items():
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        reads = ", ".join(k.name for k in cls.reads) or "-"
        writes = ", ".join(k.name for k in cls.writes) or "-"
        print(f"{name:<12} {doc}\n{'':<12} reads {reads}; writes {writes}{'; rewrites the graph' if cls.rewrites else ''}")
    return 0
