"""The supernet strategy's pure rules: which proxies become finalists, and what the run cost.

Compute in **full-trial equivalents** (FTE; 1 FTE = the training of one plain-search trial, ``trial_steps`` steps of
``trial_examples`` examples), so that a supernet search can be compared with the plain and multi-fidelity searches
at equal compute:

* supernet: ``subnet_steps / trial_steps``: every sub-network trained in a sandwich step counts as one student
  step (``train_steps x (2 + num_random)``), whatever its size (the largest costs more than an average
  candidate, the smallest less);
* proxies: ``examples evaluated / (3 x trial_examples)``: a forward pass counts a third of a training step
  (forward + backward); the teacher forward a plain trial also pays is not counted, which favours the plain search;
* finalists: ``their training steps / trial_steps`` (``finalist_budget`` each).

Latency measurements (the latency model's points and the finalists') are not counted, as in the plain search,
whose trials measure latency too. Wall seconds of each phase are in ``search_results.json`` beside the FTEs.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from optuna.trial import FrozenTrial

from .ledger import STATUS_FAILED, STATUS_TRAINED, trial_status
from .selection import pareto_front

__all__ = ["COMPUTE_DEFINITION", "choose_finalists", "supernet_summary"]

COMPUTE_DEFINITION = ("full-trial equivalents: supernet = sub-network steps / trial steps; proxies = examples "
                      "evaluated / (3 x trial examples); finalists = their steps / trial steps")


def _rank_key(row: Mapping[str, Any], metrics: Sequence[str], higher_is_better: Sequence[bool]) -> tuple:
    values = [float(row["metrics"][m]) for m in metrics]
    return tuple(-v if h else v for v, h in zip(values, higher_is_better)) + (row["number"],)


def _spread(front: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` rows evenly spaced along ``front`` (sorted best first metric first), both ends included."""
    if n >= len(front):
        return front
    if n == 1:
        return front[:1]
    picks = sorted({round(i * (len(front) - 1) / (n - 1)) for i in range(n)})
    return [front[i] for i in picks]


def choose_finalists(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], higher_is_better: Sequence[bool],
                     k: int, max_latency_ms: float | None = None) -> list[dict[str, Any]]:
    """The ``k`` proxy rows to train on their own, best first.

    With ``max_latency_ms``: the ``k`` best (first metric, then the others, then trial number) of the trained
    proxies whose (predicted) latency is within it, when there is one. Otherwise: the Pareto front of the trained
    proxies; a front longer than ``k`` gives ``k`` rows evenly spaced along it (best first metric first, both ends
    kept), a shorter one is filled from the next fronts (non-dominated sorting) the same way.
    """
    done = [dict(r) for r in rows if r["status"] == STATUS_TRAINED and r.get("metrics")]
    done.sort(key=lambda r: _rank_key(r, metrics, higher_is_better))
    if max_latency_ms is not None:
        within = [r for r in done if r["metrics"].get("latency", r.get("latency")) is not None
                  and float(r["metrics"].get("latency", r.get("latency"))) <= max_latency_ms]
        if within:
            return within[:k]
    chosen: list[dict[str, Any]] = []
    remaining = done
    while remaining and len(chosen) < k:
        points = [[float(r["metrics"][m]) for m in metrics] for r in remaining]
        front_idx = set(pareto_front(points, higher_is_better))
        front = [r for i, r in enumerate(remaining) if i in front_idx]  # still sorted best first
        chosen += _spread(front, k - len(chosen))
        remaining = [r for i, r in enumerate(remaining) if i not in front_idx]
    return chosen


def supernet_summary(cfg: Any, trials: Sequence[FrozenTrial], supernet_info: Mapping[str, Any] | None,
                     backend: Any) -> dict[str, Any]:
    """The ``supernet`` entry of ``search_results.json``: settings, phase counts, wall seconds, compute (FTE)."""
    sn = cfg.supernet
    settled = [t for t in trials if trial_status(t) in (STATUS_TRAINED, STATUS_FAILED)]
    proxies = [t for t in settled if t.user_attrs.get("fidelity") == "proxy"]
    finals = [t for t in settled if t.user_attrs.get("fidelity") == "final"]
    trial_steps = max(1, int(getattr(backend, "trial_steps", 0) or 0))
    trial_examples = max(1, int(getattr(backend, "trial_examples", 0) or 0))
    examples = sum(int(t.user_attrs.get("eval_examples") or 0) for t in proxies)
    finalist_steps = sum(int(t.user_attrs.get("train_steps") or 0) for t in finals)
    subnet_steps = (supernet_info or {}).get("subnet_steps")
    compute = {
        "supernet": None if subnet_steps is None else round(subnet_steps / trial_steps, 4),
        "proxies": round(examples / (3 * trial_examples), 4),
        "finalists": round(finalist_steps / trial_steps, 4),
    }
    compute["total"] = None if compute["supernet"] is None else round(sum(compute.values()), 4)
    return {
        "num_candidates": sn.candidates(cfg.space_size),
        "finalists_wanted": sn.finalists,
        "space_size": cfg.space_size,
        "train_steps": (supernet_info or {}).get("steps"),
        "subnet_steps": subnet_steps,
        "num_random": sn.num_random,
        "inplace_distillation": sn.inplace_distillation,
        "finalist_budget": sn.finalist_budget,
        "proxies_evaluated": sum(trial_status(t) == STATUS_TRAINED for t in proxies),
        "proxies_failed": sum(trial_status(t) == STATUS_FAILED for t in proxies),
        "finalists": [t.number for t in finals],
        "finalists_trained": sum(trial_status(t) == STATUS_TRAINED for t in finals),
        "wall_s": {"supernet": (supernet_info or {}).get("wall_s"),
                   "latency_model": getattr(backend, "latency_fit_s", None),
                   "proxies": round(sum(float(t.user_attrs.get("duration_s") or 0) for t in proxies), 3),
                   "finalists": round(sum(float(t.user_attrs.get("duration_s") or 0) for t in finals), 3)},
        "trial_steps": trial_steps,
        "trial_examples": trial_examples,
        "compute_fte": compute,
        "compute_definition": COMPUTE_DEFINITION,
    }
