"""Model specs: a built-in name, or ``path/to/file.py:function``.

A user function returns ``(model, example_inputs)`` and may add ``data`` (an iterable of input
tuples, or of single tensors, used for calibration and evaluation) and ``evaluate`` (a function
of a model returning a metric, or a dict of metrics, where higher is better)."""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lcpaq.ir.errors import ConfigError

Batch = tuple[Any, ...]
DATA_FREE_CALIB_BATCHES = 8
DATA_FREE_EVAL_BATCHES = 4
DATA_FREE_ROWS = 32  # rows per random batch, where the model takes a batch dimension
Evaluate = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class ModelBundle:
    """A model with what lcpaq needs around it. Without ``evaluate``, quality is measured
    data-free: output SQNR and cosine similarity against the fp32 model on ``eval_batches``."""

    name: str
    model: torch.nn.Module
    example_inputs: Batch
    calib_batches: tuple[Batch, ...]
    eval_batches: tuple[Batch, ...]
    evaluate: Evaluate | None = None
    labelled: bool = False
    calib_labels: tuple[torch.Tensor, ...] | None = None
    #: the training data (batches, and their labels where the model has them) that a
    #: fine-tuning search baseline retrains each candidate on; empty: the calibration batches
    train_batches: tuple[Batch, ...] = ()
    train_labels: tuple[torch.Tensor, ...] | None = None


def _resnet_digits(progress: bool) -> ModelBundle:
    from lcpaq.tools.models import digits

    model = digits.trained_model(progress=progress)
    data = digits.load_data()
    calib = tuple((data.x_train[i : i + 32],) for i in range(0, 256, 32))
    evals = tuple((data.x_test[i : i + 120],) for i in range(0, len(data.x_test), 120))
    labels = tuple(data.y_train[i : i + 32] for i in range(0, 256, 32))
    evaluate = lambda m: {"accuracy": digits.accuracy(m, data.x_test, data.y_test)}  # noqa: E731
    batch = digits.DigitsRecipe().batch_size
    train = tuple((data.x_train[i : i + batch],) for i in range(0, len(data.x_train), batch))
    train_labels = tuple(data.y_train[i : i + batch] for i in range(0, len(data.x_train), batch))
    return ModelBundle("resnet-digits", model, (data.x_test[:1],), calib, evals, evaluate, labelled=True, calib_labels=labels,
                       train_batches=train, train_labels=train_labels)


def _random_image_model(name: str, build: Callable[[], torch.nn.Module], size: int = 224) -> ModelBundle:
    """An architecture with seeded random weights (no pretrained weights ship offline); batch
    norm statistics are settled on random images so activations have realistic scales."""
    torch.manual_seed(0)
    model = build()
    gen = torch.Generator().manual_seed(1)
    _settle_batchnorm(model, [torch.randn(4, 3, size, size, generator=gen) for _ in range(2)])
    batches = tuple((torch.randn(2, 3, size, size, generator=gen),) for _ in range(4))
    return ModelBundle(name, model, (torch.randn(1, 3, size, size, generator=gen),), batches[:2], batches[2:])


