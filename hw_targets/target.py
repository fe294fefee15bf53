"""Hardware targets, described as data (one TOML file per target) and loaded into a frozen
dataclass. Passes ask a Target what it can run; they never branch on its name."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.ir.meta import FLOAT_BITS, BitAssignment, check_bits
from lcpaq.hw_targets.remote import RemoteDevice

TARGET_DIR = Path(__file__).parent
OP_KINDS = ("conv", "linear", "matmul", "embedding")
_REQUIRED_KINDS = ("conv", "linear", "matmul")  # an embedding table defaults to linear's widths


@dataclass(frozen=True)
class Target:
    """What a device executes and how it is reached.

    ``native_weight_bits[kind]``: weight widths an op kind computes on directly.
    ``storage_weight_bits``: narrower widths kept only in storage and unpacked to the smallest
    native width before compute (they save memory, not time). ``act_bits``: activation widths.
    Floating point (32) is always allowed. ``required_features``: CPU flags (as in
    ``/proc/cpuinfo``) a local device must have; see :mod:`lcpaq.hw_targets.host`.
    ``backend``: the backend family that builds for the target (``x86-vnni``...; see
    :mod:`lcpaq.backends.common.backend`), None for a simulation-only target. ``tvm_target`` is the
    target's TVM configuration as written (``mcpu = "native"`` is resolved by the backend).
    ``device``: ``local`` (this machine's CPU), ``rpc`` (a board reached over TVM RPC: ``remote``)
    or ``cuda`` (an NVIDIA GPU of the machine that runs the library; built anywhere nvcc is)."""

    name: str
    description: str
    tvm_target: dict[str, Any]
    native_weight_bits: dict[str, tuple[int, ...]]
    storage_weight_bits: tuple[int, ...]
    act_bits: tuple[int, ...]
    memory_bytes: int | None = None
    device: str = "local"
    required_features: tuple[str, ...] = ()
    backend: str | None = None
    source: str = field(default="", compare=False)
    #: The board a ``device = "rpc"`` target is reached on in this run (``--rpc``/``--tracker``).
    remote: RemoteDevice | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for kind in _REQUIRED_KINDS:
            if kind not in self.native_weight_bits:
                raise ValueError(f"target {self.name!r} lists no native precisions for {kind!r}")
        for bits in (*self.storage_weight_bits, *self.act_bits, *(b for v in self.native_weight_bits.values() for b in v)):
            check_bits(bits)

    def reached_over(self, remote: RemoteDevice | None) -> "Target":
        """This target with its device reached over ``remote`` (None: as it was); a local
        target refuses a remote (its device is this machine)."""
        if remote is None:
            return self
        if self.device != "rpc":
            raise ConfigError(f"target {self.name!r} runs on this machine; --rpc and --tracker are for targets reached over RPC")
        return replace(self, remote=remote)

    def weight_bits(self, kind: str) -> tuple[int, ...]:
        """Every weight width a layer of this op kind may get (native and storage-only)."""
        native = self.native_weight_bits.get(kind, self.native_weight_bits["linear"])
        return tuple(sorted(set(native) | set(self.storage_weight_bits)))

    def candidates(self, kind: str) -> tuple[BitAssignment, ...]:
        """All (weight, activation) precisions the target can run for this op kind."""
        if kind == "matmul":  # activation x activation: both operands are activations
            return tuple(BitAssignment(a, a) for a in self.act_bits)
        if kind == "embedding":  # a weight-only lookup: activations stay as they are
            return tuple(BitAssignment(w, FLOAT_BITS) for w in self.weight_bits(kind))
        return tuple(BitAssignment(w, a) for w in self.weight_bits(kind) for a in self.act_bits)

    def check(self, kind: str, bits: BitAssignment) -> None:
        """Raise ConfigError if this target cannot run ``bits`` for a layer of ``kind``."""
        if kind != "embedding" and bits.a_bits != FLOAT_BITS and bits.a_bits not in self.act_bits:
            raise ConfigError(
                f"target {self.name!r} has no {bits.a_bits}-bit activations; it offers {_list(self.act_bits)} (or 32 = float)"
            )
        if kind != "matmul" and bits.w_bits != FLOAT_BITS and bits.w_bits not in self.weight_bits(kind):
            raise ConfigError(
                f"target {self.name!r} has no {bits.w_bits}-bit weights for {kind}; "
                f"it offers {_list(self.weight_bits(kind))} (or 32 = float)"
            )


def _list(bits: tuple[int, ...]) -> str:
    return ", ".join(str(b) for b in bits)


def available_targets() -> list[str]:
    return sorted(p.stem for p in TARGET_DIR.glob("*.toml"))


def load_target(name_or_path: str) -> Target:
    """Load a built-in target by name, or a target file by path."""
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.exists()):
        path = TARGET_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise ConfigError(f"unknown target {name_or_path!r}; built-in targets: {', '.join(available_targets())}")
    try:
        data = tomllib.loads(path.read_text())
        return _from_dict(data, str(path))
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"target file {path} is invalid: {exc}") from exc


def _from_dict(data: dict[str, Any], source: str) -> Target:
    prec = data["precisions"]
    memory = data.get("memory", {}).get("bytes")
    return Target(
        name=data["name"],
        description=data.get("description", ""),
        tvm_target=dict(data.get("tvm", {})),
        native_weight_bits={k: tuple(v) for k, v in prec["native_weight_bits"].items()},
        storage_weight_bits=tuple(prec.get("storage_weight_bits", ())),
        act_bits=tuple(prec["act_bits"]),
        memory_bytes=None if memory is None else int(memory),
        device=data.get("device", {}).get("kind", "local"),
        required_features=tuple(str(f) for f in data.get("device", {}).get("requires", ())),
        backend=data.get("backend"),
        source=source,
    )
