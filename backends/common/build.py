"""Build a fake-quantized graph for a hardware target: integer graph -> Relax -> executable, each
step asked of the target's backend (:func:`~lcpaq.backends.common.backend.backend_for`).

:func:`build_model` is the whole backend path; :class:`BuiltModel` runs the result, exports it as
a shared library (``lcpaq build -o model.so``) and is what :mod:`lcpaq.backends.common.measure` times.
A library written by :meth:`BuiltModel.export` is loaded back with :func:`load_library`.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.fx as fx
import tvm
from tvm import relax

from lcpaq.backends.common.backend import Backend, Device, backend_for
from lcpaq.backends.common.integerize import integerize
from lcpaq.backends.common.relax_lower import lower_to_relax
from lcpaq.hw_targets.target import Target
from lcpaq.ir.errors import ConfigError, CorruptFileError, debugging


@contextlib.contextmanager
def native_stderr_quiet() -> Iterator[None]:
    """Silence what TVM's native code writes to file descriptor 2 for the duration of the block
    (``Scope Saving/Loaded`` per constant on export and load, "BlockBuilder destroyed with
    remaining blocks!", "Fast mode segfaults ..." from ``take``, MetaSchedule's logs), unless
    lcpaq runs with ``--debug``. Python's ``sys.stderr`` keeps the real stream (progress bars and
    warnings still show), Python errors still raise, and what a failure leaves to be destroyed
    (TVM objects in the traceback's frames, whose destructors log) is released inside the block."""
    if debugging():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    try:
        with open(os.devnull, "w") as null, os.fdopen(os.dup(saved), "w", closefd=True) as visible:
            os.dup2(null.fileno(), 2)
            sys.stderr = visible
            try:
                yield
            except BaseException as exc:
                traceback.clear_frames(exc.__traceback__)
                gc.collect()
                raise
            finally:
                visible.flush()
                sys.stderr = python_stderr
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _as_numpy(x: Any) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))


