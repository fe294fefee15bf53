"""Tuning databases are checked before use: corrupt or foreign ones are reported with their path.

No MetaSchedule tuning runs here: the files are small fakes, or a real database holding one
record of a hand schedule committed through MetaSchedule's API."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


import tvm
from tvm.s_tir import meta_schedule as ms

from lcpaq.backends.common import tuning_db
from lcpaq.backends.common.tuning import cached_schedule, tuning_dir
from lcpaq.backends.x86 import int8 as t8
from lcpaq.backends.x86.tune import tuning_rules
from lcpaq.backends.x86.vnni import build, host_target
from lcpaq.ir.errors import CorruptFileError

WORKLOAD = '["1234", "QUJD"]\n'
RECORD = '[0, [[[], []], [1e-05], {"kind": "llvm"}, []]]\n'


@pytest.fixture(scope="module")
def target() -> tvm.target.Target:
    return host_target()


def _fake_db(
    path: Path, target: tvm.target.Target, workloads: str = WORKLOAD, records: str = RECORD,
    meta: dict[str, object] | None = None, write_meta: bool = True,
) -> Path:
    """A database directory with these files; its meta is this run's, updated with ``meta``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / tuning_db.WORKLOAD_NAME).write_text(workloads)
    (path / tuning_db.RECORD_NAME).write_text(records)
    if write_meta:
        data = {**tuning_db.TuningMeta.current(target).to_json(), **(meta or {})}
        (path / tuning_db.META_NAME).write_text(json.dumps(data))
    return path


def test_well_formed_fake_database_passes(tmp_path, target) -> None:
    db = _fake_db(tmp_path / "db", target, records=RECORD * 3)
    assert tuning_db.check_database(db, target) == 3


def test_corrupt_line_is_reported_with_file_and_line_number(tmp_path, target) -> None:
    db = _fake_db(tmp_path / "db", target, records=RECORD + '[0, [[[], []], [1e-05], {"kind": "llv\n')
    with pytest.raises(CorruptFileError, match=rf"{db / tuning_db.RECORD_NAME} line 2 is not JSON.*delete the directory"):
        tuning_db.check_database(db, target)
    db = _fake_db(tmp_path / "db2", target, workloads=WORKLOAD + "\n" + WORKLOAD)
    with pytest.raises(CorruptFileError, match=rf"{db / tuning_db.WORKLOAD_NAME} line 2 is empty"):
        tuning_db.open_database(db, target)


def test_rows_that_are_not_metaschedule_rows_are_reported(tmp_path, target) -> None:
    db = _fake_db(tmp_path / "db", target, records=RECORD.replace("[0,", "[5,"))
    with pytest.raises(CorruptFileError, match=r"line 1 is not a \[workload index < 1, record\]"):
        tuning_db.check_database(db, target)
    db = _fake_db(tmp_path / "db2", target, workloads='{"hash": 1}\n')
    with pytest.raises(CorruptFileError, match=r"database_workload.json line 1 is not a \[hash, module\]"):
        tuning_db.check_database(db, target)


def test_foreign_target_names_the_field_that_differs(tmp_path, target) -> None:
    other = dict(json.loads(tuning_db.target_json(target)), **{"num-cores": 64})
    db = _fake_db(tmp_path / "db", target, meta={"target": json.dumps(other)})
    with pytest.raises(CorruptFileError) as info:
        tuning_db.open_database(db, target)
    msg = str(info.value)
    assert str(db) in msg and "foreign" in msg and "num-cores 64 there" in msg and "delete the directory" in msg
    assert "\n" not in msg  # one line
    assert tuning_db.read_meta(db).target == json.dumps(other)  # left as it was, not overwritten


