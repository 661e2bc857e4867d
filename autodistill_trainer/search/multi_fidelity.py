"""Proposals of a multi-fidelity search: promotions by dominance, new rung-0 candidates, the compute budget.

A rung is one Optuna trial with user attributes ``rung``, ``budget`` (the fraction of the per-trial budget it
trains) and ``parent`` (the number of the trial it was promoted from; None at rung 0). A promotion is a new
trial with the parent's architecture, so the study, resuming after a crash and several workers on one storage
work as for a plain search: each proposal decides in trial-number order (:meth:`StudyDriver._wait_for_turn`),
dedupe is per (architecture, rung), and ``max_trials`` counts full-trial equivalents (sum of the budgets of
trained and failed trials), never exceeded: a proposal that would not fit is not made.

Order of proposals: an interrupted trial (same arch, rung and budget), a failure of an earlier run to retry,
a promotion (:func:`.fidelity.choose_promotion`, highest rung first), else a new candidate at rung 0 from the
advisor. A promotion is checked again when its turn comes: still within the top ``floor(n / eta)`` of its
rung (the ranking may have changed meanwhile), not promoted by another worker.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from optuna.trial import TrialState

from ..errors import ConfigError
from .fidelity import choose_promotion, constant_objectives, promotable, rung_fractions
from .ledger import STATUS_DUPLICATE, STATUS_NOT_NEEDED, Snapshot, arch_key, rung_key

logger = logging.getLogger(__name__)

__all__ = ["EPS", "accepts_budget", "check_train_func", "fidelity_summary", "next_multi_fidelity_candidate",
           "time_is_up"]

#: Slack on budget sums (fractions like 0.111 add up with rounding error).
EPS = 1e-6


def time_is_up(driver: Any, state: dict[str, Any]) -> bool:
    """Whether ``search.time_budget_s`` (wall time since this ``search_loop`` call started) is spent."""
    budget = driver.search_config.time_budget_s
    if budget is None or "t_start" not in state:
        return False
    if time.monotonic() - state["t_start"] < budget:
        return False
    if not state.get("time_logged"):
        state["time_logged"] = True
        logger.info("search.time_budget_s=%g s spent: no new training starts; the search ends with what it has "
                    "(run it again to continue)", budget)
    return True


def _promotions(driver: Any, snap: Snapshot, left: float, left_below_top: float,
                fractions: list[float]) -> tuple[int, str] | None:
    cfg = driver.search_config
    top = len(fractions) - 1
    promoted = {r: snap.rung_started.get(r + 1, set()) for r in range(top)}
    rungs = {r: [(base, values) for base, _, values in snap.rung_results.get(r, [])] for r in range(len(fractions))}
    fits = {r: fractions[r + 1] <= (left if r + 1 == top else left_below_top) + EPS for r in range(top)}
    return choose_promotion(rungs, promoted, len(fractions), cfg.multi_fidelity.reduction_factor,
                            cfg.higher_is_better, fits)


def warn_flat_rungs(driver: Any, snap: Snapshot, fractions: list[float], state: dict[str, Any]) -> None:
    """Warn once per rung (per ``search_loop`` call) when at least ``max(reduction_factor, 3)`` candidates of a
    lower rung scored exactly the same on an objective: that rung's training is too short to separate them (measured
    on the demo: 30 steps left every student at the majority class), so promotion there follows the other objectives
    only, and ``search.multi_fidelity.min_fraction`` should be raised."""
    cfg = driver.search_config
    warned = state.setdefault("flat_rungs", set())
    for rung in range(len(fractions) - 1):
        results = snap.rung_results.get(rung, [])
        if rung in warned or len(results) < max(cfg.multi_fidelity.reduction_factor, 3):
            continue
        flat = constant_objectives([values for _, _, values in results])
        if flat:
            warned.add(rung)
            shown = ", ".join(f"{cfg.metrics[i]} = {results[0][2][i]:g}" for i in flat)
            logger.warning("rung %d (%.3g of the training budget): all %d candidates scored the same %s, so promotion "
                           "there follows the other objectives only; raise search.multi_fidelity.min_fraction (now "
                           "%g) so that the shortest training tells students apart", rung, fractions[rung],
                           len(results), shown, cfg.multi_fidelity.min_fraction)


def _budget_left(driver: Any, snap: Snapshot, fractions: list[float]) -> tuple[float, float]:
    """Full-trial equivalents left for a top-rung training, and for any other: until a top-rung training has
    started, one full budget is kept for it."""
    left = driver.search_config.max_trials - snap.spent - snap.in_flight
    top = len(fractions) - 1
    return left, (left if snap.rung_started.get(top) else left - fractions[top])


def _plan(driver: Any, snap: Snapshot, fractions: list[float]) -> dict[str, Any] | None:
    """What to propose now: ``{"arch": fixed arch or None, "attrs": {...}, "budget": b}``, or None."""
    cfg = driver.search_config
    top = len(fractions) - 1
    left, left_below_top = _budget_left(driver, snap, fractions)
    for kind, pending in (("retry", snap.interrupted), ("retry_failed", snap.retry)):
        for key, arch in pending.items():
            meta = snap.meta.get(key, {"rung": 0, "budget": fractions[0], "parent": None})
            if meta["budget"] <= (left if meta["rung"] == top else left_below_top) + EPS:
                return {"arch": arch, "budget": meta["budget"], "attrs": {**meta, "proposed_by": kind}}
    choice = _promotions(driver, snap, left, left_below_top, fractions)
    if choice is not None:
        rung, base = choice
        parent = next(number for b, number, _ in snap.rung_results[rung] if b == base)
        budget = fractions[rung + 1]
        return {"arch": snap.archs[base], "budget": budget,
                "attrs": {"rung": rung + 1, "budget": budget, "parent": parent, "proposed_by": "promotion"}}
    covered0 = {k for k in list(snap.settled) + list(snap.training) if "@rung" not in k}
    if fractions[0] <= left_below_top + EPS and len(covered0) < cfg.space_size:
        return {"arch": None, "budget": fractions[0], "attrs": {"rung": 0, "budget": fractions[0], "parent": None}}
    return None


def _still_valid(driver: Any, snap: Snapshot, arch: dict[str, Any], attrs: dict[str, Any],
                 fractions: list[float]) -> str | None:
    """Why the proposal (its turn come) must not train, or None."""
    cfg = driver.search_config
    rung = attrs["rung"]
    key = rung_key(arch_key(arch), rung)
    if key in snap.settled or key in snap.training:
        return STATUS_DUPLICATE
    left, left_below_top = _budget_left(driver, snap, fractions)
    if attrs["budget"] > (left if rung == len(fractions) - 1 else left_below_top) + EPS:
        return STATUS_NOT_NEEDED
    if attrs.get("proposed_by") == "promotion":
        results = [(base, values) for base, _, values in snap.rung_results.get(rung - 1, [])]
        ready = promotable(results, snap.rung_started.get(rung, set()), cfg.multi_fidelity.reduction_factor,
                           cfg.higher_is_better)
        if arch_key(arch) not in ready:
            return STATUS_NOT_NEEDED
    return None


def next_multi_fidelity_candidate(driver: Any, state: dict[str, Any]) -> dict[str, Any] | None:
    """Propose until a (candidate, rung) worth building is found (returned, its trial RUNNING) or the search ends.

    Returns ``{"number", "arch", "rung", "budget", "parent"}`` or None.
    """
    cfg = driver.search_config
    fractions = rung_fractions(cfg.multi_fidelity.min_fraction, cfg.multi_fidelity.reduction_factor)
    while True:
        if driver._stop_error is not None:
            raise driver._stop_error
        if time_is_up(driver, state):
            return None
        driver.fail_stale_trials()
        snap = driver._snapshot()
        warn_flat_rungs(driver, snap, fractions, state)
        if state["proposals"] >= state["max_proposals"]:
            logger.warning("stopping after %d proposals with %.3g of max_trials=%d full-trial equivalents spent: %s",
                           state["proposals"], snap.spent, cfg.max_trials, driver._why_stuck(snap))
            return None
        plan = _plan(driver, snap, fractions)
        if plan is None:
            if snap.training:  # other workers train: their results may allow a promotion, or free nothing
                if "waiting_since" not in state:
                    state["waiting_since"] = time.monotonic()
                    logger.info("waiting for trials %s being trained by other workers",
                                sorted(snap.training.values()))
                time.sleep(max(driver.poll_interval, 0.5))
                continue
            logger.info("multi-fidelity search done: %.3g of max_trials=%d full-trial equivalents spent, %d "
                        "candidates screened", snap.spent, cfg.max_trials, len(snap.rung_results.get(0, [])))
            return None
        state.pop("waiting_since", None)
        state["proposals"] += 1
        attrs = plan["attrs"]
        fixed = plan["arch"]
        if fixed is None and driver._consecutive_duplicates >= 3:
            covered = set(snap.settled) | set(snap.training)
            fixed = driver._unseen_arch(covered, state["proposals"])
            if fixed is None:
                continue
            attrs = {**attrs, "proposed_by": "random_fallback"}
        driver.model_arch_proposition(fixed_arch=fixed, **attrs)
        trial, arch = driver._current["trial"], driver._current["arch"]
        snap = driver._wait_for_turn(trial.number)
        if time_is_up(driver, state):
            driver._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED)
            return None
        why_not = _still_valid(driver, snap, arch, attrs, fractions)
        if why_not == STATUS_DUPLICATE:
            key = rung_key(arch_key(arch), attrs["rung"])
            original = snap.settled.get(key, snap.training.get(key))
            logger.info("trial %d: %s at rung %d already evaluated by trial %d, not retrained", trial.number, arch,
                        attrs["rung"], original)
            driver._finish(TrialState.PRUNED, status=STATUS_DUPLICATE, duplicate_of=original)
            if attrs.get("proposed_by") is None:
                driver._consecutive_duplicates += 1
            continue
        if why_not is not None:
            driver._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED)
            continue
        if attrs.get("proposed_by") is None:
            driver._consecutive_duplicates = 0
        if attrs["rung"] == 0 and driver.rejected_by_prediction(arch):
            continue
        return {"number": trial.number, "arch": arch, "rung": attrs["rung"], "budget": attrs["budget"],
                "parent": attrs.get("parent")}


def accepts_budget(func: Any) -> bool:
    """Whether ``func`` can be called with a ``budget=`` keyword (a ``budget`` parameter or ``**kwargs``)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature: it cannot take one
        return False
    return any(p.name == "budget" and p.kind != p.POSITIONAL_ONLY or p.kind == p.VAR_KEYWORD for p in parameters)


