"""The VNNI hand schedules' tile shapes per CPU microarchitecture, as data (``tiles.toml``).

Intel and AMD cores differ in VNNI ports, cache sizes and AVX-512 clocks, so the tile that keeps
one busy can starve the other. The x86 backend asks :func:`tiles_for` with the LLVM CPU of the
target it builds for (``znver5``, ``sapphirerapids``...); a CPU with no row gets the ``default``
row, and :attr:`VnniTiles.source` says which was used. ``python -m lcpaq.tools.bench_tiles --write``
measures every tile variant on the host and writes the host's row (:func:`write_row`).
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from tvm.target import codegen

from lcpaq.ir.errors import CorruptFileError
from lcpaq.ir.fileio import atomic_write_text

#: The tile table that ships with the backend.
TILES_FILE = Path(__file__).with_name("tiles.toml")
#: The row CPUs without their own use.
DEFAULT_ROW = "default"

Tile = tuple[int, int]


@dataclass(frozen=True)
class VnniTiles:
    """One CPU's tiles, each ``(rows or columns, output blocks of 16 lanes)``: the int8 (``vpdpbusd``)
    and wide (``vpdpwssd``) dense and conv kernels. ``cpu`` is the row read (``default`` for a
    CPU with none), ``source`` where its numbers come from."""

    int8_dense: Tile
    int8_conv: Tile
    wide_dense: Tile
    wide_conv: Tile
    cpu: str = DEFAULT_ROW
    source: str = ""


KINDS = tuple(f.name for f in fields(VnniTiles) if f.name not in ("cpu", "source"))


def _tile(path: Path, row: str, kind: str, value: object) -> Tile:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v >= 1 for v in value)):
        raise CorruptFileError(f"tile table {path}: [{row}] {kind} must be two positive integers, got {value!r}")
    return int(value[0]), int(value[1])


@lru_cache(maxsize=None)
def read_table(path: Path = TILES_FILE) -> dict[str, VnniTiles]:
    """Every row of a tile table; a file that does not parse or lacks a tile names its path."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CorruptFileError(f"tile table {path} cannot be read: {exc}") from exc
    table = {}
    for row, entry in data.items():
        missing = [k for k in KINDS if k not in entry] if isinstance(entry, dict) else list(KINDS)
        if missing:
            raise CorruptFileError(f"tile table {path}: [{row}] lacks {', '.join(missing)}")
        tiles = {k: _tile(path, row, k, entry[k]) for k in KINDS}
        table[row] = VnniTiles(**tiles, cpu=row, source=str(entry.get("source", "")))
    if DEFAULT_ROW not in table:
        raise CorruptFileError(f"tile table {path} has no [{DEFAULT_ROW}] row")
    return table


def tiles_for(cpu: str | None, path: Path = TILES_FILE) -> VnniTiles:
    """The tiles of LLVM CPU ``cpu`` (its own row, else the default one)."""
    table = read_table(path)
    return table.get(cpu or DEFAULT_ROW, table[DEFAULT_ROW])


def target_tiles(tvm_target: object | None) -> VnniTiles:
    """The tiles for a TVM target's ``mcpu`` (this host's CPU when no target is given)."""
    if tvm_target is None:
        return tiles_for(_host_cpu())
    return tiles_for(str(tvm_target.attrs.get("mcpu", "")))  # type: ignore[attr-defined]


@lru_cache(maxsize=1)
def _host_cpu() -> str:
    return str(codegen.llvm_get_system_cpu())


def _row_text(tiles: VnniTiles) -> str:
    lines = [f"[{tiles.cpu}]", f"source = {json.dumps(tiles.source)}"]  # a JSON string is a TOML basic string
    lines += [f"{k} = [{getattr(tiles, k)[0]}, {getattr(tiles, k)[1]}]" for k in KINDS]
    return "\n".join(lines)


def write_row(tiles: VnniTiles, path: Path = TILES_FILE) -> None:
    """Add or replace ``tiles.cpu``'s row in the table (atomically); the header comment and the
    other rows are kept, in order."""
    table = dict(read_table(path))
    table[tiles.cpu] = tiles
    header = []  # the comment lines (and blank ones) before the first row
    for line in path.read_text().splitlines():
        if line.startswith("["):
            break
        header.append(line)
    text = "\n".join(header).rstrip() + "\n\n" if any(header) else ""
    atomic_write_text(path, text + "\n\n".join(_row_text(t) for t in table.values()) + "\n")
    read_table.cache_clear()


__all__ = ["KINDS", "TILES_FILE", "VnniTiles", "read_table", "target_tiles", "tiles_for", "write_row"]