@dataclass
class BuiltModel:
    """A compiled model: ``executable`` holds the Relax VM bytecode and the kernels. ``device``
    is where it runs (None: built only, ``not_run`` says why: a board target with no board given);
    ``backend`` exports it (cross-compiling families link with their toolchain)."""

    executable: Any
    device: Device | None
    input_shapes: list[tuple[int, ...]]
    target: str
    kernels: int
    integer_graph: fx.GraphModule | None = None
    input_dtypes: list[str] | None = None
    schedule_choices: dict[str, str] | None = None  # tuned builds: kernel tag -> "tuned" or "hand" (faster)
    float_fallbacks: dict[str, str] | None = None  # node (of the captured graph) that runs in float -> why
    backend: Backend | None = None
    not_run: str | None = None
    module: Any = None  # the loaded library, where it was loaded rather than built

    def __post_init__(self) -> None:
        self._vm: relax.VirtualMachine | None = None

    def _runs_on(self) -> Device:
        """The device; ConfigError saying why for a model built only."""
        if self.device is None:
            raise ConfigError(f"built for {self.target}, not run: {self.not_run or 'no device'}")
        return self.device

    @property
    def vm(self) -> relax.VirtualMachine:
        device = self._runs_on()
        if self._vm is None:
            if self.module is None:
                with native_stderr_quiet():
                    self.module = device.module(self.executable, self._export_to)
            self._vm = relax.VirtualMachine(self.module, device.dev)
        return self._vm

    def _export_to(self, executable: Any, path: str) -> None:
        if self.backend is None:
            executable.export_library(path)
        else:
            self.backend.export(executable, path)

    def inputs(self, *xs: Any) -> list[Any]:
        """TVM tensors of ``xs``, checked against the built shapes (one line on a mismatch)."""
        device = self._runs_on()
        if len(xs) != len(self.input_shapes):
            raise ConfigError(f"the model was built for {len(self.input_shapes)} inputs, got {len(xs)}")
        out = []
        dtypes = self.input_dtypes or ["float32"] * len(xs)
        for x, shape, dtype in zip(xs, self.input_shapes, dtypes):
            a = _as_numpy(x).astype(dtype, copy=False)
            if tuple(a.shape) != tuple(shape):
                raise ConfigError(f"the model was built for input shape {tuple(shape)}, got {tuple(a.shape)}")
            out.append(device.tensor(a))
        return out

    def run(self, *xs: Any) -> np.ndarray | tuple[np.ndarray, ...]:
        """Outputs as numpy arrays (one array for a single output)."""
        args = self.inputs(*xs)  # (a model built only says so here)
        if self.device.remote is not None:  # over RPC the outputs come back one by one (a tuple stays remote)
            from lcpaq.backends.common.remote import died

            try:
                self.vm.set_input("main", *args)
                self.vm.invoke_stateful("main")
                out = self.vm.get_outputs("main")
            except Exception as exc:  # noqa: BLE001 (TVM's RPC errors)
                raise (died(self.device, exc) or exc) from exc
        else:
            out = self.vm["main"](*args)
        arrays = tuple(o.numpy() for o in out) if not hasattr(out, "numpy") else (out.numpy(),)
        return arrays[0] if len(arrays) == 1 else arrays

    @property
    def asm(self) -> str:
        """Assembly of the compiled kernels (the VM's imported llvm modules; empty for others)."""
        mod = getattr(self.executable, "mod", self.executable)
        return "\n".join(m.inspect_source("asm") for m in mod.imports if m.kind == "llvm")

    def export(self, path: str | Path) -> Path:
        """Write the deployable shared library to ``path`` atomically (a temporary file, then a rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=path.suffix or ".so", dir=path.parent, prefix=f".{path.name}.")
        os.close(fd)
        try:
            with native_stderr_quiet():
                self._export_to(self.executable, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def build_model(
    gm: fx.GraphModule, example_inputs: Sequence[Any], target: Target, trials: int = 0, batch: int | None = 1,
    glue: str = "integer",
) -> BuiltModel:
    """Compile a fake-quantized graph for ``target`` with its backend, for the shapes of
    ``example_inputs`` with the batch dimension set to ``batch`` (None: as given).

    ``trials`` > 0 tunes the backend's tunable kernels with MetaSchedule (records reused from
    the tuning cache). ``glue`` is ``integer`` (layer norm, softmax and GELU on codes where the
    backend has integer glue) or ``float`` (they run in float32). Guarantees: the executable computes the integer graph of ``gm``
    bit-exactly where it has no float op (see ``tests/backends/test_build.py``). Raises
    ConfigError if the target has no backend or its device cannot be reached (a board target
    with no board given is built and not run: ``BuiltModel.not_run``), LoweringError naming the
    node for an op that has no lowering."""
    backend = backend_for(target)
    backend.check_trials(trials)
    not_run = backend.unavailable(target) if target.device != "local" else None
    device = None if not_run else backend.device(target)
    tvm_target = backend.tvm_target(target)
    arrays = [_as_numpy(x) for x in example_inputs]
    shapes = [tuple(a.shape) for a in arrays]
    dtypes = [str(a.dtype) for a in arrays]
    if batch is not None:
        shapes = [(batch, *s[1:]) for s in shapes]
    if glue not in ("integer", "float"):
        raise ConfigError(f"glue is 'integer' or 'float', got {glue!r}")
    ig = integerize(gm, backend.conventions, glue=None if glue == "integer" else False)
    choices: dict[str, str] = {}
    fallbacks: dict[str, str] = {}
    with native_stderr_quiet():  # TVM's native warnings and tuning logs: shown with --debug only
        mod = lower_to_relax(ig, shapes, backend, tvm_target, trials, dtypes, choices, fallbacks)
        kernels = sum(1 for gv in mod.functions if gv.name_hint.startswith("lcpaq_"))
        executable = backend.compile(mod, tvm_target)
    return BuiltModel(executable, device, shapes, target.name, kernels, ig, dtypes, choices, fallbacks, backend, not_run)


def load_library(path: str | Path, target: Target, input_shapes: Sequence[Sequence[int]],
                 input_dtypes: Sequence[str] | None = None) -> BuiltModel:
    """A model exported by :meth:`BuiltModel.export` for ``target``, to run on its device;
    unreadable files are CorruptFileError with the path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no built model at {path}")
    backend = backend_for(target)
    device = backend.device(target)
    try:
        with native_stderr_quiet():
            if device.remote is None:
                lib = tvm.runtime.load_module(str(path))
            else:  # uploaded as it is: a library built for the board does not load here
                device.remote.upload(str(path))
                lib = device.remote.load_module(path.name)
    except Exception as exc:  # noqa: BLE001 (TVM raises its own error types)
        raise CorruptFileError(f"built model {path} cannot be loaded: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    dtypes = list(input_dtypes) if input_dtypes else None
    return BuiltModel(None, device, [tuple(s) for s in input_shapes], target.name, 0, None, dtypes, backend=backend, module=lib)
