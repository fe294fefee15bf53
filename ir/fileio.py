"""Atomic writes and the on-disk cache: results appear whole or not at all, a single file
(:func:`atomic_write_bytes`) or a directory of them (:func:`atomic_directory`)."""
from __future__ import annotations

import ctypes
import errno
import functools
import io
import json
import os
import shutil
import tempfile
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from lcpaq.ir.errors import OutputError


def cache_dir() -> Path:
    """``$LCPAQ_CACHE_DIR``, else ``~/.cache/lcpaq``; created on first use."""
    path = Path(os.environ.get("LCPAQ_CACHE_DIR") or Path.home() / ".cache" / "lcpaq")
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary sibling, then a rename), with the mode a
    new file gets (0o666 less the umask), not the temporary file's private 0o600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())
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


def check_writable(path: str | Path, option: str) -> None:
    """Raise OutputError (one line) unless ``path`` and a temporary sibling of it can be
    created: its nearest existing ancestor must be a directory this process can write. Probed
    by creating and removing a directory there, so a read-only filesystem is caught, root
    or not. Nothing is left behind."""
    path = Path(os.path.abspath(path))
    ancestor = path.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path} cannot be written: {ancestor} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".lcpaq-probe-"))
    except OSError as exc:
        raise OutputError(f"{option} {path} cannot be written: {ancestor}: {exc.strerror or exc}") from exc


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``path`` to fill; when the block succeeds it replaces
    ``path`` (and whatever directory was there) in one rename, so ``path`` holds the complete new
    set of files or, after an error or an interrupt, exactly what it held before. A symbolic link
    is followed: the directory it names is replaced. An OSError while writing is OutputError."""
    path = Path(os.path.realpath(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        try:
            yield tmp
            os.chmod(tmp, _directory_mode(path))
            _replace_directory(tmp, path)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the new files if they were not moved in, else the old ones


def _directory_mode(path: Path) -> int:
    """The mode of the directory being replaced, else a new directory's (0o777 less the umask)."""
    if path.is_dir():
        return path.stat().st_mode & 0o7777
    return 0o777 & ~_umask()


def _umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _replace_directory(new: Path, path: Path, attempts: int = 5) -> None:
    """Move directory ``new`` to ``path``; a directory already at ``path`` ends up at ``new`` (the
    caller deletes it). Linux swaps the two in one step (renameat2 RENAME_EXCHANGE); elsewhere the
    old one is renamed aside, the new one in, and the old one back if that fails."""
    for _ in range(attempts):
        if not os.path.lexists(path):
            try:
                os.rename(new, path)
                break
            except OSError:  # another writer got there first: swap with its result instead
                continue
        if _exchange(new, path):
            break
        aside = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            continue
        try:
            os.rename(new, path)
        except BaseException:
            os.rename(aside, path)
            raise
        os.rename(aside, new)
        break
    else:
        raise OSError(f"{path} kept changing while it was replaced")
    _fsync_directory(path.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOENT, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # raced (retried) or unsupported
        return False
    raise OSError(err, os.strerror(err), str(b))


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (where directories can be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
