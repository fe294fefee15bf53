"""Pipelines: an ordered list of passes, built in code (one function per phase, taking the
target, as TVM's relax pipelines) or from a text spec for the CLI:

    fold-bn,shape-prop,cost,quant-scheme,calibrate{method=percentile,percentile=99.9},uniform{w=4,a=8},fake-quant

``quant-scheme`` sets the weight granularity and activation symmetry every quantizer uses; the
passes that build quantizer specs (hessian, uniform, ilp) read it, so a spec without it stops
at the first of them with an error naming the pass to run first.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin

import torch.fx as fx
from tqdm.auto import tqdm

from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError
from lcpaq.ir.precision import Granularity
from lcpaq.passes.assign_uniform import UniformBits
from lcpaq.passes.base import Pass, PassResult, registered_passes
from lcpaq.passes.calibrate import Calibrate
from lcpaq.passes.context import PassContext
from lcpaq.passes.cost import Cost
from lcpaq.passes.fake_quant import FakeQuant
from lcpaq.passes.fold_bn import FoldBatchNorm
from lcpaq.passes.hessian import HessianSensitivity
from lcpaq.passes.ilp import ILPAssign
from lcpaq.passes.instruments import PassInstrument
from lcpaq.passes.pareto import ParetoSweep
from lcpaq.passes.quant_scheme import SetQuantScheme
from lcpaq.passes.shape_prop import ShapeProp


@dataclass
class Pipeline:
    passes: list[Pass]
    instruments: list[PassInstrument] = field(default_factory=list)

    def __call__(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        modified = False
        bar = tqdm(self.passes, desc="passes", disable=not ctx.progress, leave=False)
        for p in bar:
            bar.set_postfix_str(p.name)
            for inst in self.instruments:
                inst.before_pass(p, gm)
            result = p(gm, ctx)
            for inst in self.instruments:
                inst.after_pass(p, gm, result)
            gm, modified = result.graph_module, modified or result.modified
        return PassResult(gm, modified)

    def spec(self) -> str:
        return ",".join(p.spec() for p in self.passes)

    @classmethod
    def from_spec(cls, spec: str, instruments: list[PassInstrument] | None = None) -> "Pipeline":
        return cls(parse_spec(spec), instruments or [])


# --- phases ---------------------------------------------------------------------------------

def prepare_phase(target: Target) -> list[Pass]:
    """Canonicalise the graph and annotate shapes and costs."""
    return [FoldBatchNorm(), ShapeProp(), Cost()]


def calibration_phase(
    target: Target, method: str = "minmax", weight_granularity: Granularity = "per-channel", act_symmetric: bool = False
) -> list[Pass]:
    """Set the quantization scheme and calibrate activation ranges at every activation width
    the target offers."""
    return [SetQuantScheme(weight_granularity=weight_granularity, act_symmetric=act_symmetric), Calibrate(method=method)]


def uniform_phase(target: Target, w_bits: int, a_bits: int, keep_float: tuple[str, ...] = (),
                  layers: tuple[tuple[str, int, int], ...] = ()) -> list[Pass]:
    """Assign one precision to every layer (but those in ``keep_float``, and ``(name, w, a)``
    of ``layers``) and rewrite to the fake-quantized graph."""
    return [UniformBits(w=w_bits, a=a_bits, keep_float=keep_float, layers=layers), FakeQuant()]


def sensitivity_phase(target: Target, probes: int = 64, sweep_points: int = 50, table: str = "") -> list[Pass]:
    """Hessian sensitivity of every layer at the target's widths, and the Pareto frontier
    (against latency too, given a latency table)."""
    return [HessianSensitivity(probes=probes, min_probes=min(8, probes)), ParetoSweep(points=sweep_points, table=table)]


def ilp_phase(target: Target, budgets: dict[str, str], table: str = "") -> list[Pass]:
    """Assign precisions by ILP under ``budgets`` ({"size": "0.3x", ...}) and rewrite."""
    return [ILPAssign(**budgets, table=table), FakeQuant()]


# --- text specs -----------------------------------------------------------------------------

def parse_spec(spec: str) -> list[Pass]:
    """Parse ``name{key=value,...},name,...`` into pass instances."""
    passes = []
    for item in _split_top_level(spec):
        name, _, rest = item.partition("{")
        name = name.strip()
        registry = registered_passes()
        if name not in registry:
            raise ConfigError(f"unknown pass {name!r} in pipeline spec; valid passes: {', '.join(registry)}")
        if rest and not rest.endswith("}"):
            raise ConfigError(f"pass {name!r}: options must be written {name}{{key=value,...}}")
        passes.append(_instantiate(registry[name], rest[:-1] if rest else ""))
    if not passes:
        raise ConfigError("empty pipeline spec")
    return passes


def _split_top_level(spec: str) -> list[str]:
    items, depth, current = [], 0, ""
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"unbalanced '}}' in pipeline spec {spec!r}")
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    if depth:
        raise ConfigError(f"unbalanced '{{' in pipeline spec {spec!r}")
    items.append(current.strip())
    return [i for i in items if i]


def _instantiate(cls: type[Pass], options: str) -> Pass:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for pair in filter(None, (p.strip() for p in options.split(","))):
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or key not in fields:
            valid = ", ".join(fields) or "none"
            raise ConfigError(f"pass '{cls.name}' has no option {key!r}; its options: {valid}")
        kwargs[key] = _convert(cls.name, key, value.strip(), hints[key])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"pass '{cls.name}': {exc}") from exc


def _convert(pass_name: str, key: str, value: str, hint: Any) -> Any:
    origin = get_origin(hint)
    try:
        if origin is Literal:
            choices = get_args(hint)
            if value not in [str(c) for c in choices]:
                raise ValueError(f"choose from {', '.join(map(str, choices))}")
            return next(c for c in choices if str(c) == value)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in get_args(hint) if a is not type(None)]
            return None if value.lower() == "none" else _convert(pass_name, key, value, inner[0])
        if origin is tuple:
            (inner, *_) = get_args(hint)
            return tuple(_convert(pass_name, key, v, inner) for v in value.split(":") if v)
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return value.lower() in ("true", "1", "yes")
        if hint in (int, float, str):
            return hint(value)
    except ValueError as exc:
        raise ConfigError(f"pass '{pass_name}': bad value {value!r} for option {key!r}: {exc}") from exc
    raise ConfigError(f"pass '{pass_name}': option {key!r} cannot be set from a spec")
