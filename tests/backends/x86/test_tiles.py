"""The VNNI tile table: rows per CPU, the default for CPUs without one, corrupt files named by
path, the host's row rewritten in place, and builds that follow the row of their target's CPU."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import tvm

from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86 import int16 as k16
from lcpaq.backends.x86.tiles import TILES_FILE, VnniTiles, read_table, target_tiles, tiles_for, write_row
from lcpaq.ir.errors import CorruptFileError


def _table(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiles.toml"
    path.write_text(text)
    read_table.cache_clear()
    return path


ROW = "int8_dense = [8, 2]\nint8_conv = [7, 2]\nwide_dense = [4, 1]\nwide_conv = [7, 1]\n"


def test_shipped_table_has_a_default_and_the_measured_cpu() -> None:
    table = read_table(TILES_FILE)
    assert {"default", "znver5"} <= set(table)
    assert table["znver5"].int8_conv == (7, 2) and table["znver5"].source


def test_a_cpu_without_a_row_gets_the_default(tmp_path: Path) -> None:
    path = _table(tmp_path, f"# header\n[default]\n{ROW}\n[sapphirerapids]\nsource = \"x\"\n{ROW.replace('[8, 2]', '[4, 3]')}")
    assert tiles_for("sapphirerapids", path).int8_dense == (4, 3)
    got = tiles_for("znver4", path)
    assert got.cpu == "default" and got.int8_dense == (8, 2) and got.wide_dense == (4, 1)


@pytest.mark.parametrize(("text", "message"), [
    ("[default]\nint8_dense = [8, 2]\n", "lacks int8_conv, wide_dense, wide_conv"),
    (f"[znver5]\n{ROW}", "no \\[default\\] row"),
    (f"[default]\n{ROW.replace('[7, 2]', '[0, 2]')}", "int8_conv must be two positive integers"),
    ("[default\n", "cannot be read"),
])
def test_a_corrupt_table_names_its_path(tmp_path: Path, text: str, message: str) -> None:
    path = _table(tmp_path, text)
    with pytest.raises(CorruptFileError, match=message) as err:
        tiles_for("znver5", path)
    assert str(path) in str(err.value)


def test_write_row_adds_or_replaces_one_row_and_keeps_the_header(tmp_path: Path) -> None:
    path = _table(tmp_path, f"# the header, which names [default]\n\n[default]\nsource = \"d\"\n{ROW}")
    new = VnniTiles((4, 1), (14, 1), (8, 2), (7, 2), cpu="icelake-server", source='a "quoted" host')
    write_row(new, path)
    write_row(replace(new, int8_dense=(16, 1)), path)
    text = path.read_text()
    assert text.startswith("# the header, which names [default]\n\n[default]") and text.count("[icelake-server]") == 1
    table = read_table(path)
    assert table["icelake-server"].int8_dense == (16, 1) and table["icelake-server"].source == 'a "quoted" host'
    assert table["default"].wide_dense == (4, 1)


def test_a_target_picks_its_cpus_row() -> None:
    read_table.cache_clear()
    spr = tvm.target.Target({"kind": "llvm", "mcpu": "sapphirerapids"})
    assert target_tiles(spr) == tiles_for("sapphirerapids")  # the default row until measured there
    assert target_tiles(None) == tiles_for(str(tvm.target.codegen.llvm_get_system_cpu()))


def _splits(sch) -> list[list[str]]:
    return [[str(a) for a in inst.inputs[1:]] for inst in sch.trace.insts if inst.kind.name == "Split"]


def test_schedules_follow_the_tiles() -> None:
    """A tile's columns (or rows) and output blocks become the schedule's splits."""
    base = tiles_for("default")
    func = t8.qconv2d_func((1, 14, 14, 64), 64, 3, 1, 1)
    assert _splits(t8.schedule_qconv2d(func, 14, replace(base, int8_conv=(7, 2))))[:2] == [["None", "7"], ["None", "2", "16"]]
    assert _splits(t8.schedule_qconv2d(func, 14, replace(base, int8_conv=(4, 1))))[:2] == [["None", "2"], ["None", "1", "16"]]  # 4 does not divide 14
    wide = k16.qdense_func(8, 64, 64, "int16", 8)
    assert _splits(k16.schedule_qdense(wide, replace(base, wide_dense=(4, 1))))[:2] == [["None", "4"], ["None", "16"]]
    assert _splits(k16.schedule_qdense(wide, replace(base, wide_dense=(8, 2))))[:2] == [["None", "8"], ["None", "32"]]
