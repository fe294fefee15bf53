"""What this machine's CPU offers, read from ``/proc/cpuinfo``, and whether a target can run here.

Only local targets are checked against the host: a target's ``required_features`` are CPU flags
as Linux spells them in ``/proc/cpuinfo`` (``avx512f``, ``avx512_vnni``, ``amx_int8``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lcpaq.hw_targets.target import Target, available_targets, load_target

CPUINFO = Path("/proc/cpuinfo")


def _read(text: str | None) -> str:
    if text is not None:
        return text
    try:
        return CPUINFO.read_text()
    except OSError:  # not Linux, or /proc unavailable: nothing is known about the host
        return ""


def host_features(cpuinfo: str | None = None) -> frozenset[str]:
    """CPU flags of the first processor in ``cpuinfo`` (default: this host's ``/proc/cpuinfo``).

    x86 lists them on a ``flags`` line, ARM on a ``Features`` line. Empty if neither is present."""
    for line in _read(cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def host_cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's ``model name`` from ``cpuinfo`` (default: this host), or ``"unknown CPU"``."""
    for line in _read(cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return "unknown CPU"


@dataclass(frozen=True)
class HostSupport:
    """Whether this host has what a local target needs: ``missing`` is empty when it does."""

    target: str
    required: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing

    def __str__(self) -> str:
        if not self.required:
            return "no CPU features required"
        if self.ok:
            return f"this host has {', '.join(self.required)}"
        return f"this host lacks {', '.join(self.missing)} (needs {', '.join(self.required)})"


def host_support(target: Target, features: frozenset[str] | None = None) -> HostSupport:
    """Compare ``target.required_features`` with ``features`` (default: :func:`host_features`)."""
    have = host_features() if features is None else features
    missing = tuple(f for f in target.required_features if f not in have)
    return HostSupport(target.name, target.required_features, missing)


def default_target_name(features: frozenset[str] | None = None) -> str:
    """The target a build defaults to on a host with ``features`` (default: :func:`host_features`):
    the first built-in target, by name, that is this machine (device ``local``), has a backend,
    and whose required features the host has; ``"sim"`` when there is none."""
    have = host_features() if features is None else features
    for name in available_targets():
        target = load_target(name)
        if target.device == "local" and target.backend is not None and host_support(target, have).ok:
            return name
    return "sim"
