"""Searches in optuna RDB storage: a search interrupted mid-way resumes where it stopped, two
workers fill one SQLite study together, a study refuses a run with other settings, an
unreadable storage is named, and an in-memory search is what it was."""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from lcpaq.hw_targets import load_target
from lcpaq.ir.errors import ConfigError, CorruptFileError
from lcpaq.tools.search import run_search
from lcpaq.tools.search_harness import SearchHarness
from lcpaq.tools.search_space import SearchSpace
from lcpaq.tools.search_study import redacted, study_name
from tests.tools.test_search import _mlp_bundle


def _harness(seed: int = 0) -> SearchHarness:
    return SearchHarness(_mlp_bundle(), load_target("x86-host"), {"size": "0.2x"}, SearchSpace.load().narrowed(["probes=4|8"]), seed)


@pytest.fixture(scope="module")
def harness() -> SearchHarness:
    return _harness()


def test_an_interrupted_search_resumes_where_it_stopped(harness: SearchHarness, tmp_path: Path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    metric, calls = harness.true_metric, []

    def interrupted(config):
        calls.append(config)
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C during the 4th trial
        return metric(config)

    monkeypatch.setattr(harness, "true_metric", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(harness, "full", trials=6, seed=3, storage=url)
    monkeypatch.setattr(harness, "true_metric", metric)
    resumed = run_search(harness, "full", trials=6, seed=3, storage=url)
    assert len(resumed.trials) == 6 and resumed.study["completed_before"] == 3
    assert list(resumed.study["runs"].values()) == [3, 3]  # the first run's three, then this run's three
    assert [t["config"] for t in resumed.trials[:3]] == calls[:3]
    memory = run_search(harness, "full", trials=6, seed=3)
    assert [t["config"] for t in memory.trials[:3]] == calls[:3]  # the same seed samples the same first trials
    assert resumed.best_metric == max(t["score"] for t in resumed.trials)
    firsts = {tuple(sorted(c.items())) for c in calls[:3]}
    assert any(tuple(sorted(t["config"].items())) not in firsts for t in resumed.trials[3:])  # new draws, not a replay
    again = run_search(harness, "full", trials=6, seed=3, storage=url)  # nothing left to do: no trial is scored
    assert again.study["completed_before"] == 6 and len(again.trials) == 6 and again.best == resumed.best
    assert memory.study == {}


def _worker(url: str, barrier, trials: int) -> None:
    harness = _harness()
    metric = harness.true_metric

    def slow(config):  # long enough that both workers are scoring at once
        time.sleep(0.2)
        return metric(config)

    harness.true_metric = slow
    barrier.wait(timeout=120)
    run_search(harness, "full", trials=trials, seed=0, storage=url)


def test_two_workers_fill_one_sqlite_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_worker, args=(url, barrier, 10)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    result = run_search(_harness(), "full", trials=10, seed=0, storage=url)  # a third run: finds the study full
    runs = result.study["runs"]
    assert 10 <= len(result.trials) <= 11  # a worker may finish the trial it started as the other completes the 10th
    assert len(runs) == 2 and min(runs.values()) >= 2 and sum(runs.values()) == len(result.trials)
    assert result.study["completed_before"] == len(result.trials)


def test_a_study_refuses_a_run_with_other_settings(harness: SearchHarness, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_search(harness, "full", trials=2, seed=0, storage=url, study="mine")
    with pytest.raises(ConfigError, match="study 'mine' .* was started with seed=0, not 1"):
        run_search(harness, "full", trials=2, seed=1, storage=url, study="mine")
    other = run_search(harness, "full", trials=2, seed=1, storage=url)  # the default name differs with the settings
    assert other.study["name"] != "mine" and other.study["completed_before"] == 0


def test_an_unreadable_storage_is_named(harness: SearchHarness, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-db.db"
    bad.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(CorruptFileError, match=f"search storage sqlite:///{bad} cannot be opened"):
        run_search(harness, "full", trials=2, storage=f"sqlite:///{bad}")


def test_names_and_redaction() -> None:
    settings = {"model": "mlp", "mode": "full", "seed": 0}
    assert study_name(settings) == study_name(dict(reversed(settings.items()))) != study_name({**settings, "seed": 1})
    assert study_name(settings).startswith("mlp-full-")
    assert redacted("postgresql://lcpaq:secret@db.example:5432/studies") == "postgresql://lcpaq:***@db.example:5432/studies"
