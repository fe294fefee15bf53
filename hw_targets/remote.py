"""How a target's device is reached when it is another machine: a TVM RPC server given by its
address (``--rpc HOST:PORT``), or a device farm's tracker and a device key (``--tracker
HOST:PORT --key NAME``), as TVM users reach boards. Data only; connecting is the backends' job
(:mod:`lcpaq.backends.common.remote`)."""
from __future__ import annotations

from dataclasses import dataclass

from lcpaq.ir.errors import ConfigError


def parse_address(text: str, option: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); ConfigError naming ``option`` otherwise."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option} takes HOST:PORT (e.g. 127.0.0.1:9090), got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class RemoteDevice:
    """An RPC server (``rpc``) or a tracker and key (``tracker``, ``key``), never both."""

    rpc: str | None = None
    tracker: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.rpc and (self.tracker or self.key):
            raise ConfigError("give either --rpc HOST:PORT or --tracker HOST:PORT --key NAME, not both")
        if self.key and not self.tracker:
            raise ConfigError("--key needs --tracker HOST:PORT")
        if not self.rpc and not self.tracker:
            raise ConfigError("a remote device needs --rpc HOST:PORT or --tracker HOST:PORT --key NAME")
        if self.tracker and not self.key:
            raise ConfigError("--tracker needs --key NAME (the device key the boards registered with)")
        parse_address(self.rpc or self.tracker or "", "--rpc" if self.rpc else "--tracker")

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the RPC server or of the tracker."""
        return parse_address(self.rpc or self.tracker or "", "--rpc" if self.rpc else "--tracker")

    def __str__(self) -> str:
        return f"RPC server {self.rpc}" if self.rpc else f"key {self.key!r} of tracker {self.tracker}"


def remote_from_options(rpc: str | None, tracker: str | None, key: str | None) -> RemoteDevice | None:
    """The remote device the CLI options name, or None when they name none."""
    if not (rpc or tracker or key):
        return None
    return RemoteDevice(rpc or None, tracker or None, key or None)
