"""Multi-fidelity arithmetic: rung fractions and promotion by dominance (pure functions, no Optuna).

Successive halving by dominance, asynchronous (ASHA style, as Syne Tune's MO-ASHA): rung ``k`` trains a
candidate for ``min_fraction * reduction_factor**k`` of the per-trial budget, the top rung exactly 1. The
candidates evaluated at a rung are ranked by non-dominated sorting on the search's objectives, crowding
distance breaking ties inside a front (larger first, as in NSGA-II), then by trial number. When a worker is
free it promotes, highest rung first, a candidate within the top ``floor(n / reduction_factor)`` of the ``n``
evaluated at its rung and not promoted yet; otherwise it starts a new candidate at rung 0.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

from ..configs.search import FULL_BUDGET_TOLERANCE, first_full_result_cost, rung_fractions
from .selection import dominates as is_dominating

__all__ = ["FULL_BUDGET_TOLERANCE", "choose_promotion", "first_full_result_cost", "nondominated_rank_with_crowding",
           "promotable", "rung_fractions"]


def _fronts(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]) -> list[list[int]]:
    """Non-dominated sorting: the indices of front 0 (non-dominated), front 1 (dominated by front 0 only), ..."""
    n = len(points)
    dominated_by = [0] * n
    dominates: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j and is_dominating(points[i], points[j], higher_is_better):
                dominates[i].append(j)
                dominated_by[j] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if dominated_by[i] == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominates[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def _crowding(points: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each index of ``front`` (boundary points: infinity)."""
    distance = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for d in range(len(points[front[0]])):
        ordered = sorted(front, key=lambda i: (points[i][d], i))
        lo, hi = points[ordered[0]][d], points[ordered[-1]][d]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if hi == lo:
            continue
        for prev, cur, nxt in zip(ordered, ordered[1:], ordered[2:]):
            distance[cur] += (points[nxt][d] - points[prev][d]) / (hi - lo)
    return distance


def nondominated_rank_with_crowding(points: Sequence[Sequence[float]], higher_is_better: Sequence[bool]) -> list[int]:
    """The indices of ``points``, best first: by non-dominated front, then larger crowding distance, then index.

    With one objective this is simply best value first (ties: lower index).
    """
    order: list[int] = []
    for front in _fronts(points, higher_is_better):
        crowd = _crowding(points, front)
        order += sorted(front, key=lambda i: (-crowd[i], i))
    return order


def promotable(
    results: Sequence[tuple[Hashable, Sequence[float]]],
    promoted: set[Hashable] | frozenset[Hashable],
    reduction_factor: int,
    higher_is_better: Sequence[bool],
) -> list[Hashable]:
    """The candidates of one rung that may be promoted now, best first.

    ``results``: ``(candidate, objective values)`` of the ``n`` candidates evaluated at the rung, in trial
    order (the index breaks the last ties). Returns those within the top ``floor(n / reduction_factor)`` by
    :func:`nondominated_rank_with_crowding` that are not in ``promoted``.
    """
    top = len(results) // reduction_factor
    if top == 0:
        return []
    order = nondominated_rank_with_crowding([values for _, values in results], higher_is_better)
    return [results[i][0] for i in order[:top] if results[i][0] not in promoted]


def choose_promotion(
    rungs: Mapping[int, Sequence[tuple[Hashable, Sequence[float]]]],
    promoted: Mapping[int, set[Hashable] | frozenset[Hashable]],
    n_rungs: int,
    reduction_factor: int,
    higher_is_better: Sequence[bool],
    fits: Mapping[int, bool] | None = None,
) -> tuple[int, Hashable] | None:
    """``(rung, candidate)`` to promote from ``rung`` to ``rung + 1``, highest rung first, or None.

    ``rungs[r]``: the results at rung ``r``; ``promoted[r]``: candidates of rung ``r`` already promoted (or
    being promoted); ``fits[r]``: whether a promotion from ``r`` still fits the compute budget (default yes).
    The top rung (``n_rungs - 1``) is never promoted from.
    """
    for rung in range(n_rungs - 2, -1, -1):
        if fits is not None and not fits.get(rung, True):
            continue
        ready = promotable(rungs.get(rung, ()), promoted.get(rung, frozenset()), reduction_factor, higher_is_better)
        if ready:
            return rung, ready[0]
    return None


def constant_objectives(values: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the objectives on which every one of ``values`` (one list per candidate, at least two
    candidates) is equal: a rung whose training was too short to tell the candidates apart on that objective
    (e.g. every student still predicting the majority class) ranks them on the other objectives only."""
    if len(values) < 2:
        return []
    return [i for i in range(len(values[0])) if len({float(v[i]) for v in values}) == 1]

