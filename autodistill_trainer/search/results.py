"""Result rows of a search, ``search_results.json`` (written atomically) and :class:`AutoDistillationResult`."""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

from optuna.trial import FrozenTrial, TrialState

from ..fileio import atomic_write_json

from .ledger import (
    STATUS_FAILED,
    STATUS_INVALID,
    STATUS_OVER_BUDGET,
    STATUS_TRAINED,
    arch_key,
    rung_key,
    trial_arch,
    trial_budget,
    trial_rung,
    trial_status,
)

__all__ = ["AutoDistillationResult", "RESULTS_FILENAME", "failure_reasons", "jsonable", "rows_of",
           "write_results_file"]

RESULTS_FILENAME = "search_results.json"

_ROW_STATUSES = (STATUS_TRAINED, STATUS_FAILED, STATUS_INVALID, STATUS_OVER_BUDGET)


@dataclasses.dataclass
class AutoDistillationResult:
    """What a search found.

    Attributes:
        best_model_arch: the selected architecture ``{name: value}``, or ``None`` when nothing was trained.
        best_model_dir: the directory of the best trained student when the ``eval_func`` reported one
            (``model_dir``; the built-in OOB functions do), else ``None``.
        best_row: the result row of the best architecture (``None`` when nothing was trained).
        pareto_front: the rows of the Pareto-optimal trained architectures, best first metric first.
        rows: one row per evaluated architecture, by trial number (= ``AutoDistillation.search_result``).
        n_trained: architectures trained successfully.
        failure_reasons: ``{reason: count}`` over the rows that were not trained successfully
            (``"failed: ..."``, ``"invalid: ..."``, ``"over_budget: latency"``...).
    """

    best_model_arch: dict[str, Any] | None
    best_model_dir: str | None
    best_row: dict[str, Any] | None
    pareto_front: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    n_trained: int
    failure_reasons: dict[str, int]


def jsonable(value: Any) -> Any:
    """Convert metric values (numpy/torch scalars, nested dicts) to JSON-friendly Python objects."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, str, int, type(None))):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f) or math.isinf(f):
        return str(f)  # JSON has no NaN/inf; keep it readable
    return f


def _row(t: FrozenTrial, status: str, arch: dict[str, Any], metric_names: Sequence[str]) -> dict[str, Any]:
    profile = t.user_attrs.get("profile") or {}
    metrics = t.user_attrs.get("metrics")
    if status == STATUS_TRAINED:
        metrics = dict(metrics or {})
        for name, v in zip(metric_names, t.values or []):
            metrics.setdefault(name, v)
    attrs = t.user_attrs
    reason = attrs.get("failure_reason") or attrs.get("invalid_reason") or attrs.get("budget_reason")
    return {
        "number": t.number,
        "arch": arch,
        "status": status,
        "state": t.state.name,
        "metrics": metrics if status in (STATUS_TRAINED, STATUS_FAILED) else None,
        "params": profile.get("params"),
        "flops": profile.get("flops"),
        "latency": profile.get("latency"),
        "duration_s": t.user_attrs.get("duration_s"),
        "failure_reason": reason,
        "budget_key": t.user_attrs.get("budget_key"),
        "model_dir": t.user_attrs.get("model_dir"),
        "worker": f"{t.user_attrs.get('hostname')}:{t.user_attrs.get('pid')}",
        "rung": trial_rung(t),
        "budget": trial_budget(t),
        "parent": t.user_attrs.get("parent"),
        **({"fidelity": attrs["fidelity"]} if "fidelity" in attrs else {}),  # supernet search: proxy | final
    }


def rows_of(
    trials: Sequence[FrozenTrial], search_space: Mapping[str, Sequence[Any]], metric_names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per evaluated architecture and rung, by trial number (trained, failed, invalid, over budget).

    Rows carry ``rung`` (0 without multi-fidelity), ``budget`` (the fraction of the per-trial budget trained,
    1 without multi-fidelity) and ``parent`` (the trial a promotion came from). An (architecture, rung) settled
    by several trials (a failed one retried by a later run, or a race between
    resumed workers) is shown once: its trained trial if any, else its latest one.
    """
    chosen: dict[str, dict[str, Any]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        status = trial_status(t)
        if t.state == TrialState.RUNNING or status not in _ROW_STATUSES:
            continue
        arch = trial_arch(t, search_space)
        if arch is None:
            continue
        key = rung_key(arch_key(arch), trial_rung(t))
        previous = chosen.get(key)
        if previous is not None and previous["status"] == STATUS_TRAINED:
            continue
        chosen[key] = _row(t, status, arch, metric_names)
    return sorted(chosen.values(), key=lambda r: r["number"])


def failure_reasons(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """``{reason: count}`` over rows not trained successfully; budget breaks are grouped by budget."""
    counts: collections.Counter[str] = collections.Counter()
    for row in rows:
        if row["status"] == STATUS_TRAINED:
            continue
        if row["status"] == STATUS_OVER_BUDGET:
            counts[f"over_budget: {row.get('budget_key') or row.get('failure_reason')}"] += 1
        else:
            counts[f"{row['status']}: {row.get('failure_reason')}"] += 1
    return dict(counts.most_common())


def write_results_file(output_dir: str, study_name: str, cfg: Any, result: AutoDistillationResult,
                       extra: Mapping[str, Any]) -> str:
    """Write ``search_results.json`` atomically in ``output_dir`` (see :mod:`autodistill_trainer.search`); return
    its path. ``cfg`` is the :class:`~autodistill_trainer.configs.SearchConfig`; ``extra`` entries are added."""
    rows = result.rows
    data = {
        "study_name": study_name,
        "search_algorithm": cfg.search_algorithm,
        "metrics": cfg.metrics,
        "higher_is_better": cfg.higher_is_better,
        "max_trials": cfg.max_trials,
        "n_trained": sum(1 for r in rows if r["status"] in (STATUS_TRAINED, STATUS_FAILED)),
        "trials": rows,
        "pareto_front": result.pareto_front,
        "best_model_arch": result.best_model_arch,
        "best_model_dir": result.best_model_dir,
        "failure_reasons": result.failure_reasons,
        **extra,
    }
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_FILENAME)
    atomic_write_json(path, jsonable(data))
    return path
