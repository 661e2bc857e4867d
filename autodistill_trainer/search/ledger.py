"""Trial bookkeeping: each trial's status and architecture, snapshots of the study, this agent's live trials.

Trial statuses (user attribute ``status`` / Optuna state / counts toward ``max_trials``): see
:mod:`autodistill_trainer.search`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any, Collection, Mapping, Sequence

from optuna.trial import FrozenTrial, Trial, TrialState

__all__ = [
    "STATUS_DUPLICATE", "STATUS_FAILED", "STATUS_INTERRUPTED", "STATUS_INVALID", "STATUS_NOT_NEEDED",
    "STATUS_OVER_BUDGET", "STATUS_TRAINED", "STATUS_TRAINING", "LiveTrials", "Snapshot", "arch_key", "rung_key",
    "snapshot", "trial_arch", "trial_budget", "trial_id", "trial_rung", "trial_status",
]

STATUS_TRAINED = "trained"
STATUS_FAILED = "failed"
STATUS_INVALID = "invalid"
STATUS_OVER_BUDGET = "over_budget"
STATUS_DUPLICATE = "duplicate"
STATUS_NOT_NEEDED = "not_needed"
STATUS_TRAINING = "training"
STATUS_INTERRUPTED = "interrupted"


def trial_id(trial: Trial | FrozenTrial) -> int:
    """The storage id of a trial.

    Optuna has no public accessor for it, but its storage API (heartbeats, setting a param or a state
    on a trial that is not the current ``Trial`` object) is keyed by it. Every such use goes through here.
    """
    return trial._trial_id


def arch_key(arch: Mapping[str, Any]) -> str:
    """A canonical string of an architecture (sorted keys), to compare architectures."""
    return json.dumps({k: arch[k] for k in sorted(arch)}, sort_keys=True)


def trial_rung(t: FrozenTrial) -> int:
    """The multi-fidelity rung of a trial (user attribute ``rung``; 0 without one)."""
    return int(t.user_attrs.get("rung") or 0)


def trial_budget(t: FrozenTrial) -> float:
    """The fraction of the per-trial budget a trial trains (user attribute ``budget``; 1 without one)."""
    budget = t.user_attrs.get("budget")
    return 1.0 if budget is None else float(budget)


def rung_key(key: str, rung: int) -> str:
    """The ledger key of an architecture at a rung: the arch key at rung 0, ``<arch key>@rung<k>`` above, so that
    dedupe, settling and retries are per (architecture, rung)."""
    return key if rung == 0 else f"{key}@rung{rung}"


def trial_arch(t: FrozenTrial, search_space: Mapping[str, Sequence[Any]]) -> dict[str, Any] | None:
    """The trial's architecture (its params on the search space), or None when it has not got them all."""
    if not all(k in t.params for k in search_space):
        return None
    return {k: t.params[k] for k in search_space}


def trial_status(t: FrozenTrial) -> str | None:
    """The trial's status (``trained``, ``failed``, ``interrupted``, or its ``status`` user attribute)."""
    status = t.user_attrs.get("status")
    if t.state == TrialState.COMPLETE:
        return STATUS_TRAINED
    if t.state == TrialState.FAIL:
        return STATUS_FAILED if status == STATUS_FAILED else STATUS_INTERRUPTED
    return status


@dataclasses.dataclass
class Snapshot:
    """Classification of the study's trials at one moment."""

    settled: dict[str, int]  # arch key -> number of a trial that settled it (trained/failed/invalid/over budget)
    training: dict[str, int]  # arch key -> number of a RUNNING trial that is training it
    interrupted: dict[str, dict[str, Any]]  # arch key -> arch of an interrupted trial (first one)
    retry: dict[str, dict[str, Any]]  # arch key -> arch that failed in an earlier run, to be retried once
    undecided: list[int]  # numbers of RUNNING trials that have not decided yet
    n_counted: int  # trained + failed distinct archs (failures to retry excluded)
    n_training: int
    statuses: dict[str, str]  # arch key -> status of the trial in ``settled``
    spent: float = 0.0  # sum of the budgets (fractions) of the counted keys: full-trial equivalents
    in_flight: float = 0.0  # sum of the budgets of the keys being trained and not counted yet
    meta: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # key -> {rung, budget, parent}
    archs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # arch key -> arch
    rung_results: dict[int, list[tuple[str, int, list[float]]]] = dataclasses.field(default_factory=dict)
    rung_started: dict[int, set[str]] = dataclasses.field(default_factory=dict)  # rung -> arch keys tried there


