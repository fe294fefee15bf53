"""Where a search's trials live: an in-memory optuna study, or one in optuna's RDB storage (a
SQLite file, or a PostgreSQL URL where a team has one) that an interrupted search resumes and
that several workers, on one machine or many, fill together.

A stored study remembers the settings it was started with (model, target, budgets, mode, proxy,
seed, space) and refuses a run with other ones. Every trial records its configuration, its
score and the run (host, process, start time) that scored it, so the report can say what each
run contributed. A worker that dies mid-trial stops sending heartbeats; the next worker to start
a trial marks that one failed and re-queues its configuration.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
import warnings
from collections import Counter
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from lcpaq.ir.errors import ConfigError, CorruptFileError

CONFIG_ATTR, SCORE_ATTR, RUN_ATTR = "lcpaq.config", "lcpaq.score", "lcpaq.run"
SETTINGS_ATTR = "lcpaq.settings"
#: Seconds between a running trial's heartbeats, and without one before it counts as dead.
HEARTBEAT_S, GRACE_S = 10, 60
#: Opens of a new database tried before its error is reported.
CREATE_ATTEMPTS = 4


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random state is reseeded from (seed, trial number) before each trial, so that a
    resumed search or a second worker draws new configurations rather than the first run's
    again, and every run is reproducible from the seed and the trials already in the study."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed=seed)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:  # noqa: D102
        state = (self._base_seed * 1_000_003 + trial.number) % 2**32
        self._rng.rng.seed(state)  # optuna's TPESampler keeps its generators here (checked by the tests)
        self._random_sampler._rng.rng.seed(state ^ 0x5EED)
        super().before_trial(study, trial)


def run_id() -> str:
    """This run's name in the study: host, process id, start time and a random tag (two runs of
    one process in one second differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{time.strftime('%Y%m%dT%H%M%S')}:{uuid.uuid4().hex[:6]}"


def study_name(settings: dict[str, Any]) -> str:
    """The default study name: the model, the mode and a digest of every setting, so that the
    same command resumes its own study and another command gets another."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{settings.get('model', 'model')}-{settings.get('mode', 'search')}-{digest}"


def redacted(url: str) -> str:
    """A storage URL without its password (for reports and errors)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 (not a URL sqlalchemy parses: say nothing of it beyond its scheme)
        return url.split("://", 1)[0] + "://..."


def _storage(url: str) -> RDBStorage:
    """The RDB storage at ``url``, with heartbeats; workers that create a new database at the same
    moment race on its schema, so a failed first open is retried."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # wait out other workers' writes
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():  # optuna marks heartbeats experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
        except Exception:  # noqa: BLE001 (another worker is creating the tables: wait, then open what it made)
            if attempt == CREATE_ATTEMPTS:
                raise
            time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")  # the last attempt returned or raised


def _unusable(url: str, exc: Exception) -> CorruptFileError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CorruptFileError(f"search storage {redacted(url)} cannot be opened: {first[:200]}")


def check_storage(url: str) -> None:
    """CorruptFileError (naming the storage) if ``url`` cannot be opened as optuna storage: run
    before any heavy work. A new SQLite file is created with optuna's tables."""
    try:
        _storage(url).remove_session()
    except Exception as exc:  # noqa: BLE001 (sqlalchemy's and optuna's errors: the storage is unusable)
        raise _unusable(url, exc) from exc


def open_study(storage: str | None, name: str | None, seed: int, settings: dict[str, Any]) -> tuple[optuna.Study, str | None]:
    """The study to search in (maximizing) and its name: in memory without ``storage``; else
    created or loaded from it. ConfigError if the stored study was started with other settings;
    CorruptFileError if the storage cannot be opened."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = TrialSeededTPE(seed)
    if storage is None:
        return optuna.create_study(direction="maximize", sampler=sampler), None
    name = name or study_name(settings)
    try:
        study = optuna.create_study(storage=_storage(storage), study_name=name, direction="maximize", sampler=sampler,
                                    load_if_exists=True)
        stored = study.user_attrs.get(SETTINGS_ATTR)
        if stored is None:
            study.set_user_attr(SETTINGS_ATTR, json.loads(json.dumps(settings, default=str)))
    except Exception as exc:  # noqa: BLE001 (sqlalchemy's and optuna's errors: the storage is unusable)
        raise _unusable(storage, exc) from exc
    wanted = json.loads(json.dumps(settings, default=str))
    if stored is not None and stored != wanted:
        key = next(k for k in sorted({*stored, *wanted}) if stored.get(k) != wanted.get(k))
        raise ConfigError(f"study {name!r} in {redacted(storage)} was started with {key}={stored.get(key)!r}, "
                          f"not {wanted.get(key)!r}: pass another --study name (or the original settings)")
    return study, name


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """The study's completed trials, in trial order."""
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def record(trial: optuna.Trial, config: dict[str, Any], score: float, run: str) -> None:
    trial.set_user_attr(CONFIG_ATTR, config)
    trial.set_user_attr(SCORE_ATTR, score)
    trial.set_user_attr(RUN_ATTR, run)


def history(study: optuna.Study) -> list[dict[str, Any]]:
    """Every completed trial as ``{"config", "score", "run"}``, in trial order."""
    return [{"config": t.user_attrs[CONFIG_ATTR], "score": float(t.user_attrs[SCORE_ATTR]), "run": t.user_attrs[RUN_ATTR]}
            for t in completed(study) if CONFIG_ATTR in t.user_attrs]


def contributions(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Trials each run contributed, in the order the runs first appear."""
    return dict(Counter(e["run"] for e in entries))


__all__ = ["TrialSeededTPE", "check_storage", "completed", "contributions", "history", "open_study", "record", "redacted", "run_id", "study_name"]
