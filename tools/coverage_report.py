"""Model coverage report: every model of the coverage zoo (:mod:`lcpaq.tools.models.coverage`)
through capture, quantization (uniform W8A8, a ``size=`` and a ``bops=`` budget), the W8A8 build
for this host's default target, the bit-exact check against the integer reference, the fraction
of MACs on integer kernels and the W8A8 latency against the all-float build of the same model.

``python -m lcpaq.tools.coverage_report --out docs`` writes ``coverage.md`` and ``coverage.json``
(``make coverage``). A step that fails is recorded with its one-line reason, and the run goes on.
"""
from __future__ import annotations

import argparse
import operator
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.fx as fx

from lcpaq.backends.common import integer_ops as iops
from lcpaq.backends.common.backend import backend_for
from lcpaq.backends.common.build import BuiltModel, build_model
from lcpaq.backends.common.measure import measure_latency
from lcpaq.hw_targets.host import default_target_name
from lcpaq.hw_targets.remote import remote_from_options
from lcpaq.hw_targets.target import Target, load_target
from lcpaq.ir.capture import capture
from lcpaq.ir.errors import ConfigError, LcpaqError, one_line
from lcpaq.ir.fileio import atomic_write_json, atomic_write_text
from lcpaq.ir.layers import find_layers
from lcpaq.ir.meta import COST, DOMAIN, FLOAT_BITS, FLOAT_LAYERS, BitAssignment, FloatLayers
from lcpaq.passes.cost_model import assignment_of, totals
from lcpaq.tools.api import quantize
from lcpaq.tools.models.coverage import COVERAGE_MODELS, Built
from lcpaq.tools.models.zoo import ModelBundle, bundle_from_return

#: Integer-graph ops that run on integer kernels and carry a costed layer's MACs.
INTEGER_LAYER_OPS = (iops.qconv2d, iops.qlinear, iops.qmatmul)
#: The integer graph's own ops (integer arithmetic, and the quantize / dequantize float edges).
INTEGER_OPS = frozenset(
    f for name, f in vars(iops).items() if callable(f) and not name.startswith("_") and getattr(f, "__module__", None) == iops.__name__
)
#: Ops that compute nothing (tuple items, symbolic sizes).
_NO_COMPUTE = frozenset({operator.getitem, torch.ops.aten.sym_size.int})
#: Cosine similarity of the W8A8 build's output with the fp32 model's (all outputs concatenated).
COSINE_BOUND = 0.99
#: Where float ops remain: |built - integer reference| <= FLOAT_ATOL * max|integer reference|...
FLOAT_ATOL = 1e-3
#: ... except where a float op's rounding moved a value across a quantization boundary: one code
#: flips and the layers after carry it, on at most FLIP_FRACTION of the output elements, each
#: within FLIP_ATOL of the output's largest magnitude.
FLIP_FRACTION, FLIP_ATOL = 0.01, 1e-2
STEPS = ("captured", "uniform", "size", "bops", "built", "bit_exact", "close_to_fp32", "latency")


def cpu_model() -> str:
    """This machine's CPU as /proc/cpuinfo names it (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def outputs(value: Any) -> list[np.ndarray]:
    """Every tensor of a model's output (tuples and lists flattened), as float64 arrays."""
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in outputs(v)]
    array = value.detach().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return [array.astype(np.float64)]