def snapshot(
    trials: Sequence[FrozenTrial],
    search_space: Mapping[str, Sequence[Any]],
    exclude_number: int | None = None,
    retryable: Collection[int] = (),
) -> Snapshot:
    """Classify ``trials``; failed trials whose number is in ``retryable`` do not settle their arch."""
    settled: dict[str, int] = {}
    statuses: dict[str, str] = {}
    training: dict[str, int] = {}
    interrupted: dict[str, dict[str, Any]] = {}
    retry: dict[str, dict[str, Any]] = {}
    undecided: list[int] = []
    counted: set[str] = set()
    budgets: dict[str, float] = {}
    meta: dict[str, dict[str, Any]] = {}
    archs: dict[str, dict[str, Any]] = {}
    rung_results: dict[int, list[tuple[str, int, list[float]]]] = {}
    rung_started: dict[int, set[str]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.number == exclude_number:
            continue
        status = trial_status(t)
        arch = trial_arch(t, search_space)
        base = arch_key(arch) if arch is not None else None
        rung = trial_rung(t)
        key = rung_key(base, rung) if base is not None else None
        if key is not None:
            archs.setdefault(base, arch)
            budgets.setdefault(key, trial_budget(t))
            if "rung" in t.user_attrs:
                meta.setdefault(key, {"rung": rung, "budget": trial_budget(t), "parent": t.user_attrs.get("parent")})
            if status in (STATUS_TRAINED, STATUS_FAILED, STATUS_TRAINING, STATUS_INTERRUPTED):
                rung_started.setdefault(rung, set()).add(base)
            if status == STATUS_TRAINED and t.values is not None and base not in {
                    b for b, _, _ in rung_results.get(rung, ())}:
                rung_results.setdefault(rung, []).append((base, t.number, list(t.values)))
        if t.state == TrialState.RUNNING:
            if status == STATUS_TRAINING and key is not None:
                training.setdefault(key, t.number)
            else:
                undecided.append(t.number)
            continue
        if key is None:
            continue
        if status == STATUS_FAILED and t.number in retryable:
            retry.setdefault(key, arch)
        elif status in (STATUS_TRAINED, STATUS_FAILED):
            if key not in settled or status == STATUS_TRAINED:
                statuses[key] = status
            settled.setdefault(key, t.number)
            counted.add(key)
        elif status in (STATUS_INVALID, STATUS_OVER_BUDGET):
            statuses.setdefault(key, status)
            settled.setdefault(key, t.number)
        elif status == STATUS_INTERRUPTED:
            interrupted.setdefault(key, arch)
    busy = set(settled) | set(training)
    interrupted = {k: a for k, a in interrupted.items() if k not in busy}
    retry = {k: a for k, a in retry.items() if k not in busy and k not in interrupted}
    n_training = sum(1 for k in training if k not in counted)
    spent = sum(budgets[k] for k in counted)
    in_flight = sum(budgets[k] for k in training if k not in counted)
    return Snapshot(settled, training, interrupted, retry, undecided, len(counted), n_training, statuses,
                    spent, in_flight, meta, archs, rung_results, rung_started)


class LiveTrials:
    """The trials this agent is driving now (storage ids), to tell them apart from RUNNING trials left
    behind by a dead run that had this same process id. Thread-safe; one per :class:`AutoDistillation`."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, tid: int) -> None:
        with self._lock:
            self._ids.add(tid)

    def discard(self, tid: int) -> None:
        with self._lock:
            self._ids.discard(tid)

    def __contains__(self, tid: object) -> bool:
        with self._lock:
            return tid in self._ids
