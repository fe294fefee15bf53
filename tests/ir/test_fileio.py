"""Atomic files and directories: a set of files appears whole, replaces the previous set whole,
and an error or an interrupt leaves the previous set as it was, with nothing else beside it."""
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from lcpaq.ir import fileio
from lcpaq.ir.errors import OutputError
from lcpaq.ir.fileio import atomic_directory, atomic_write_text, check_writable




def _files(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(path.iterdir())}


def _write_set(path: Path, files: dict[str, str]) -> None:
    with atomic_directory(path) as tmp:
        for name, text in files.items():
            atomic_write_text(tmp / name, text)


def test_a_set_replaces_the_previous_set_whole(tmp_path) -> None:
    out = tmp_path / "report"
    _write_set(out, {"report.json": "1", "report.md": "one", "pareto_size.png": "plot"})
    assert _files(out) == {"pareto_size.png": "plot", "report.json": "1", "report.md": "one"}
    _write_set(out, {"report.json": "2", "report.md": "two"})
    assert _files(out) == {"report.json": "2", "report.md": "two"}  # the old plot does not linger
    assert os.listdir(tmp_path) == ["report"]  # no temporary or old directory beside it


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
@pytest.mark.parametrize("failure", [KeyboardInterrupt, ValueError])
def test_an_interrupted_or_failed_write_leaves_the_previous_set(tmp_path, monkeypatch, exchange, failure) -> None:
    if not exchange:
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    out = tmp_path / "report"
    _write_set(out, {"report.json": "1", "report.md": "one"})
    with pytest.raises(failure):
        with atomic_directory(out) as tmp:
            atomic_write_text(tmp / "report.json", "2")
            raise failure()
    assert _files(out) == {"report.json": "1", "report.md": "one"}
    assert os.listdir(tmp_path) == ["report"]
    _write_set(out, {"report.json": "3"})
    assert _files(out) == {"report.json": "3"} and os.listdir(tmp_path) == ["report"]


def test_nothing_is_created_when_the_first_write_fails(tmp_path) -> None:
    out = tmp_path / "a" / "report"
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(out):
            raise KeyboardInterrupt
    assert os.listdir(tmp_path / "a") == []


def test_modes_are_those_of_ordinary_files(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        _write_set(tmp_path / "new", {"report.json": "{}"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "new" / "report.json").stat().st_mode) == 0o644
    (tmp_path / "new").chmod(0o750)
    _write_set(tmp_path / "new", {"report.json": "[]"})
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750  # a replaced directory keeps its mode


def test_a_symbolic_link_keeps_pointing_at_the_new_set(tmp_path) -> None:
    real = tmp_path / "real"
    _write_set(real, {"report.json": "1"})
    (tmp_path / "link").symlink_to(real)
    _write_set(tmp_path / "link", {"report.json": "2"})
    assert (tmp_path / "link").is_symlink() and _files(tmp_path / "link") == {"report.json": "2"}


def test_concurrent_writers_leave_one_complete_set(tmp_path) -> None:
    """Eight writers of 20 files each into one directory: it ends up holding exactly one
    writer's set, never a mix, and nothing is left beside it."""
    out = tmp_path / "report"
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        with atomic_directory(out) as tmp:
            for k in range(20):
                (tmp / f"f{k}").write_text(str(i))
            barrier.wait()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    values = set(_files(out).values())
    assert len(_files(out)) == 20 and len(values) == 1
    assert os.listdir(tmp_path) == ["report"]


def test_check_writable(tmp_path, read_only_dir) -> None:
    check_writable(tmp_path / "new" / "deeper" / "report", "--out")  # created later, under a writable ancestor
    assert os.listdir(tmp_path) == ["ro"]  # the probe left nothing
    with pytest.raises(OutputError, match=f"--out {read_only_dir / 'report'} cannot be written: {read_only_dir}: "):
        check_writable(read_only_dir / "report", "--out")
    with pytest.raises(OutputError, match="cannot be written: .* is not a directory"):
        (tmp_path / "file").write_text("x")
        check_writable(tmp_path / "file" / "report", "--out")


def test_writing_into_a_read_only_place_is_one_output_error(read_only_dir) -> None:
    with pytest.raises(OutputError, match=f"cannot write {read_only_dir / 'report'}: "):
        _write_set(read_only_dir / "report", {"report.json": "1"})