def cosine(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    x, y = np.concatenate([v.ravel() for v in a]), np.concatenate([v.ravel() for v in b])
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def float_ops(ig: fx.GraphModule) -> list[str]:
    """The ops of an integer graph that compute on float values: not its own integer ops,
    not moving codes (a node with a code domain), not a tuple item or a size."""
    return sorted({getattr(n.target, "__name__", str(n.target)) for n in ig.graph.nodes
                   if n.op == "call_function" and n.target not in INTEGER_OPS | _NO_COMPUTE and not DOMAIN.has(n)})


def integer_mac_fraction(qgm: fx.GraphModule, ig: fx.GraphModule) -> float:
    """MACs of the layers lowered to integer kernels (qconv2d / qlinear / qmatmul of ``ig``,
    traced to their source layer) over the MACs of every costed layer of ``qgm``."""
    macs = {layer.node.name: COST.get(layer.node).macs for layer in find_layers(qgm) if COST.has(layer.node)}
    integer = {n.meta.get("lcpaq.source") for n in ig.graph.nodes if n.op == "call_function" and n.target in INTEGER_LAYER_OPS}
    total = sum(macs.values())
    return sum(m for name, m in macs.items() if name in integer) / total if total else 0.0


def midpoint_budgets(qgm: fx.GraphModule) -> dict[str, tuple[str, float, float]]:
    """A ``size=`` and a ``bops=`` budget halfway between the uniform W8A8 graph ``qgm`` and the
    same with every quantized weight at 4 bits (layers left in float stay float): feasible, and
    binding since W8A8 exceeds it. Quantity -> (budget text, limit, W8A8 total)."""
    high = assignment_of(qgm)
    kinds = {layer.name: layer.kind for layer in find_layers(qgm)}
    low = {n: b if b.w_bits == FLOAT_BITS or kinds[n] == "matmul" else BitAssignment(4, b.a_bits) for n, b in high.items()}
    lo, hi = totals(qgm, low), totals(qgm, high)
    out = {}
    for quantity, unit in (("size", "B"), ("bops", "")):
        limit = float(int((lo[quantity] + hi[quantity]) / 2))
        out[quantity] = (f"{quantity}={limit:.0f}{unit}", limit, hi[quantity])
    return out


def _step(entry: dict[str, Any], step: str, fn: Callable[[], Any]) -> Any:
    """Run one step; record success, or failure with its one-line reason. None on failure."""
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001 (the report records every failure and goes on)
        entry["steps"][step] = False
        entry["failures"][step] = one_line(exc)
        return None
    entry["steps"][step] = True
    return value


def cover(name: str, builder: Callable[[], Built], target: Target, probes: int = 8, repeats: int = 20) -> dict[str, Any]:
    """One model through every step; each failure is recorded, not raised."""
    start = time.perf_counter()
    entry: dict[str, Any] = {"model": name, "steps": {}, "failures": {}}
    bundle = _step(entry, "load", lambda: bundle_from_return(f"coverage/{name}", builder()))
    if bundle is None:
        return _finish(entry, start)
    entry["steps"].pop("load")
    x = bundle.example_inputs
    _step(entry, "captured", lambda: capture(bundle.model, x, bundle.name))
    uniform = _step(entry, "uniform", lambda: quantize(bundle, target=target, bits="w8a8", build=False))
    if uniform is None:
        return _finish(entry, start)  # the budgets are set from the W8A8 graph's totals
    qgm = uniform.results[0].graph_module
    entry["float_layers"] = dict(FLOAT_LAYERS.get(qgm, FloatLayers()).layers)
    budgets = _step(entry, "budgets", lambda: midpoint_budgets(qgm))
    for quantity in ("size", "bops"):
        if budgets is None:
            entry["steps"][quantity], entry["failures"][quantity] = False, entry["failures"]["budgets"]
            continue
        text = entry[f"{quantity}_budget"] = budgets[quantity][0]
        _step(entry, quantity, lambda: quantize(bundle, target=target, budget=[text], probes=probes, build=False))
    entry["steps"].pop("budgets")
    entry["failures"].pop("budgets", None)
    built = _step(entry, "built", lambda: build_model(qgm, x, target))
    if built is None:
        return _finish(entry, start)
    _step(entry, "bit_exact", lambda: _compare(entry, bundle, built, qgm))

    def latencies() -> tuple[float, float]:
        fp32_gm = quantize(bundle, target=target, bits="w32a32", build=False).results[0].graph_module
        float_built = build_model(fp32_gm, x, target)  # every layer left in float
        return measure_latency(built, x, repeats=repeats).median, measure_latency(float_built, x, repeats=repeats).median

    timed = _step(entry, "latency", latencies)
    if timed is not None:
        entry["latency_w8a8_ms"], entry["latency_fp32_ms"] = round(timed[0] * 1e3, 4), round(timed[1] * 1e3, 4)
        entry["speedup_vs_fp32"] = round(timed[1] / timed[0], 2)
    return _finish(entry, start)


def _compare(entry: dict[str, Any], bundle: ModelBundle, built: BuiltModel, qgm: fx.GraphModule) -> bool:
    """Run the build on the example; record its difference from the integer reference (bit-exact
    step) and its cosine with the fp32 model (close-to-fp32 step)."""
    x = bundle.example_inputs
    got = outputs(built.run(*x))
    with torch.no_grad():
        ref, fp32 = outputs(built.integer_graph(*x)), outputs(bundle.model(*x))
    entry["float_ops"] = float_ops(built.integer_graph)
    entry["integer_mac_fraction"] = round(integer_mac_fraction(qgm, built.integer_graph), 4)
    diff = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    scale = max(float(np.abs(r).max()) for r in ref)
    entry["max_diff_vs_integer_reference"] = diff
    entry["bit_exact"] = agreement(got, ref, bool(entry["float_ops"]))
    entry["cosine_vs_fp32"] = round(cosine(got, fp32), 6)
    _check(entry, "close_to_fp32", entry["cosine_vs_fp32"] >= COSINE_BOUND, f"cosine {entry['cosine_vs_fp32']} < {COSINE_BOUND}")
    if entry["bit_exact"] == "no":
        raise AssertionError(f"max |built - integer reference| {diff:.3g} (output scale {scale:.3g})")
    return True


def agreement(got: list[np.ndarray], ref: list[np.ndarray], float_ops: bool) -> str:
    """How a build's outputs agree with the integer reference's: ``exact``; where float ops
    remain, ``within float rounding`` (:data:`FLOAT_ATOL`) or ``within float rounding, a code
    flipped`` (:data:`FLIP_FRACTION`, :data:`FLIP_ATOL`); else ``no``."""
    diffs = [np.abs(g - r) for g, r in zip(got, ref)]
    if all(not d.any() for d in diffs):
        return "exact"
    scale = max(1e-6, max(float(np.abs(r).max()) for r in ref))
    if not float_ops:
        return "no"
    if all(float(d.max()) <= FLOAT_ATOL * scale for d in diffs):
        return "within float rounding"
    off = sum(int((d > FLOAT_ATOL * scale).sum()) for d in diffs) / max(1, sum(d.size for d in diffs))
    return "within float rounding, a code flipped" if off <= FLIP_FRACTION and all(float(d.max()) <= FLIP_ATOL * scale for d in diffs) else "no"


def _check(entry: dict[str, Any], step: str, ok: bool, reason: str) -> None:
    entry["steps"][step] = ok
    if not ok:
        entry["failures"][step] = reason


def _finish(entry: dict[str, Any], start: float) -> dict[str, Any]:
    entry["seconds"] = round(time.perf_counter() - start, 2)
    return entry


def _mark(entry: dict[str, Any], step: str) -> str:
    return {True: "yes", False: "**no**", None: "-"}[entry["steps"].get(step)]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown page: one row per model, then every failure with its reason."""
    rows = report["models"]
    lines = [
        "# Model coverage", "",
        f"Generated by `{report.get('command', 'python -m lcpaq.tools.coverage_report --out docs')}`: every model of the "
        "coverage zoo (`tools/models/coverage.py`, `--model coverage/<name>`) captured, quantized uniform W8A8 and "
        "under a `size=` and a `bops=` budget (each halfway between the W8A8 graph and the same with 4-bit weights), and built W8A8 "
        f"for `{report['target']}`.", "",
        f"- Device: {report['device']}", *([f"- EMULATED ({report['emulation']}): the timings check the builds, they say nothing "
                                            "about a board's speed"] if report.get("emulation") else []),
        f"- TVM threads: {report['threads']}; batch 1; latency is the median of "
        f"{report['repeats']} timed runs", f"- {report['passing']} of {len(rows)} models pass every step; "
        f"whole run {report['seconds']:.0f} s", "",
        "Bit-exact: `exact` is `np.array_equal` with the integer reference; where float ops remain, "
        f"`within float rounding` is max |diff| <= {FLOAT_ATOL} x the output's largest magnitude; `a code flipped`: a "
        f"float op's rounding moved a value across a quantization boundary, so at most {FLIP_FRACTION:.0%} of the output "
        f"elements differ more, each by at most {FLIP_ATOL} x that magnitude. "
        f"cos: cosine of the W8A8 build's output with the fp32 model's (bound {COSINE_BOUND}). "
        "int MACs: the costed layers' MACs that run on integer kernels (qconv2d, qlinear, qmatmul); attention inside "
        "`F.scaled_dot_product_attention` (and `nn.MultiheadAttention`, which calls it) is one float op, not a costed "
        "layer, so its MACs are in neither count. "
        "Speed-up: fp32 build latency over W8A8 build latency (the same model with every layer left in float).", "",
        "| model | captured | uniform | size | bops | built | bit-exact | cos | int MACs | W8A8 ms | fp32 ms | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in rows:
        num = lambda k, f: f.format(e[k]) if k in e else "-"  # noqa: E731
        lines.append(
            f"| {e['model']} | " + " | ".join(_mark(e, s) for s in ("captured", "uniform", "size", "bops", "built"))
            + f" | {e.get('bit_exact', '-')} | {num('cosine_vs_fp32', '{:.4f}')} | {num('integer_mac_fraction', '{:.0%}')}"
            f" | {num('latency_w8a8_ms', '{:.3f}')} | {num('latency_fp32_ms', '{:.3f}')} | {num('speedup_vs_fp32', '{:.2f}x')} |"
        )
    failures = [(e["model"], s, r) for e in rows for s, r in e["failures"].items()]
    lines += ["", "## Failures", ""] + ([f"- {m}, {s}: {r}" for m, s, r in failures] or ["None."])
    kept = [(e["model"], n, why) for e in rows for n, why in e.get("float_layers", {}).items()]
    lines += ["", "## Layers uniform W8A8 left in float", ""] + ([f"- {m}, {n}: {why}" for m, n, why in kept] or ["None."])
    floats = [(e["model"], e["float_ops"]) for e in rows if e.get("float_ops")]
    lines += ["", "## Float ops left in the W8A8 builds", ""] + ([f"- {m}: {', '.join(ops)}" for m, ops in floats] or ["None."])
    return "\n".join(lines) + "\n"


def run(names: Sequence[str] | None = None, target: Target | None = None, repeats: int = 20, probes: int = 8) -> dict[str, Any]:
    """The report's data for ``names`` (default: the whole zoo)."""
    tgt = target or load_target(default_target_name())
    device = backend_for(tgt).device(tgt) if tgt.remote is not None else None
    start = time.perf_counter()
    models = [cover(n, COVERAGE_MODELS[n], tgt, probes, repeats) for n in (names or list(COVERAGE_MODELS))]
    passing = sum(all(e["steps"].get(s) for s in STEPS) for e in models)
    return {
        "target": tgt.name, "cpu": cpu_model(), "device": backend_for(tgt).device_name(tgt),
        "emulation": device.emulation if device is not None else None, "threads": int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1)),
        "repeats": repeats, "torch": torch.__version__, "passing": passing, "seconds": round(time.perf_counter() - start, 1),
        "models": models,
    }


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``coverage.md`` and ``coverage.json`` into ``out`` atomically (``coverage-<target>``
    for a target other than this host's default)."""
    out.mkdir(parents=True, exist_ok=True)
    stem = "coverage" if report["target"] == default_target_name() else f"coverage-{report['target']}"
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    atomic_write_json(js, report)
    atomic_write_text(md, render_markdown(report))
    return md, js


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lcpaq.tools.coverage_report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for coverage.md and coverage.json")
    parser.add_argument("--models", default="", help="comma-separated subset of the zoo (default: all)")
    parser.add_argument("--target", default=None, help="target to build for (default: this host's)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per latency")
    parser.add_argument("--rpc", metavar="HOST:PORT", help="the board of a target reached over RPC (e.g. the emulated one)")
    parser.add_argument("--tracker", metavar="HOST:PORT", help="a TVM tracker, with --key")
    parser.add_argument("--key", metavar="NAME", help="the board's key at the tracker")
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n] or None
    try:
        unknown = [n for n in names or () if n not in COVERAGE_MODELS]
        if unknown:
            raise ConfigError(f"unknown coverage model(s) {', '.join(unknown)}; choose from {', '.join(COVERAGE_MODELS)}")
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
        target = load_target(args.target or default_target_name()).reached_over(remote_from_options(args.rpc, args.tracker, args.key))
    except LcpaqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = run(names, target, args.repeats)
    report["command"] = " ".join(["python -m lcpaq.tools.coverage_report", *(sys.argv[1:] if argv is None else argv)])
    md, _ = write(report, args.out)
    print(f"{report['passing']} of {len(report['models'])} models pass every step; wrote {md}")
    for e in report["models"]:
        for step, reason in e["failures"].items():
            print(f"  {e['model']}, {step}: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