def _settle_batchnorm(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.eval()


def _minilm(progress: bool) -> ModelBundle:
    from lcpaq.tools.models import minilm

    model, tokenizer = minilm.load()
    sents = minilm.SENTENCES
    calib = tuple(minilm.encode(tokenizer, sents[i : i + 8]) for i in range(0, 16, 8))
    evals = tuple(minilm.encode(tokenizer, sents[i : i + 8]) for i in range(16, len(sents), 8))
    return ModelBundle("minilm", model, minilm.encode(tokenizer, sents[:1]), calib, evals)


def _builtins() -> dict[str, Callable[[bool], ModelBundle]]:
    from lcpaq.tools.models.mobilenetv2 import mobilenetv2
    from lcpaq.tools.models.resnet import resnet18, resnet50

    return {
        "resnet-digits": _resnet_digits,
        "resnet18": lambda p: _random_image_model("resnet18", resnet18),
        "resnet50": lambda p: _random_image_model("resnet50", resnet50),
        "mobilenetv2": lambda p: _random_image_model("mobilenetv2", mobilenetv2),
        "minilm": _minilm,
    }


BUILTIN_MODELS = ("resnet-digits", "resnet18", "resnet50", "mobilenetv2", "minilm")


def load_model(spec: str, progress: bool = False) -> ModelBundle:
    """Resolve a model spec to a bundle; every bad spec is one ConfigError line."""
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        return _from_file(spec)
    if spec.startswith("coverage/"):  # the coverage zoo (lcpaq.tools.models.coverage)
        from lcpaq.tools.models.coverage import COVERAGE_MODELS

        name = spec.split("/", 1)[1]
        if name not in COVERAGE_MODELS:
            raise ConfigError(f"unknown coverage model {name!r}; choose from {', '.join(COVERAGE_MODELS)}")
        return bundle_from_return(spec, COVERAGE_MODELS[name]())
    builtins = _builtins()
    if spec not in builtins:
        raise ConfigError(f"unknown model {spec!r}; built-in models: {', '.join(BUILTIN_MODELS)}, coverage/<name>, or path/to/file.py:function")
    return builtins[spec](progress)


def _from_file(spec: str) -> ModelBundle:
    path_str, func_name = spec.rsplit(":", 1)
    path = Path(path_str)
    if not path.is_file():
        raise ConfigError(f"model file {path} does not exist")
    module_name = f"lcpaq_user_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader)
    sys.modules[module_name] = module
    try:
        loader.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"model file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"model file {path} has no function {func_name!r}")
    returned = func()
    return bundle_from_return(f"{path.stem}:{func_name}", returned)


def bundle_from_return(name: str, returned: Any) -> ModelBundle:
    """Build a bundle from ``(model, example_inputs[, data[, evaluate]])``."""
    if not isinstance(returned, tuple) or not 2 <= len(returned) <= 4:
        raise ConfigError(f"{name} must return (model, example_inputs) or (model, example_inputs, data, evaluate)")
    model, example, data, evaluate = (*returned, None, None)[:4]
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{name} returned a {type(model).__name__} where a torch.nn.Module belongs")
    example = _as_batch(example)
    batches = tuple(_as_batch(b) for b in data) if data is not None else ()
    if batches:
        half = max(1, len(batches) // 2)
        calib, evals = batches[:half], batches[half:] or batches[:half]
    else:  # data-free: random inputs like the example, disjoint for calibration and evaluation
        rows = DATA_FREE_ROWS if _accepts_rows(model, example, DATA_FREE_ROWS) else None
        gen = torch.Generator().manual_seed(0)
        calib = tuple(_like(example, gen, rows) for _ in range(DATA_FREE_CALIB_BATCHES))
        evals = tuple(_like(example, gen, rows) for _ in range(DATA_FREE_EVAL_BATCHES))
    wrapped = None
    if evaluate is not None:
        def wrapped(m: torch.nn.Module) -> dict[str, float]:
            out = evaluate(m)
            return {k: float(v) for k, v in out.items()} if isinstance(out, dict) else {"metric": float(out)}
    return ModelBundle(name, model.eval(), example, calib, evals, wrapped, labelled=evaluate is not None)


def _as_batch(x: Any) -> Batch:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _accepts_rows(model: torch.nn.Module, example: Batch, rows: int) -> bool:
    """Whether the model runs on the example widened to ``rows`` along dim 0 (a batch dim)."""
    if not all(isinstance(x, torch.Tensor) and x.dim() >= 1 for x in example):
        return False
    try:
        with torch.no_grad():
            model(*(_widen(x, rows) for x in example))
        return True
    except Exception:
        return False


def _widen(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x[:1].expand(rows, *x.shape[1:]).contiguous()


def _like(example: Batch, gen: torch.Generator, rows: int | None = None) -> Batch:
    """Random inputs shaped like the examples (``rows`` along dim 0 if given): Gaussian for
    float tensors, uniform integers within the examples' range for integer tensors."""
    out = []
    for x in example:
        if not isinstance(x, torch.Tensor):
            out.append(x)
            continue
        shape = x.shape if rows is None else (rows, *x.shape[1:])
        if x.is_floating_point():
            out.append(torch.randn(shape, generator=gen, dtype=x.dtype))
        else:
            lo, hi = (int(x.min()), int(x.max()) + 1) if x.numel() else (0, 1)
            out.append(torch.randint(lo, hi, shape, generator=gen, dtype=x.dtype))
    return tuple(out)
