"""The ``lcpaq`` command. Every failure is one line on stderr and exit code 2 (an interrupt: 130),
and leaves the outputs as they were; ``--debug`` adds the traceback and TVM's native logs."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from typing import Sequence

from lcpaq.hw_targets.host import default_target_name
from lcpaq.ir.errors import LOGGER, LcpaqError, one_line


_DEBUG_HELP = "on failure, print the full traceback; show TVM's native logs (hidden otherwise)"


def _add_remote(p: argparse.ArgumentParser) -> None:
    """--rpc / --tracker / --key: the board a target of device "rpc" runs on (TVM RPC)."""
    g = p.add_argument_group("board (targets reached over TVM RPC, e.g. arm-a76)")
    g.add_argument("--rpc", metavar="HOST:PORT", help="a TVM RPC server on the board (an emulated board here: `make arm-board`)")
    g.add_argument("--tracker", metavar="HOST:PORT", help="a TVM RPC tracker of a device farm (with --key)")
    g.add_argument("--key", metavar="NAME", help="the device key the boards registered with the tracker")


def _add_assignment(p: argparse.ArgumentParser) -> None:
    """How ``build`` and ``export`` choose the precisions: --bits, --budget or --pipeline."""
    p.add_argument("--bits", default="w8a8", metavar="wNaM", help="uniform precision, without --budget (default w8a8)")
    p.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE", help="mixed precision by ILP, as for quantize")
    p.add_argument("--latency-table", metavar="FILE", help="latency table: latency budgets and the predicted latency")
    p.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "mse", "entropy"])
    p.add_argument("--probes", type=int, default=64, metavar="N", help="Hutchinson probes per layer (with --budget)")
    p.add_argument("--pipeline", metavar="SPEC", help="full pass pipeline instead of --bits/--budget")


def build_parser() -> argparse.ArgumentParser:
    host_target = default_target_name()  # the default --target of quantize, build and profile
    parser = argparse.ArgumentParser(prog="lcpaq", description="Hardware-aware mixed-precision quantization compiler.")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("quantize", help="quantize a model and report cost and quality",
                       description="Capture a model, cost and calibrate it, fake-quantize it and report quality.")
    q.add_argument("--model", default="resnet-digits", metavar="SPEC",
                   help="built-in name (resnet-digits, resnet18, resnet50, mobilenetv2, minilm) or path/to/file.py:function")
    q.add_argument("--target", default=host_target, metavar="NAME",
                   help="hardware target name or .toml file (see `lcpaq targets`; default: this host's, %(default)s)")
    q.add_argument("--bits", default="w8a8", metavar="wNaM", help="uniform precision of the primary configuration, without --budget (default w8a8)")
    q.add_argument("--compare", action="append", default=[], metavar="wNaM[,wNaM]",
                   help="further uniform precisions to evaluate and report beside the primary one")
    q.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                   help="mixed precision by ILP under a budget: size=0.3x (of fp32), bops=0.5int8 (of uniform INT8), "
                        "size=2MB, act_memory=64KiB; repeat for several")
    q.add_argument("--latency-table", metavar="FILE", help="per-layer latency table from `lcpaq profile`: enables latency= budgets")
    q.add_argument("--probes", type=int, default=64, metavar="N", help="Hutchinson probes per layer, at most (default 64)")
    q.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "mse", "entropy"],
                   help="activation range estimator (default minmax)")
    q.add_argument("--pipeline", metavar="SPEC", help="full pass pipeline, e.g. 'fold-bn,shape-prop,cost,quant-scheme,calibrate{method=mse},uniform{w=4,a=8},fake-quant'")
    q.add_argument("--search", default="none", choices=["none", "proxy", "full", "haq"],
                   help="search the quantization hyperparameters (needs --budget): 'proxy' scores trials with a cheap "
                        "label-free proxy and evaluates its best (--confirm) on the validation metric; 'full' scores each on the "
                        "validation metric; 'haq' retrains each one epoch on the training data first (HAQ's protocol, the "
                        "existing-method baseline)")
    q.add_argument("--trials", type=int, default=40, metavar="N", help="search trials (default 40)")
    q.add_argument("--proxy", default="cosine", choices=["hessian", "fisher", "sqnr", "cosine", "kl"],  # search_harness.PROXIES
                   help="search proxy (default cosine: output cosine to fp32 on one calibration batch, the best ranked in "
                        "docs/search_benchmark.md; hessian and fisher: no forward pass per trial)")
    q.add_argument("--confirm", type=int, default=1, metavar="K",  # search.CONFIRM
                   help="proxy search: evaluate the proxy's best K configurations on the validation metric and keep the "
                        "best of them (default 1: the proxy's winner; more guard against a weak proxy, one evaluation each)")
    q.add_argument("--storage", metavar="URL",
                   help="keep the search's trials in optuna RDB storage (sqlite:///study.db, or a PostgreSQL URL): "
                        "an interrupted search resumes there, and workers given the same URL share its trials")
    q.add_argument("--study", metavar="NAME", help="the stored study's name (default: derived from the model and every search setting)")
    q.add_argument("--space", metavar="FILE", help="search space file (default: the built-in tools/search_space.toml)")
    q.add_argument("--space-set", action="append", default=[], metavar="NAME=a|b",
                   help="narrow or widen one search dimension, e.g. calibration=minmax|mse")
    q.add_argument("--distill", type=int, default=0, metavar="STEPS",
                   help="fine-tune the result for STEPS steps with the fp32 model as teacher (default 0: off)")
    q.add_argument("--out", metavar="DIR", help="write report.json and report.md here")
    q.add_argument("--export", metavar="FORMAT", help="also write the primary result as DIR/model.onnx (FORMAT onnx; needs --out)")
    q.add_argument("--dump-graphs", metavar="DIR", help="write the graph after each pass that changes it")
    q.add_argument("--seed", type=int, default=0, help="seed of every random generator (default 0)")
    q.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bars on stderr (default: when stderr is a terminal)")
    q.add_argument("--build", action=argparse.BooleanOptionalAction, default=None,
                   help="compile each configuration with TVM, check it against the integer reference and measure its "
                        "latency (default: when the target is this machine, or its board is given)")
    q.add_argument("--build-trials", type=int, default=0, metavar="N",
                   help="MetaSchedule trials per conv/dense kernel when building (default 0: hand schedules)")
    q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    _add_remote(q)
    q.set_defaults(handler="quantize_command")

    b = sub.add_parser("build", help="quantize a model and export the deployable library for the target",
                       description="Quantize (uniform --bits, or --budget by ILP, or a --pipeline), lower to integer "
                                   "ops, compile with TVM for the target and write a shared library.")
    b.add_argument("--model", default="resnet-digits", metavar="SPEC", help="built-in name or path/to/file.py:function")
    b.add_argument("--target", default=host_target, metavar="NAME", help="a target this machine reaches (default %(default)s)")
    b.add_argument("-o", "--output", required=True, metavar="FILE", help="shared library to write, e.g. model.so")
    _add_assignment(b)
    b.add_argument("--trials", type=int, default=0, metavar="N",
                   help="MetaSchedule trials per conv/dense kernel (default 0: hand schedules); records are cached and reused")
    b.add_argument("--glue", choices=("integer", "float"), default="integer",
                   help="layer norm, softmax and GELU on integer codes where the target's backend has them (default), or in float32")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    b.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    _add_remote(b)
    b.set_defaults(handler="build_command")

    e = sub.add_parser("export", help="quantize a model and export it as a QDQ ONNX model",
                       description="Quantize (uniform --bits, or --budget by ILP, or a --pipeline) and write the fake-quantized "
                                   "graph as ONNX with QuantizeLinear/DequantizeLinear at each layer's precision (opset 21), "
                                   "checked by onnx.checker and ONNX Runtime.")
    e.add_argument("--model", default="resnet-digits", metavar="SPEC", help="built-in name or path/to/file.py:function")
    e.add_argument("--target", default=host_target, metavar="NAME", help="target whose precisions the assignment uses (default %(default)s)")
    e.add_argument("-o", "--output", required=True, metavar="FILE", help="ONNX file to write, e.g. model.onnx")
    e.add_argument("--format", default="onnx", metavar="FORMAT", help="export format (onnx)")
    e.add_argument("--onnx-flavor", default="qdq", metavar="FLAVOR",
                   help="qdq (any precision ONNX types hold, exact) or tensorrt (symmetric int8 Q/DQ only)")
    _add_assignment(e)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty())
    e.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    _add_remote(e)
    e.set_defaults(handler="export_command")

    p = sub.add_parser("profile", help="measure per-layer latency on the target's device and write a latency table",
                       description="Time every quantizable layer of a model on the target's device (this machine, or a "
                                   "board over --rpc/--tracker) at fp32 and at each precision the target computes, batch 1, "
                                   "and write a JSON latency table. Emulated boards are refused: their timings predict nothing.")
    p.add_argument("--model", default="resnet-digits", metavar="SPEC",
                   help="built-in name (resnet-digits, resnet18, resnet50, mobilenetv2, minilm) or path/to/file.py:function")
    p.add_argument("--target", default=host_target, metavar="NAME", help="a target this machine reaches (default %(default)s)")
    p.add_argument("--out", required=True, metavar="FILE", help="latency table to write (JSON, written atomically)")
    p.add_argument("--trials", type=int, default=0, metavar="N",
                   help="MetaSchedule trials per kernel; 0 (default) times the untuned hand schedules. Tuning "
                        "databases are kept under the cache directory and reused")
    p.add_argument("--repeats", type=int, default=10, metavar="N", help="timed repeats per kernel; the median is kept (default 10)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    _add_remote(p)
    p.set_defaults(handler="profile_command")

    sub.add_parser("targets", help="list hardware targets and their precisions").set_defaults(handler="targets_command")
    sub.add_parser("models", help="list built-in models").set_defaults(handler="models_command")
    sub.add_parser("passes", help="list passes with what they read and write").set_defaults(handler="passes_command")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    level, handler = LOGGER.level, logging.StreamHandler()
    if debug:
        LOGGER.setLevel(logging.DEBUG)  # tracebacks, and TVM's native logs (lcpaq.ir.errors.debugging)
        LOGGER.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            from lcpaq.tools import commands

            return getattr(commands, args.handler)(args)
    except LcpaqError as exc:
        return _fail(" ".join(str(exc).split("\n")), debug)
    except KeyboardInterrupt:
        return _fail("interrupted", debug, code=130, prefix="lcpaq: ")
    except Exception as exc:  # noqa: BLE001 (whatever else fails is still one line; --debug shows where)
        return _fail(f"{one_line(exc)} (run again with --debug for the traceback)", debug)
    finally:
        LOGGER.setLevel(level)
        LOGGER.removeHandler(handler)


def _fail(message: str, debug: bool, code: int = 2, prefix: str = "lcpaq: error: ") -> int:
    """One line on stderr (after the traceback with ``--debug``); the exit code."""
    if debug:
        traceback.print_exc()
    print(f"{prefix}{message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
