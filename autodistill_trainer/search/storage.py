"""Study storage: creation from a URL, SQLite tuning, trial heartbeats, detection of dead workers."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import warnings
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError

from ..errors import ConfigError
from ..fileio import pid_alive
from .ledger import LiveTrials, trial_id

logger = logging.getLogger(__name__)

__all__ = ["Heartbeat", "create_or_load_study", "fail_dead_workers_trials", "make_storage"]

DEFAULT_DB_FILENAME = "autodistill_study.db"


def _tune_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal + synchronous=NORMAL: a commit costs no fsync, readers do not block the writer.

    Safe for several processes on one host (not on a network file system, where SQLite is unsafe anyway).
    """

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as exc:  # another process holds a lock: keep the defaults
            logger.debug("could not tune SQLite: %s", exc)
        finally:
            cur.close()

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # pooled connections were opened before the listener


def make_storage(url: str, heartbeat_interval: int | None, grace_period: int | None) -> optuna.storages.RDBStorage:
    """An RDB storage for ``url`` (SQLite tuned for concurrent local workers; pre-ping for servers)."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
        )
    if url.startswith("sqlite"):
        _tune_sqlite(storage)
    return storage


def create_or_load_study(
    make: Callable[[], optuna.storages.RDBStorage],
    sampler: optuna.samplers.BaseSampler,
    study_name: str,
    higher_is_better: Sequence[bool],
    user_attrs: dict[str, Any],
    url: str,
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Create the study, or load it when it exists; returns it with the storage object it uses.

    Retries a few times: concurrent first creations race on the schema (SQLite). Raises ConfigError
    when an existing study has other optimisation directions.
    """
    directions = ["maximize" if h else "minimize" for h in higher_is_better]
    last_exc: Exception | None = None
    for attempt in range(5):
        try:
            storage = make()
            study = optuna.create_study(
                storage=storage, sampler=sampler, study_name=study_name, directions=directions, load_if_exists=True
            )
            break
        except (SQLAlchemyError, optuna.exceptions.DuplicatedStudyError) as exc:
            last_exc = exc
            logger.warning("creating study %r failed (%s), retrying", study_name, exc)
            time.sleep(0.5 * (attempt + 1))
    else:
        raise RuntimeError(f"could not create or load study {study_name!r} in {url}") from last_exc
    found = [d.name for d in study.directions]
    if found != [d.upper() for d in directions]:
        raise ConfigError(
            f"search.study_name: study {study_name!r} in {url} has directions {found}, but search.metrics/"
            f"search.higher_is_better give {[d.upper() for d in directions]}; use another search.study_name."
        )
    attrs = study.user_attrs
    if "search_space" not in attrs:
        try:
            for key, value in user_attrs.items():
                study.set_user_attr(key, value)
        except SQLAlchemyError as exc:  # cosmetic: the attributes only describe the study
            logger.warning("could not record the search space on study %r: %s", study_name, exc)
    elif attrs["search_space"] != user_attrs.get("search_space"):
        logger.warning(
            "study %r was created with another search space %s; resuming it with %s",
            study_name, attrs["search_space"], user_attrs.get("search_space"),
        )
    _name_metrics(study, user_attrs.get("metrics"))
    return study, storage


def _name_metrics(study: optuna.Study, metrics: Sequence[str] | None) -> None:
    """``study.set_metric_names(metrics)`` (the search's metric names, in objective order) so that
    optuna-dashboard and ``optuna.visualization`` label the objectives; skipped when already set."""
    if not metrics or len(metrics) != len(study.directions) or study.metric_names == list(metrics):
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metrics))
    except SQLAlchemyError as exc:  # cosmetic: the names only label the objectives
        logger.warning("could not name the metrics of study %r: %s", study.study_name, exc)


class Heartbeat:
    """Background thread recording a trial's heartbeat in an RDB storage every ``interval`` seconds."""

    def __init__(self, storage: optuna.storages.RDBStorage, tid: int, interval: int | None) -> None:
        self._storage, self._trial_id, self._interval = storage, tid, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self._interval:
            return
        self._thread = threading.Thread(target=self._run, name=f"autodistill-heartbeat-{self._trial_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self._storage.record_heartbeat(self._trial_id)
            except SQLAlchemyError as exc:  # a transient DB error must not kill the worker
                logger.warning("heartbeat of trial id %s failed: %s", self._trial_id, exc)
            if self._stop.wait(self._interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def fail_dead_workers_trials(
    study: optuna.Study, storage: optuna.storages.RDBStorage, live: LiveTrials, hostname: str
) -> None:
    """Fail RUNNING trials whose worker is gone, so that their archs get retried.

    Two mechanisms: Optuna's heartbeat (a trial silent for longer than the grace period is failed by
    :func:`optuna.storages.fail_stale_trials`; works across machines), and, for trials recorded by this
    host, a dead (or zombie) pid, or this very process id for a trial that ``live`` does not hold
    (immediate, no grace period). Such trials are FAIL without ``status == "failed"``: they are
    *interrupted*, do not count, and their archs are proposed again.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    except SQLAlchemyError as exc:  # a storage hiccup: the next poll tries again
        logger.warning("failing stale trials of study %r failed: %s", study.study_name, exc)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = trial_id(t)
        if tid in live:
            continue
        host, pid = t.user_attrs.get("hostname"), t.user_attrs.get("pid")
        if host != hostname or not isinstance(pid, int):
            continue
        if pid != os.getpid() and pid_alive(pid):
            continue
        reason = f"worker pid {pid} on {host} is gone"
        try:
            storage.set_trial_user_attr(tid, "interrupted_reason", reason)
            if storage.set_trial_state_values(tid, TrialState.FAIL):
                logger.warning(
                    "trial %d (%s) was left RUNNING by a dead worker (%s): marked failed, its arch will be retried",
                    t.number, t.params, reason,
                )
        except optuna.exceptions.UpdateFinishedTrialError:
            logger.debug("trial %d was finished by another worker meanwhile", t.number)
