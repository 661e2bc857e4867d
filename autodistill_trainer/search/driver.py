"""The study side of a search: storage, proposals, turn order between concurrent workers, telling trials."""

from __future__ import annotations

import itertools
import logging
import os
import random
import socket
import time
import warnings
from typing import Any, Iterable, Mapping

import optuna
import torch.distributed as dist
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from ..configs import SearchConfig
from ..errors import ConfigError
from . import ledger
from .evaluation import BUDGETS
from .ledger import (
    STATUS_DUPLICATE, STATUS_INVALID, STATUS_NOT_NEEDED, STATUS_OVER_BUDGET, STATUS_TRAINED, LiveTrials, arch_key,
    trial_id,
)
from .latency_model import predicted_budget_violation
from .multi_fidelity import next_multi_fidelity_candidate, time_is_up
from .results import jsonable
from .samplers import make_advisor
from .storage import DEFAULT_DB_FILENAME, Heartbeat, create_or_load_study, fail_dead_workers_trials, make_storage

logger = logging.getLogger(__name__)


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StudyDriver:
    """The study side of a search: storage, proposals, turn order between workers, telling trials.

    Args:
        search_config: the validated ``search`` section.
        output_dir: where the default SQLite study is created.
    """

    def __init__(self, search_config: SearchConfig, output_dir: str) -> None:
        self.search_config = search_config
        self.search_space: dict[str, list[Any]] = search_config.search_space
        self.output_dir = output_dir
        self.advisor = make_advisor(search_config.search_algorithm, self.search_space, search_config.seed)
        self.hostname: str = socket.gethostname()
        self.poll_interval: float = 0.2
        self.search_result: list[dict[str, Any]] = []
        self._study: optuna.Study | None = None
        self._storage: optuna.storages.RDBStorage | None = None
        self._storage_url: str | None = None
        self._distributions = {k: CategoricalDistribution(v) for k, v in self.search_space.items()}
        self._live = LiveTrials()
        self._current: dict[str, Any] | None = None  # the trial proposed by model_arch_proposition
        self._consecutive_duplicates = 0
        self._retryable: frozenset[int] = frozenset()
        self._stop_error: ConfigError | None = None
        self.cost_model: Any = None  # an ArchCostModel: budgets checked on predicted costs before building

    # ---------------------------------------------------------------------------------------- study

    @property
    def storage_url(self) -> str:
        """The Optuna storage URL (default: ``sqlite:///{output_dir}/autodistill_study.db``)."""
        if self._storage_url is None:
            url = self.search_config.storage
            if url is None:
                os.makedirs(self.output_dir, exist_ok=True)
                url = f"sqlite:///{os.path.abspath(os.path.join(self.output_dir, DEFAULT_DB_FILENAME))}"
            self._storage_url = url
        return self._storage_url

    @property
    def study_name(self) -> str:
        return self.search_config.study_name or "autodistill"

    @property
    def grace_period(self) -> int | None:
        """Seconds without heartbeat before a RUNNING trial is failed (default ``max(60, 3 * heartbeat_interval)``)."""
        cfg = self.search_config
        if not cfg.heartbeat_interval:
            return None
        return cfg.grace_period if cfg.grace_period is not None else max(60, 3 * cfg.heartbeat_interval)

    @property
    def study(self) -> optuna.Study | None:
        """The Optuna study (created, or loaded when it exists, on first access; None on ranks other than 0)."""
        if self._study is None:
            rank, world = rank_world()
            if world > 1 and rank != 0:
                return None
            self._study, self._storage = create_or_load_study(
                lambda: make_storage(self.storage_url, self.search_config.heartbeat_interval, self.grace_period),
                self.advisor, self.study_name, self.search_config.higher_is_better,
                {"search_space": self.search_space, "metrics": self.search_config.metrics}, self.storage_url,
            )
        return self._study

    def _snapshot(self, exclude_number: int | None = None) -> ledger.Snapshot:
        trials = self.study.get_trials(deepcopy=False)
        return ledger.snapshot(trials, self.search_space, exclude_number, self._retryable)

    def fail_stale_trials(self) -> None:
        """Fail RUNNING trials whose worker is gone (see :func:`.storage.fail_dead_workers_trials`)."""
        study = self.study
        fail_dead_workers_trials(study, self._storage, self._live, self.hostname)

    # --------------------------------------------------------------------------------- proposing

    def _unseen_arch(self, covered: Iterable[str], number: int) -> dict[str, Any] | None:
        """A random arch not in ``covered`` (seeded), or None when every arch is covered."""
        covered = set(covered)
        rng = random.Random(self.search_config.seed * 1_000_003 + number)
        names = list(self.search_space)
        if self.search_config.space_size <= 200_000:
            candidates = [dict(zip(names, vals)) for vals in itertools.product(*(self.search_space[n] for n in names))]
            candidates = [a for a in candidates if arch_key(a) not in covered]
            return rng.choice(candidates) if candidates else None
        for _ in range(2000):
            arch = {n: rng.choice(self.search_space[n]) for n in names}
            if arch_key(arch) not in covered:
                return arch
        return None

    def model_arch_proposition(self, fixed_arch: Mapping[str, Any] | None = None, **user_attrs: Any) -> dict[str, Any]:
        """Ask the study for a new trial and return its architecture ``{name: value}``.

        The advisor samples every search-space entry with ``suggest_categorical``; with ``fixed_arch``
        the trial gets those values instead (used for retries). The trial stays RUNNING (with a
        heartbeat) until :meth:`search_loop` finishes it.
        """
        study = self.study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Heartbeat of storage is supposed to be used with Study.optimize"
            trial = study.ask()
        tid = trial_id(trial)
        self._live.add(tid)
        heartbeat = Heartbeat(self._storage, tid, self.search_config.heartbeat_interval)
        heartbeat.start()
        trial.set_user_attr("hostname", self.hostname)
        trial.set_user_attr("pid", os.getpid())
        for k, v in user_attrs.items():
            trial.set_user_attr(k, v)
        if fixed_arch is not None:
            for name, distribution in self._distributions.items():
                self._storage.set_trial_param(tid, name, distribution.to_internal_repr(fixed_arch[name]), distribution)
            arch = {k: fixed_arch[k] for k in self.search_space}
        else:
            arch = {name: trial.suggest_categorical(name, values) for name, values in self.search_space.items()}
        self._current = {"trial": trial, "heartbeat": heartbeat, "arch": arch}
        return arch

    def _finish(self, state: TrialState, values: list[float] | None = None, **attrs: Any) -> bool:
        """Record ``attrs`` and tell the current trial. False when another worker already finished it."""
        cur = self._current
        trial = cur["trial"]
        try:
            for k, v in attrs.items():
                trial.set_user_attr(k, jsonable(v))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.study.tell(trial, values=values, state=state)
            return True
        except (RuntimeError, ValueError, SQLAlchemyError) as exc:  # UpdateFinishedTrialError is a RuntimeError
            logger.warning(
                "could not record trial %d (%s): %s; another worker probably failed it as stale, the arch will be "
                "retried", trial.number, cur["arch"], exc,
            )
            return False
        finally:
            cur["heartbeat"].stop()
            self._live.discard(trial_id(trial))
            self._current = None

    def _wait_for_turn(self, number: int) -> ledger.Snapshot:
        """Wait until every lower-numbered RUNNING trial has decided (trains, or finished), so that
        decisions (duplicate? slot left under max_trials?) are taken in trial-number order across workers."""
        start = time.monotonic()
        warned = False
        while True:
            snap = self._snapshot(exclude_number=number)
            blocking = [n for n in snap.undecided if n < number]
            if not blocking:
                return snap
            if not warned and time.monotonic() - start > 60:
                logger.warning("trial %d waits for trials %s to decide (a worker may be stuck; stale trials are "
                               "failed after the grace period)", number, blocking)
                warned = True
            time.sleep(self.poll_interval)
            self.fail_stale_trials()

    def _next_candidate(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """Propose until an arch worth building is found (returns it, its trial RUNNING) or the search ends."""
        cfg = self.search_config
        if cfg.multi_fidelity is not None:
            return next_multi_fidelity_candidate(self, state)
        while True:
            if self._stop_error is not None:
                raise self._stop_error
            if time_is_up(self, state):
                return None
            self.fail_stale_trials()
            snap = self._snapshot()
            if snap.n_counted >= cfg.max_trials:
                logger.info("max_trials=%d trained architectures reached", cfg.max_trials)
                return None
            if len(snap.settled) >= cfg.space_size:
                logger.info("every architecture of the search space (%d) has been evaluated", cfg.space_size)
                return None
            if state["proposals"] >= state["max_proposals"]:
                logger.warning("stopping after %d proposals without reaching max_trials=%d: %s",
                               state["proposals"], cfg.max_trials, self._why_stuck(snap))
                return None
            covered = set(snap.settled) | set(snap.training)
            pending = snap.interrupted or snap.retry
            if snap.n_counted + snap.n_training >= cfg.max_trials or (len(covered) >= cfg.space_size and not pending):
                # the rest is being trained by other workers: wait for them (or for their trials to go stale)
                if "waiting_since" not in state:
                    state["waiting_since"] = time.monotonic()
                    logger.info("waiting for trials %s being trained by other workers", sorted(snap.training.values()))
                elif time.monotonic() - state["waiting_since"] > 300 and not state.get("wait_warned"):
                    state["wait_warned"] = True
                    logger.warning("still waiting for trials %s of other workers after 5 min (without a heartbeat, "
                                   "dead workers are never detected)", sorted(snap.training.values()))
                time.sleep(max(self.poll_interval, 0.5))
                continue
            state.pop("waiting_since", None)
            state["proposals"] += 1
            if snap.interrupted:
                self.model_arch_proposition(fixed_arch=next(iter(snap.interrupted.values())), proposed_by="retry")
            elif snap.retry:
                self.model_arch_proposition(fixed_arch=next(iter(snap.retry.values())), proposed_by="retry_failed")
            elif self._consecutive_duplicates >= 3:
                fallback = self._unseen_arch(covered, state["proposals"])
                if fallback is None:
                    continue
                self.model_arch_proposition(fixed_arch=fallback, proposed_by="random_fallback")
            else:
                self.model_arch_proposition()
            trial, arch = self._current["trial"], self._current["arch"]
            snap = self._wait_for_turn(trial.number)
            if time_is_up(self, state):
                self._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED)
                return None
            key = arch_key(arch)
            if key in snap.settled or key in snap.training:
                original = snap.settled.get(key, snap.training.get(key))
                logger.info("trial %d: %s already evaluated by trial %d, not retrained", trial.number, arch, original)
                self._finish(TrialState.PRUNED, status=STATUS_DUPLICATE, duplicate_of=original)
                self._consecutive_duplicates += 1
                continue
            if snap.n_counted + snap.n_training >= cfg.max_trials:
                self._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED)
                continue
            self._consecutive_duplicates = 0
            if self.rejected_by_prediction(arch):
                continue
            return {"number": trial.number, "arch": arch}

    def rejected_by_prediction(self, arch: Mapping[str, Any]) -> bool:
        """With a ``cost_model``: finish the current trial as over budget, unbuilt, when its predicted costs
        surely break a budget (:func:`.latency_model.predicted_budget_violation`), and say so."""
        if self.cost_model is None:
            return False
        predicted = self.cost_model.predict(arch)
        violation = predicted and predicted_budget_violation(predicted, self.search_config,
                                                             self.cost_model.max_relative_error)
        if not violation:
            return False
        key, reason = violation
        logger.info("trial %d: %s breaks the budget by prediction (%s), not built", self._current["trial"].number,
                    arch, reason)
        exact = {k: predicted[k] for k in ("params", "flops")}  # the latency of a row stays a measured one
        self._finish(TrialState.PRUNED, status=STATUS_OVER_BUDGET, budget_reason=reason, budget_key=key,
                     profile=exact, predicted_latency=predicted.get("latency"))
        return True

    def _why_stuck(self, snap: ledger.Snapshot) -> str:
        """Why proposals ran out: every proposal broke a budget / was invalid, or the advisor repeats itself."""
        statuses = list(snap.statuses.values())
        if STATUS_TRAINED in statuses:
            return "the advisor keeps proposing evaluated architectures"
        parts = []
        for budget_name, (key, unit) in BUDGETS.items():
            over = [r[key] for r in self.search_result
                    if r["status"] == STATUS_OVER_BUDGET and r.get("budget_key") == key and r.get(key) is not None]
            if over:
                budget = getattr(self.search_config, budget_name)
                parts.append(f"none of the {len(over)} architectures proposed fits search.{budget_name}={budget:g} "
                             f"(the smallest measured {key} was {min(over):g}{unit}): raise the budget or move the "
                             "search space towards smaller architectures")
        n_invalid = statuses.count(STATUS_INVALID)
        if n_invalid:
            parts.append(f"{n_invalid} proposed architectures were invalid")
        return "; ".join(parts) or "the advisor keeps proposing evaluated architectures"
