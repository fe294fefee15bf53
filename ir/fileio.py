"""Atomic writes and the on-disk cache: results appear whole or not at all."""
from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    """``$LCPAQ_CACHE_DIR``, else ``~/.cache/lcpaq``; created on first use."""
    path = Path(os.environ.get("LCPAQ_CACHE_DIR") or Path.home() / ".cache" / "lcpaq")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json_cache(path: Path) -> Any | None:
    """A cached JSON value, or None if absent. An unreadable entry is reported (with its path)
    as a warning and treated as absent, so the caller recomputes and overwrites it."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        warnings.warn(f"cache entry {path} is unreadable ({type(exc).__name__}: {exc}); recomputing", stacklevel=2)
        return None


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
