"""MetaSchedule tuning databases on disk, checked before use: a corrupt or foreign database is
reported with its path (:class:`~lcpaq.ir.errors.CorruptFileError`), never silently used.

A database is a directory holding MetaSchedule's two JSON-lines files (one JSON value per line)::

    database_workload.json       ["<structural hash>", "<base64 IRModule>"]      one per workload
    database_tuning_record.json  [<workload index>, [trace, run_secs, target, args_info]]

and, beside them, our ``meta.json``, written (atomically) when the directory is first opened for
tuning: ``{"schema": 1, "tvm_version": "0.27.0.post1", "target": "<target JSON export>"}``.
Schedules are only valid for the TVM that wrote their traces and the target they were measured
on (``num-cores`` included), so a database whose meta names another TVM version, target or
schema is *foreign*: the error says which field differs and how to recover (delete the
directory, or point ``LCPAQ_CACHE_DIR`` at another cache dir). Records without a meta are
refused the same way: where they come from is unknown.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from lcpaq.ir.errors import CorruptFileError
from lcpaq.ir.fileio import atomic_write_json

#: Version of ``meta.json``; a database written under another schema is refused.
SCHEMA_VERSION = 1
META_NAME = "meta.json"
WORKLOAD_NAME = "database_workload.json"
RECORD_NAME = "database_tuning_record.json"
_FIX = "delete the directory (it is tuned again) or use another cache dir (LCPAQ_CACHE_DIR)"


def _plain(value: Any) -> Any:
    """A TVM FFI value (Map, Array, String, int) as plain JSON-able Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and hasattr(value, "__getitem__") and not isinstance(value, str)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    return str(value)


def target_json(target: tvm.target.Target) -> str:
    """``target.export()`` as canonical JSON (sorted keys): equal targets give equal strings."""
    return json.dumps(_plain(target.export()), sort_keys=True)


@dataclass(frozen=True)
class TuningMeta:
    """What a database was tuned with: the TVM version, the target's JSON export (a string) and
    the schema of this file."""

    tvm_version: str
    target: str
    schema: int = SCHEMA_VERSION

    @classmethod
    def current(cls, target: tvm.target.Target) -> "TuningMeta":
        """The meta of a database tuned now, by this TVM, for ``target``."""
        return cls(tvm_version=str(tvm.__version__), target=target_json(target))

    def to_json(self) -> dict[str, Any]:
        return {"schema": self.schema, "tvm_version": self.tvm_version, "target": self.target}

    def mismatch(self, expected: "TuningMeta") -> str | None:
        """A one-line description of the first field that differs from ``expected``, or None."""
        if self.schema != expected.schema:
            return f"it has meta schema {self.schema!r}, this lcpaq writes schema {expected.schema}"
        if self.tvm_version != expected.tvm_version:
            return f"it was tuned with TVM {self.tvm_version!r}, this is TVM {expected.tvm_version!r}"
        if self.target != expected.target:
            return f"it was tuned for another target ({_target_diff(self.target, expected.target)})"
        return None


def _target_diff(theirs: str, ours: str) -> str:
    """The target keys whose values differ, as ``key X there, Y here``."""
    try:
        a, b = json.loads(theirs), json.loads(ours)
    except ValueError:
        return f"{theirs!r} there, {ours!r} here"
    if not isinstance(a, dict) or not isinstance(b, dict):
        return f"{theirs!r} there, {ours!r} here"
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return "; ".join(f"{k} {json.dumps(a.get(k))} there, {json.dumps(b.get(k))} here" for k in keys)


def read_json_lines(path: Path) -> list[Any]:
    """Every line of a JSON-lines file, parsed (an absent file has none). Raises CorruptFileError
    naming the file and the 1-based line number of the first line that is empty or not JSON."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"tuning database file {path} is unreadable ({type(exc).__name__}: {exc}); {_FIX}") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last record
    values = []
    for number, line in enumerate(lines, 1):
        try:
            values.append(json.loads(line))
        except ValueError as exc:
            reason = "is empty" if not line.strip() else f"is not JSON ({exc.msg} at column {exc.colno})"
            raise CorruptFileError(f"tuning database file {path} line {number} {reason}; {_FIX}") from exc
    return values


def _check_rows(path: Path, rows: list[Any], n_workloads: int | None) -> None:
    """Workload rows are ``[hash, module]``; record rows ``[index < n_workloads, [...]]``."""
    for number, row in enumerate(rows, 1):
        if n_workloads is None:
            ok = isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)
            what = "a [hash, module] workload"
        else:
            ok = (
                isinstance(row, list) and len(row) == 2 and isinstance(row[0], int) and not isinstance(row[0], bool)
                and 0 <= row[0] < n_workloads and isinstance(row[1], list)
            )
            what = f"a [workload index < {n_workloads}, record] tuning record"
        if not ok:
            raise CorruptFileError(f"tuning database file {path} line {number} is not {what}; {_FIX}")


def read_meta(work_dir: Path) -> TuningMeta | None:
    """The ``meta.json`` of ``work_dir``, or None if there is none. Raises CorruptFileError naming
    the file if it is unreadable or malformed."""
    path = Path(work_dir) / META_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError(f"a JSON object was expected, got {type(data).__name__}")
        meta = TuningMeta(tvm_version=data["tvm_version"], target=data["target"], schema=data["schema"])
        if not isinstance(meta.tvm_version, str) or not isinstance(meta.target, str) or not isinstance(meta.schema, int):
            raise TypeError("schema must be an int, tvm_version and target strings")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"tuning database meta {path} is unreadable ({type(exc).__name__}: {exc}); {_FIX}") from exc
    return meta


def check_database(work_dir: Path, target: tvm.target.Target) -> int:
    """Validate the database in ``work_dir`` for tuning or querying with this TVM and ``target``;
    return its number of tuning records. An absent or empty directory is valid (0 records).

    Raises CorruptFileError, naming the path and the reason, if a file is unreadable or has a
    line that is not JSON (with its line number) or not a MetaSchedule row, if records are
    present without a ``meta.json``, or if the meta names another schema, TVM version or target."""
    work_dir = Path(work_dir)
    workloads = read_json_lines(work_dir / WORKLOAD_NAME)
    records = read_json_lines(work_dir / RECORD_NAME)
    _check_rows(work_dir / WORKLOAD_NAME, workloads, None)
    _check_rows(work_dir / RECORD_NAME, records, len(workloads))
    meta = read_meta(work_dir)
    if meta is None:
        if workloads or records:
            raise CorruptFileError(
                f"tuning database {work_dir} has records but no {META_NAME}, so its TVM version and target are unknown; {_FIX}"
            )
        return 0
    reason = meta.mismatch(TuningMeta.current(target))
    if reason is not None:
        raise CorruptFileError(f"tuning database {work_dir} is foreign: {reason}; {_FIX}")
    return len(records)


def open_database(work_dir: Path, target: tvm.target.Target) -> Any:
    """A MetaSchedule ``JSONDatabase`` on ``work_dir`` for ``target``, after :func:`check_database`
    (whose CorruptFileError it raises). A fresh directory is created and gets its ``meta.json``
    (written atomically) before any record can be added."""
    from tvm.s_tir import meta_schedule as ms

    work_dir = Path(work_dir)
    check_database(work_dir, target)
    if not (work_dir / META_NAME).exists():
        atomic_write_json(work_dir / META_NAME, TuningMeta.current(target).to_json())
    return ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)


__all__ = ["META_NAME", "RECORD_NAME", "SCHEMA_VERSION", "WORKLOAD_NAME", "TuningMeta", "check_database", "open_database", "read_json_lines", "read_meta", "target_json"]