def test_foreign_tvm_version(tmp_path, target) -> None:
    db = _fake_db(tmp_path / "db", target, meta={"tvm_version": "0.19.0"})
    with pytest.raises(CorruptFileError, match=rf"{db} is foreign: it was tuned with TVM '0.19.0', this is TVM '{tvm.__version__}'"):
        tuning_db.open_database(db, target)
    db = _fake_db(tmp_path / "db2", target, meta={"schema": 99})
    with pytest.raises(CorruptFileError, match="meta schema 99"):
        tuning_db.check_database(db, target)


def test_records_without_meta_are_refused(tmp_path, target) -> None:
    db = _fake_db(tmp_path / "db", target, write_meta=False)
    with pytest.raises(CorruptFileError, match=rf"{db} has records but no meta.json"):
        tuning_db.open_database(db, target)
    assert not (db / tuning_db.META_NAME).exists()  # not adopted silently


def test_unreadable_meta_is_reported(tmp_path, target) -> None:
    db = _fake_db(tmp_path / "db", target)
    (db / tuning_db.META_NAME).write_text('{"schema": 1, "tvm_')
    with pytest.raises(CorruptFileError, match=rf"meta {db / tuning_db.META_NAME} is unreadable"):
        tuning_db.check_database(db, target)
    (db / tuning_db.META_NAME).write_text('{"schema": 1}')
    with pytest.raises(CorruptFileError, match="KeyError"):
        tuning_db.check_database(db, target)


def test_fresh_directory_gets_meta_and_an_empty_database(tmp_path, target) -> None:
    path = tmp_path / "cache" / "tuning" / "fresh"
    db = tuning_db.open_database(path, target)
    assert isinstance(db, ms.database.JSONDatabase) and len(db) == 0
    meta = tuning_db.read_meta(path)
    assert meta == tuning_db.TuningMeta.current(target) and json.loads(meta.target)["num-cores"] >= 1
    assert [p.name for p in path.iterdir() if p.name.startswith(".")] == []  # no temporary left over
    assert tuning_db.check_database(path, target) == 0  # and it reopens


def _hand_tuned_db(path: Path, target: tvm.target.Target, func: tvm.tirx.PrimFunc) -> None:
    """A database holding the untuned VNNI schedule of ``func`` as its one record."""
    db = tuning_db.open_database(path, target)
    workload = db.commit_workload(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    trace = t8.schedule_qdense(func).trace
    db.commit_tuning_record(ms.database.TuningRecord(trace, workload, [1e-5], target, ms.arg_info.ArgInfo.from_prim_func(func)))


def _cached_kernel(func: tvm.tirx.PrimFunc, target: tvm.target.Target, path: Path):
    return build(cached_schedule(func, 1, target, tuning_rules(int8=True), path).mod, target)


def test_tuning_dir_is_per_target_and_kernel(monkeypatch, tmp_path, target) -> None:
    monkeypatch.setenv("LCPAQ_CACHE_DIR", str(tmp_path))
    other = tvm.target.Target({**dict(target.export()), "mcpu": "cascadelake"})
    a, b = tuning_dir(target, "dense-m4", 8), tuning_dir(other, "dense-m4", 8)
    assert a.parent != b.parent and a.name == b.name == "dense-m4-t8"
    assert a.parent.parent == tmp_path / "tuning" and a.parent.name.startswith("llvm-")
    assert tuning_dir(target, "dense-m4", 8) == a  # deterministic


def test_cache_reuses_a_valid_database_and_refuses_a_corrupt_one(tmp_path, target) -> None:
    func = t8.qdense_func(4, 16, 8)
    path = tmp_path / "dense"
    _hand_tuned_db(path, target, func)
    assert tuning_db.check_database(path, target) == 1
    kernel = _cached_kernel(func, target, path)  # found: no tuning
    assert "vpdpbusd" in kernel.asm
    with (path / tuning_db.RECORD_NAME).open("a") as f:
        f.write('[0, [[["GetSBlock"\n')  # a record cut short, as by a killed tuner
    with pytest.raises(CorruptFileError, match=rf"{path / tuning_db.RECORD_NAME} line 2 is not JSON"):
        _cached_kernel(func, target, path)