def check_train_func(driver: Any, train_func: Any) -> None:
    """Refuse, before any training, a multi-fidelity search whose ``train_func`` cannot take a budget.

    Raises:
        ConfigError: naming ``budget``.
    """
    cfg = driver.search_config
    if cfg.multi_fidelity is None or train_func is None or accepts_budget(train_func):
        return
    name = getattr(train_func, "__name__", type(train_func).__name__)
    raise ConfigError(
        f"search.multi_fidelity trains candidates for a fraction of the budget, but train_func {name!r} has no "
        "'budget' parameter: define it as train_func(model, budget) (budget: the fraction of the full training, "
        "in (0, 1]) or remove search.multi_fidelity."
    )


def fidelity_summary(cfg: Any, snap: Snapshot) -> dict[str, Any]:
    """The ``multi_fidelity`` entry of ``search_results.json``: settings, rung fractions, budget spent, candidates
    screened and trained per rung."""
    mf = cfg.multi_fidelity
    fractions = rung_fractions(mf.min_fraction, mf.reduction_factor)
    return {
        "min_fraction": mf.min_fraction,
        "reduction_factor": mf.reduction_factor,
        "rung_fractions": fractions,
        "budget_spent": round(snap.spent, 6),
        "trained_per_rung": [len(snap.rung_results.get(r, [])) for r in range(len(fractions))],
    }
