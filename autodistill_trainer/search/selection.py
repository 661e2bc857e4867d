"""Pareto front and best-architecture selection.

With the Optuna study at hand the front comes from :attr:`optuna.Study.best_trials`; the plain-point
helpers :func:`pareto_front` and :func:`knee_point` serve rows read back from ``search_results.json``
(and :mod:`autodistill_trainer.report`).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Collection, Sequence

import optuna

logger = logging.getLogger(__name__)

__all__ = ["dominates", "pareto_front", "knee_point", "front_numbers", "select"]


def dominates(a: Sequence[float], b: Sequence[float], higher_is_better: Sequence[bool]) -> bool:
    """Whether point ``a`` Pareto-dominates ``b``: at least as good everywhere, better somewhere."""
    better_somewhere = False
    for x, y, hib in zip(a, b, higher_is_better):
        if not hib:
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better_somewhere = True
    return better_somewhere


def pareto_front(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points (each objective maximised where ``higher_is_better``).

    Identical points are all kept (none dominates the other), as in :attr:`optuna.Study.best_trials`.
    """
    return [
        i for i, p in enumerate(points)
        if not any(dominates(q, p, higher_is_better) for j, q in enumerate(points) if j != i)
    ]


def knee_point(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]) -> int:
    """Index of the point closest (Euclidean) to the ideal point after min-max normalising each objective.

    Each objective is mapped to [0, 1] with 0 = best value among ``points`` (an objective with no spread
    maps to 0). Ties go to the lowest index.
    """
    if not points:
        raise ValueError("knee_point needs at least one point")
    dims = len(points[0])
    norm = [[0.0] * dims for _ in points]
    for d in range(dims):
        col = [p[d] for p in points]
        lo, hi = min(col), max(col)
        for i, v in enumerate(col):
            if hi == lo:
                continue
            gap = (hi - v) if higher_is_better[d] else (v - lo)
            norm[i][d] = gap / (hi - lo)
    dists = [math.sqrt(sum(x * x for x in row)) for row in norm]
    return min(range(len(points)), key=lambda i: (dists[i], i))


def front_numbers(study: optuna.Study) -> set[int]:
    """Numbers of the study's Pareto-optimal COMPLETE trials (Optuna's :attr:`~optuna.Study.best_trials`)."""
    if len(study.directions) == 1:
        completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not completed:
            return set()
        best = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
        value = best(t.value for t in completed)
        return {t.number for t in completed if t.value == value}
    return {t.number for t in study.best_trials}


def select(
    rows: Sequence[dict[str, Any]],
    metrics: Sequence[str],
    higher_is_better: Sequence[bool],
    max_latency_ms: float | None = None,
    front: Collection[int] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The Pareto front (rows of trained trials, best first metric first) and the best trained row.

    ``front``: numbers of the Pareto-optimal trials when known (from :func:`front_numbers`); computed
    from the rows' metrics otherwise. Best: with ``max_latency_ms``, the trained row within the latency
    budget with the best first metric (ties: later metrics, then lower trial number); otherwise, with one
    metric, the best value; with several, the knee of the front (:func:`knee_point`).
    """
    done = [r for r in rows if r["status"] == "trained"]
    if not done:
        return [], None
    points = [[float(r["metrics"][m]) for m in metrics] for r in done]
    if front is None:
        front_idx = pareto_front(points, higher_is_better)
    else:
        front_idx = [i for i, r in enumerate(done) if r["number"] in front]
    sign = [1.0 if h else -1.0 for h in higher_is_better]

    def rank_key(i: int) -> tuple:
        return tuple(-s * v for s, v in zip(sign, points[i])) + (done[i]["number"],)

    front_idx.sort(key=rank_key)
    best: int | None = None
    if max_latency_ms is not None:
        within = []
        for i, r in enumerate(done):
            lat = r["metrics"].get("latency", r.get("latency"))
            if lat is not None and float(lat) <= max_latency_ms:
                within.append(i)
        if within:
            best = min(within, key=rank_key)
        else:
            logger.warning(
                "no trained architecture is within max_latency_ms=%g; best_model_arch falls back to the Pareto knee",
                max_latency_ms,
            )
    if best is None:
        if len(metrics) == 1 or not front_idx:
            best = min(range(len(done)), key=rank_key)
        else:
            best = front_idx[knee_point([points[i] for i in front_idx], higher_is_better)]
    return [done[i] for i in front_idx], done[best]
