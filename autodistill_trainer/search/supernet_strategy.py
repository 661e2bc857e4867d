"""The supernet search strategy (``search.strategy: supernet``): one supernet, many proxies, a few finalists.

Phases of :meth:`SupernetSearch.search_loop`, each skipped on a rerun when already done:

1. **Supernet**: ``backend.train_supernet(deadline)`` distils the elastic supernet once (checkpointed under
   ``output_dir/supernet``; a rerun resumes or reuses it). Cut by ``search.time_budget_s``: the search ends there.
2. **Proxies** (rank 0): the Optuna study (same storage, sampler, dedupe, turn order and resume as the plain
   search) proposes sub-configurations until ``search.supernet.num_candidates`` (trained or failed) are evaluated
   or the space is exhausted. Each is validated first (``invalid``: never evaluated), profiled (params and FLOPs
   exact, latency from the latency model), checked against ``max_params`` / ``max_flops`` (``over_budget``), then
   evaluated with inherited weights: a trial with ``fidelity: proxy``, ``rung`` 0, ``budget`` 0 (it trains nothing).
3. **Finalists**: :func:`.supernet_compute.choose_finalists` picks ``search.supernet.finalists`` proxies (top k under
   ``max_latency_ms``, else the Pareto front, thinned or filled from the next fronts); each gets its own short
   distillation from the extracted weights and a final evaluation with measured latency: a trial with
   ``fidelity: final``, ``rung`` 1, ``budget`` = ``finalist_budget``, ``parent`` = its proxy's trial number.

Only final rows make the Pareto front, ``best_model_arch``, the reports and ``best_model/``. ``search_results.json``
also holds ``supernet`` (:func:`.supernet_compute.supernet_summary`: phases, counts, compute in full-trial
equivalents). ``search.time_budget_s`` is checked before every phase and candidate: no new one starts after it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Protocol

from optuna.trial import TrialState

from ..errors import ConfigError, InvalidArchitectureError
from .driver import rank_world
from .evaluation import MissingMetricError, budget_violation, objective_values
from .ledger import (
    STATUS_DUPLICATE, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_INVALID, STATUS_NOT_NEEDED, STATUS_OVER_BUDGET,
    STATUS_TRAINED, STATUS_TRAINING, arch_key, rung_key,
)
from .loop import AutoDistillation, _bcast, _gather
from .multi_fidelity import time_is_up
from .results import jsonable
from .supernet_compute import choose_finalists, supernet_summary

logger = logging.getLogger(__name__)

__all__ = ["FINAL_RUNG", "SupernetBackend", "SupernetSearch"]

#: The rung of a finalist's trial (proxies are rung 0), so that dedupe and rows are per (architecture, fidelity).
FINAL_RUNG = 1


class SupernetBackend(Protocol):
    """What the strategy needs from a model family (the OOB one is :mod:`.supernet_oob`).

    Attributes:
        trial_steps: training steps of one plain-search trial (one full-trial equivalent).
        trial_examples: training examples one plain-search trial processes (steps x batch size).
    """

    trial_steps: int
    trial_examples: int

    def train_supernet(self, deadline: float | None) -> dict[str, Any] | None:
        """Train (or resume, or reuse) the supernet; ``{"steps", "subnet_steps", "wall_s"}`` when it is complete,
        None when ``deadline`` (``time.monotonic()`` value) cut it (checkpointed, resumable). Collective."""

    def validate(self, arch: Mapping[str, Any]) -> None:
        """Raise ``InvalidArchitectureError`` naming the field when ``arch`` is not a sub-network."""

    def profile(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """``{"params", "flops", "latency"}``: exact counts, latency predicted (measured while fitting)."""

    def proxy_evaluate(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """Metrics of the sub-network with inherited weights, plus ``eval_examples`` (examples evaluated)."""

    def prepare_proxies(self) -> None:
        """Optional: called once (rank 0) before the first proxy, e.g. to fit the latency model."""

    def train_finalist(self, arch: Mapping[str, Any]) -> dict[str, Any]:
        """Extract, distil and evaluate ``arch``: ``{"metrics", "profile" (measured), "model_dir", "train_steps"}``.
        Collective."""


class SupernetSearch(AutoDistillation):
    """:class:`AutoDistillation` with the supernet strategy (see the module docstring).

    Args:
        backend: a :class:`SupernetBackend`.
        config: as for :class:`AutoDistillation`; ``search.strategy`` must be ``supernet``.
        output_dir, disable_tqdm: as for :class:`AutoDistillation`.
    """

    def __init__(self, backend: SupernetBackend, config: Any, output_dir: str | None = None,
                 disable_tqdm: bool = False) -> None:
        super().__init__(self._refuse_builder, config, output_dir=output_dir, disable_tqdm=disable_tqdm)
        if self.search_config.strategy != "supernet":
            raise ConfigError(f"SupernetSearch needs search.strategy: supernet, got {self.search_config.strategy!r}.")
        self.backend = backend
        self.supernet_info: dict[str, Any] | None = None
        self.finalist_numbers: list[int] = []

    @staticmethod
    def _refuse_builder(arch: dict[str, Any]) -> Any:
        raise RuntimeError("the supernet strategy extracts its students; it builds no model per trial")

    # ------------------------------------------------------------------------------------------- phases

    def search_loop(self) -> dict[str, Any] | None:
        """Run the three phases (module docstring) and return ``best_model_arch`` (:meth:`result` has the rest)."""
        cfg = self.search_config
        rank, world = rank_world()
        is_main = rank == 0
        self._stop_error = None
        state: dict[str, Any] = {"proposals": 0, "t_start": time.monotonic()}
        self._loop_state = state
        deadline = None if cfg.time_budget_s is None else state["t_start"] + cfg.time_budget_s
        if is_main:
            self._refuse_other_strategies()
            self.fail_stale_trials()
            self._start_retries()
        try:
            self.supernet_info = self.backend.train_supernet(deadline)
            if self.supernet_info is None:
                logger.info("search.time_budget_s=%g s spent while training the supernet (checkpointed): the search "
                            "ends here; run it again to continue", cfg.time_budget_s)
            elif not time_is_up(self, state):
                if is_main:
                    prepare = getattr(self.backend, "prepare_proxies", None)  # e.g. fit the latency model
                    if prepare is not None:
                        prepare()
                    self._evaluate_proxies(state)
                chosen = _bcast(self._choose_finalists() if is_main else None, world)
                self._train_finalists(chosen, state, is_main, world)
        finally:
            if is_main and self._current is not None:  # interrupted mid-candidate
                self._finish(TrialState.FAIL, status=STATUS_INTERRUPTED,
                             interrupted_reason="search_loop was interrupted")
        result = self._collect_results() if is_main else None
        self._set_result(_bcast(result, world))
        if is_main:
            self._log_outcome()
        return self.best_model_arch

    def _refuse_other_strategies(self) -> None:
        """A study holding trials of the plain or multi-fidelity strategy (no ``fidelity``) cannot be resumed here.

        Raises:
            ConfigError: naming the storage and the fix.
        """
        other = [t.number for t in self.study.get_trials(deepcopy=False) if "fidelity" not in t.user_attrs]
        if other:
            raise ConfigError(f"the study {self.study_name!r} in {self.storage_url} holds {len(other)} trials of "
                              "another search strategy (plain or multi_fidelity); search.strategy: supernet needs its "
                              "own study: use a fresh output_dir (or search.study_name).")

    def _proxy_counts(self, snap: Any) -> tuple[int, int]:
        """(proxies trained or failed, proxy keys settled) in ``snap``."""
        proxies = {k: s for k, s in snap.statuses.items() if "@rung" not in k}
        settled = [k for k in snap.settled if "@rung" not in k]
        return sum(s in (STATUS_TRAINED, STATUS_FAILED) for s in proxies.values()), len(settled)

    def _evaluate_proxies(self, state: dict[str, Any]) -> None:
        cfg = self.search_config
        wanted = cfg.supernet.candidates(cfg.space_size)
        max_proposals = 20 * wanted + 100
        while True:
            if self._stop_error is not None:
                raise self._stop_error
            if time_is_up(self, state):
                return
            snap = self._snapshot()
            done, settled = self._proxy_counts(snap)
            if done >= wanted or settled >= cfg.space_size:
                logger.info("%d sub-networks evaluated with inherited weights (num_candidates=%d, space %d)", done,
                            wanted, cfg.space_size)
                return
            if state["proposals"] >= max_proposals:
                logger.warning("stopping the proxies after %d proposals with %d of %d evaluated: %s",
                               state["proposals"], done, wanted, self._why_stuck(snap))
                return
            state["proposals"] += 1
            pending = {**{k: a for k, a in snap.retry.items() if "@rung" not in k},
                       **{k: a for k, a in snap.interrupted.items() if "@rung" not in k}}
            attrs = {"fidelity": "proxy", "rung": 0, "budget": 0.0}
            if pending:
                self.model_arch_proposition(fixed_arch=next(iter(pending.values())), proposed_by="retry", **attrs)
            elif self._consecutive_duplicates >= 3:
                fallback = self._unseen_arch(set(snap.settled) | set(snap.training), state["proposals"])
                if fallback is None:
                    return
                self.model_arch_proposition(fixed_arch=fallback, proposed_by="random_fallback", **attrs)
            else:
                self.model_arch_proposition(**attrs)
            trial, arch = self._current["trial"], self._current["arch"]
            snap = self._wait_for_turn(trial.number)
            key = arch_key(arch)
            if key in snap.settled or key in snap.training:
                self._finish(TrialState.PRUNED, status=STATUS_DUPLICATE,
                             duplicate_of=snap.settled.get(key, snap.training.get(key)))
                self._consecutive_duplicates += 1
                continue
            self._consecutive_duplicates = 0
            self._evaluate_proxy(trial.number, arch)
            if state["proposals"] % 25 == 0:  # search_results.json now and then (a thousand rewrites would cost)
                self._collect_results()

    def _evaluate_proxy(self, number: int, arch: dict[str, Any]) -> None:
        """Validate, profile, check budgets, evaluate with inherited weights and record one proxy (rank 0)."""
        t0 = time.monotonic()
        try:
            self.backend.validate(arch)
            profile = jsonable(self.backend.profile(arch))
        except InvalidArchitectureError as exc:
            logger.info("trial %d: %s is not a sub-network of the supernet (%s), not evaluated", number, arch, exc)
            self._finish(TrialState.PRUNED, status=STATUS_INVALID, invalid_reason=f"InvalidArchitectureError: {exc}")
            return
        violation = budget_violation({k: v for k, v in profile.items() if k != "latency"}, self.search_config)
        if violation is not None:  # params and FLOPs are exact; a predicted latency never rejects a proxy
            key, reason = violation
            self._finish(TrialState.PRUNED, status=STATUS_OVER_BUDGET, budget_reason=reason, budget_key=key,
                         profile=profile)
            return
        self._current["trial"].set_user_attr("status", STATUS_TRAINING)
        failure, metrics = None, {}
        try:
            metrics = dict(self.backend.proxy_evaluate(arch))
        except Exception as exc:  # a failing sub-network is recorded as the trial's failure, like a plain trial
            failure = f"{type(exc).__name__}: {exc}"
            logger.warning("trial %d: proxy evaluation of %s failed: %s", number, arch, failure)
        examples = metrics.pop("eval_examples", None)
        self._tell(metrics, profile, failure, t0, latency_source="predicted", eval_examples=examples)
        logger.info("proxy %d %s -> %s in %.2fs", number, arch,
                    {m: metrics.get(m, profile.get(m)) for m in self.search_config.metrics} if failure is None
                    else failure, time.monotonic() - t0)

    def _tell(self, metrics: dict[str, Any], profile: dict[str, Any], failure: str | None, t0: float,
              **attrs: Any) -> None:
        values = None
        if failure is None:
            try:
                values = objective_values(metrics, profile, self.search_config.metrics)
            except MissingMetricError as exc:
                failure = str(exc).strip("'\"")
                self._stop_error = ConfigError(
                    f"search.metrics: the sub-network has no metric {exc.metric!r} (evaluation returned "
                    f"{sorted(metrics)}); give the trainer a compute_metrics that returns it or fix search.metrics.")
            except ValueError as exc:
                failure = str(exc)
        common = {"metrics": jsonable(metrics), "profile": profile, "duration_s": round(time.monotonic() - t0, 3),
                  **{k: v for k, v in attrs.items() if v is not None}}
        if failure is None:
            self._finish(TrialState.COMPLETE, values, status=STATUS_TRAINED, **common)
        else:
            self._finish(TrialState.FAIL, status=STATUS_FAILED, failure_reason=failure, **common)

    # ------------------------------------------------------------------------------------------ finalists

    def _choose_finalists(self) -> list[dict[str, Any]]:
        """Rank 0: ``[{"arch", "parent"}]`` of the finalists, from the proxy rows (deterministic: a rerun picks the
        same ones while no proxy was added)."""
        cfg = self.search_config
        rows = [r for r in self._collect_results().rows if r.get("fidelity") == "proxy"]
        chosen = choose_finalists(rows, cfg.metrics, cfg.higher_is_better, cfg.supernet.finalists, cfg.max_latency_ms)
        logger.info("finalists: %s", [r["arch"] for r in chosen])
        return [{"arch": r["arch"], "parent": r["number"]} for r in chosen]

    def _train_finalists(self, chosen: list[dict[str, Any]], state: dict[str, Any], is_main: bool,
                         world: int) -> None:
        cfg = self.search_config
        for finalist in chosen:
            arch = finalist["arch"]
            decision = "train"
            if is_main:
                decision = self._propose_finalist(arch, finalist["parent"], state)
            decision = _bcast(decision, world)
            if decision == "stop":
                return
            if decision != "train":
                continue
            t0 = time.monotonic()
            failure, out = None, {}
            try:
                out = dict(self.backend.train_finalist(arch))
            except Exception as exc:  # recorded as the finalist's failure (retried by a later run)
                failure = f"{type(exc).__name__}: {exc}"
                logger.warning("finalist %s failed: %s", arch, failure)
            failures = _gather(failure, world)
            if is_main:
                failure = next((f for f in failures if f), None)
                profile = jsonable(out.get("profile") or {})
                self._tell(dict(out.get("metrics") or {}), profile, failure, t0, latency_source="measured",
                           model_dir=out.get("model_dir"), train_steps=out.get("train_steps"))
                logger.info("finalist %s -> %s", arch, {m: (out.get("metrics") or {}).get(m, profile.get(m))
                                                        for m in cfg.metrics} if failure is None else failure)

    def _propose_finalist(self, arch: dict[str, Any], parent: int, state: dict[str, Any]) -> str:
        """Rank 0: ``train`` (its trial RUNNING), ``skip`` (already final) or ``stop`` (time budget spent)."""
        snap = self._snapshot()
        key = rung_key(arch_key(arch), FINAL_RUNG)
        if key in snap.settled or key in snap.training:
            return "skip"
        if time_is_up(self, state):
            return "stop"
        self.model_arch_proposition(fixed_arch=arch, fidelity="final", rung=FINAL_RUNG,
                                    budget=self.search_config.supernet.finalist_budget, parent=parent)
        snap = self._wait_for_turn(self._current["trial"].number)
        if key in snap.settled or key in snap.training:
            self._finish(TrialState.PRUNED, status=STATUS_DUPLICATE,
                         duplicate_of=snap.settled.get(key, snap.training.get(key)))
            return "skip"
        if time_is_up(self, state):
            self._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED)
            return "stop"
        self.finalist_numbers.append(self._current["trial"].number)
        self._current["trial"].set_user_attr("status", STATUS_TRAINING)
        return "train"

    # -------------------------------------------------------------------------------------------- results

    def _results_extra(self) -> dict[str, Any]:
        trials = self.study.get_trials(deepcopy=False)
        return {"strategy": "supernet",
                "supernet": supernet_summary(self.search_config, trials, self.supernet_info, self.backend)}
