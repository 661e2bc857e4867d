"""`AutoDistillation`: the search loop (propose, build, profile, train, evaluate, record)."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping

import torch.distributed as dist
from optuna.trial import TrialState
from tqdm.auto import tqdm
from transformers import set_seed

from ..configs import AutoDistillationConfig, SearchConfig, parse_search_config
from ..errors import ConfigError, InvalidArchitectureError
from . import selection
from .driver import StudyDriver, rank_world
from .evaluation import (
    PROFILE_KEYS,
    MissingMetricError,
    budget_violation,
    empty_cuda_cache,
    measure_profile,
    objective_values,
)
from .multi_fidelity import accepts_budget, check_train_func, fidelity_summary, time_is_up
from .ledger import (
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_INVALID,
    STATUS_NOT_NEEDED,
    STATUS_OVER_BUDGET,
    STATUS_TRAINED,
    STATUS_TRAINING,
    trial_status,
)
from .results import AutoDistillationResult, failure_reasons, jsonable, rows_of, write_results_file

logger = logging.getLogger(__name__)

__all__ = ["AutoDistillation"]


def _bcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(obj: Any, world: int) -> list[Any]:
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _search_config(config: Any) -> SearchConfig:
    if isinstance(config, SearchConfig):
        return config
    if isinstance(config, AutoDistillationConfig):
        return config.search
    return parse_search_config(config)


class AutoDistillation(StudyDriver):
    """Search student architectures with an Optuna sampler and keep the best one.

    Args:
        model_builder: ``model_builder(arch: dict) -> model``; raises
            :class:`~autodistill_trainer.errors.InvalidArchitectureError` for archs it cannot build.
        config: a design dict (``{'search': {...}, ...}`` or a bare search section), an
            :class:`~autodistill_trainer.configs.AutoDistillationConfig` or a :class:`SearchConfig`.
        train_func: ``train_func(model) -> trained model`` (``None`` return = trained in place). Optional.
        eval_func: ``eval_func(model) -> {metric: value}``; metrics missing from its result but present in
            the profile (``latency``, ``params``, ``flops``) are taken from the profile. A string
            ``model_dir`` in its result is recorded as the row's ``model_dir`` (not a metric).
        profile_func: ``profile_func(model) -> {"params", "flops", "latency", ...}``; default
            :func:`autodistill_trainer.profiling.profile_model`. A profiling failure falls back to the
            parameter count (one WARNING); only ``InvalidArchitectureError`` (from the builder or
            ``profile_func``, or a failing forward pass on the default profiler's batch) marks an arch invalid.
        output_dir: where ``search_results.json`` (and the default SQLite study) are written (default ``.``).
        retry_failed: on each :meth:`search_loop` call, retry once the architectures whose training failed
            in an earlier run (a failure in the same call is final); default: ``search.retry_failed`` (true).
        cost_model: an :class:`~autodistill_trainer.search.latency_model.ArchCostModel`: budgets are first checked
            on predicted costs (architectures that surely break one are not built), and it learns every profile.

    Attributes: ``search_config``, ``search_space``, ``advisor`` (the Optuna sampler), ``study``,
    ``search_result`` (rows), ``pareto_front`` (rows), ``best_model_arch``. See :mod:`autodistill_trainer.search`
    for the trial statuses, what counts toward ``max_trials`` and the best-architecture rule.
    """

    def __init__(
        self,
        model_builder: Callable[[dict[str, Any]], Any],
        config: Mapping[str, Any] | AutoDistillationConfig | SearchConfig,
        train_func: Callable[[Any], Any] | None = None,
        eval_func: Callable[[Any], Any] | None = None,
        profile_func: Callable[[Any], Mapping[str, Any]] | None = None,
        output_dir: str | None = None,
        retry_failed: bool | None = None,
        cost_model: Any = None,
        disable_tqdm: bool = False,
    ) -> None:
        super().__init__(_search_config(config), output_dir or ".")
        self.config = config
        self.model_builder = model_builder
        self.train_func = train_func
        self.eval_func = eval_func
        self.profile_func = profile_func
        self.retry_failed = self.search_config.retry_failed if retry_failed is None else retry_failed
        self.cost_model = cost_model
        self.disable_tqdm = disable_tqdm
        self.best_model_arch: dict[str, Any] | None = None
        self.pareto_front: list[dict[str, Any]] = []
        self._result: AutoDistillationResult | None = None
        self._profile_warned = False
        self._loop_state: dict[str, Any] = {}

    # --------------------------------------------------------------------------------- evaluating

    def train_evaluate(self, model: Any, budget: float = 1.0) -> dict[str, Any]:
        """Train ``model`` with ``train_func`` (its return value, or ``model`` when it returns None) and
        return ``eval_func``'s metrics (a bare number is taken as the single metric). A ``train_func`` with a
        ``budget`` parameter is called ``train_func(model, budget=budget)`` (the fraction of the full training)."""
        trained = model
        if self.train_func is not None:
            out = self.train_func(model, budget=budget) if accepts_budget(self.train_func) else self.train_func(model)
            trained = model if out is None else out
        if self.eval_func is None:
            return {}
        metrics = self.eval_func(trained)
        bare_number = isinstance(metrics, (int, float)) and not isinstance(metrics, bool)
        if bare_number or (hasattr(metrics, "item") and not isinstance(metrics, Mapping)):
            metrics = {self.search_config.metrics[0]: float(metrics)}
        if not isinstance(metrics, Mapping):
            raise TypeError(f"eval_func must return a dict of metrics, got {type(metrics).__name__}")
        return dict(metrics)

    def _profile(self, model: Any, number: int) -> dict[str, Any]:
        profile, why_partial = measure_profile(model, self.profile_func)
        if why_partial is not None:
            level = logging.DEBUG if self._profile_warned else logging.WARNING
            self._profile_warned = True
            logger.log(
                level, "trial %d: profiling %s failed (%s); the search goes on with %s measured (latency and FLOPs "
                "only if eval_func returns them; pass profile_func to measure them)",
                number, type(model).__name__, why_partial, sorted(profile) or "nothing",
            )
        return profile

    def _after_build(self, model: Any, invalid: str | None, candidate: dict[str, Any]) -> dict[str, Any]:
        """Rank 0: record an invalid build, profile the model (a promotion keeps its parent's profile: same
        architecture), apply budgets. Returns the decision."""
        arch, number = candidate["arch"], candidate["number"]
        profile: dict[str, Any] = {}
        if invalid is None and candidate.get("parent") is not None:
            parent = self.study.get_trials(deepcopy=False)[candidate["parent"]]
            profile = dict(parent.user_attrs.get("profile") or {})
        elif invalid is None:
            try:
                profile = jsonable(self._profile(model, number))
            except InvalidArchitectureError as exc:
                invalid = f"InvalidArchitectureError: {exc}"
        if invalid is not None:
            logger.info("trial %d: %s is invalid (%s), not trained", number, arch, invalid)
            self._finish(TrialState.PRUNED, status=STATUS_INVALID, invalid_reason=invalid)
            self._collect_results()
            return {"action": "skip"}
        if self.cost_model is not None and candidate.get("parent") is None:
            self.cost_model.observe(arch, profile)  # the latency model learns every measured architecture
        violation = budget_violation(profile, self.search_config)
        if violation is not None:
            key, reason = violation
            logger.info("trial %d: %s breaks the budget (%s), not trained", number, arch, reason)
            self._finish(TrialState.PRUNED, status=STATUS_OVER_BUDGET, budget_reason=reason, budget_key=key,
                         profile=profile)
            self._collect_results()
            return {"action": "skip"}
        if time_is_up(self, self._loop_state):  # built and profiled, but training would start after the budget
            self._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED, profile=profile)
            return {"action": "skip"}
        trial = self._current["trial"]
        trial.set_user_attr("profile", profile)
        trial.set_user_attr("status", STATUS_TRAINING)  # releases the decision order for later trials
        return {"action": "train", "profile": profile}

    def _record_trained(self, candidate: dict[str, Any], profile: dict[str, Any], metrics: dict[str, Any],
                        failure: str | None, duration: float) -> None:
        values = None
        model_dir = metrics.pop("model_dir", None)
        attrs: dict[str, Any] = {"duration_s": round(duration, 3)}
        if isinstance(model_dir, str):
            attrs["model_dir"] = model_dir
        if failure is None:
            try:
                values = objective_values(metrics, profile, self.search_config.metrics)
            except MissingMetricError as exc:
                failure = str(exc).strip("'\"")
                if not any(r["status"] == STATUS_TRAINED for r in self.search_result):
                    self._stop_error = ConfigError(
                        f"search.metrics: the first trained architecture has no metric {exc.metric!r} "
                        f"(eval_func returned {sorted(metrics)}; the profile has {sorted(profile)}). Make eval_func "
                        "return it (out-of-the-box mode: give the trainer a compute_metrics that returns it) or fix "
                        "search.metrics; the search stops now instead of training every architecture."
                    )
            except ValueError as exc:
                failure = str(exc)
        metrics = jsonable(metrics)
        if failure is None:
            self._finish(TrialState.COMPLETE, values, status=STATUS_TRAINED, metrics=metrics, **attrs)
        else:
            self._finish(TrialState.FAIL, status=STATUS_FAILED, failure_reason=failure, metrics=metrics, **attrs)
        shown = {m: metrics.get(m) for m in self.search_config.metrics} if failure is None else failure
        rung = f" rung {candidate['rung']} (budget {candidate['budget']:g})" if "rung" in candidate else ""
        logger.info("trial %g/%d (#%d) %s%s -> %s in %.1fs", self._progress(), self.search_config.max_trials,
                    candidate["number"], candidate["arch"], rung, shown, duration)
        self._collect_results()

    # -------------------------------------------------------------------------------- main loop

    def search_loop(self) -> dict[str, Any] | None:
        """Run the search and return ``best_model_arch`` (:meth:`result` has the rest).

        Stops when ``max_trials`` distinct architectures were trained, when every architecture of the
        space was evaluated, or after ``20 * max_trials + 100`` proposals in this call (with a warning
        saying why: budgets, invalid architectures or an advisor repeating itself). Under
        ``torch.distributed`` (world size > 1) rank 0 drives the study and broadcasts each arch; every rank
        builds and trains it (``train_func``/``eval_func`` may be collective).

        Raises:
            ConfigError: metrics that need an ``eval_func`` without one, or a metric missing from the first
                trained architecture's results (the search stops at once).
        """
        cfg = self.search_config
        if self.eval_func is None and any(m not in PROFILE_KEYS for m in cfg.metrics):
            needed = [m for m in cfg.metrics if m not in PROFILE_KEYS]
            raise ConfigError(f"search.metrics: eval_func is required to measure {needed}.")
        rank, world = rank_world()
        is_main = rank == 0
        bar = None
        self._stop_error = None
        state = {"proposals": 0, "max_proposals": 20 * cfg.max_trials + 100, "t_start": time.monotonic()}
        self._loop_state = state
        if cfg.multi_fidelity is not None:
            check_train_func(self, self.train_func)
            state["max_proposals"] = 20 * math.ceil(cfg.max_trials / cfg.multi_fidelity.min_fraction) + 100
        if is_main:
            if self._current is not None:  # a proposal made by a direct model_arch_proposition() call
                logger.info("discarding the pending proposal %s (trial %d) before searching",
                            self._current["arch"], self._current["trial"].number)
                self._finish(TrialState.PRUNED, status=STATUS_NOT_NEEDED)
            self.fail_stale_trials()
            self._start_retries()
            bar = tqdm(total=cfg.max_trials, initial=min(self._progress(), cfg.max_trials),
                       desc="autodistill search", unit="trial", disable=self.disable_tqdm)
        try:
            while True:
                candidate: dict[str, Any] | None = None
                error: BaseException | None = None
                if is_main:
                    try:
                        candidate = self._next_candidate(state)
                    except BaseException as exc:  # tell the other ranks, then raise it
                        error, candidate = exc, {"error": f"{type(exc).__name__}: {exc}"}
                candidate = _bcast(candidate, world)
                if error is not None:
                    raise error
                if candidate is None:
                    break
                if "error" in candidate:
                    raise RuntimeError(f"rank 0 failed while proposing an architecture: {candidate['error']}")
                arch = candidate["arch"]
                t0 = time.monotonic()
                set_seed(cfg.seed)
                model, invalid = None, None
                try:
                    model = self.model_builder(dict(arch))
                except InvalidArchitectureError as exc:
                    invalid = f"InvalidArchitectureError: {exc}"
                decision: dict[str, Any] = {"action": "skip"}
                if is_main:
                    try:
                        decision = self._after_build(model, invalid, candidate)
                    except BaseException as exc:  # tell the other ranks, then raise it
                        error, decision = exc, {"action": "error", "error": f"{type(exc).__name__}: {exc}"}
                decision = _bcast(decision, world)
                if error is not None:
                    raise error
                if decision["action"] == "error":
                    raise RuntimeError(f"rank 0 failed after building {arch}: {decision['error']}")
                if decision["action"] != "train":
                    del model
                    continue
                failure = None
                metrics: dict[str, Any] = {}
                try:
                    metrics = self.train_evaluate(model, candidate.get("budget", 1.0))
                except Exception as exc:  # user code, out of memory included: recorded as the trial's failure
                    failure = f"{type(exc).__name__}: {exc}"
                    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
                        failure = f"out of memory: {failure}"
                    logger.warning("trial %d %s failed: %s", candidate["number"], arch, failure,
                                   exc_info=logger.isEnabledFor(logging.DEBUG))
                    empty_cuda_cache()
                failures = _gather(failure, world)
                del model
                if is_main:
                    failure = next((f"rank {r}: {f}" if world > 1 else f for r, f in enumerate(failures) if f), None)
                    self._record_trained(candidate, decision["profile"], metrics, failure, time.monotonic() - t0)
                    bar.n = min(self._progress(), cfg.max_trials)
                    bar.refresh()
        finally:
            if is_main:
                if self._current is not None:  # interrupted mid-trial (exception or KeyboardInterrupt)
                    self._finish(TrialState.FAIL, status=STATUS_INTERRUPTED,
                                 interrupted_reason="search_loop was interrupted")
                if bar is not None:
                    bar.close()
        result = self._collect_results() if is_main else None
        self._set_result(_bcast(result, world))
        if is_main:
            self._log_outcome()
        return self.best_model_arch

    def _progress(self) -> float:
        """Trials counted toward ``max_trials`` (full-trial equivalents with multi-fidelity)."""
        snap = self._snapshot()
        return round(snap.spent, 3) if self.search_config.multi_fidelity is not None else snap.n_counted

    def _start_retries(self) -> None:
        """Rank 0, at the start of a search: mark the failures of earlier runs to be retried once."""
        if not self.retry_failed:
            self._retryable = frozenset()
            return
        trials = self.study.get_trials(deepcopy=False)
        self._retryable = frozenset(t.number for t in trials if trial_status(t) == STATUS_FAILED)
        n = len(self._snapshot().retry)
        if n:
            logger.info("%d failed trials from earlier runs will be retried (AutoDistillation(retry_failed=False) "
                        "search.retry_failed: false keeps them final)", n)

    def _log_outcome(self) -> None:
        result = self._result
        if result.n_trained == 0:
            logger.warning("the search trained no architecture successfully (%d evaluated); reasons: %s",
                           len(result.rows), result.failure_reasons or "no architecture was proposed")
        else:
            logger.info("search finished: %d rows, %d trained, Pareto front of %d, best arch %s",
                        len(result.rows), result.n_trained, len(result.pareto_front), result.best_model_arch)

    # ----------------------------------------------------------------------------------- results

    def result(self) -> AutoDistillationResult:
        """What the search found (:class:`AutoDistillationResult`); read from the study when not searched yet."""
        if self._result is None:
            self._set_result(self._collect_results())
        return self._result

    def _set_result(self, result: AutoDistillationResult) -> None:
        self._result = result
        self.search_result, self.pareto_front = result.rows, result.pareto_front
        self.best_model_arch = result.best_model_arch

    def _results_extra(self) -> dict[str, Any]:
        """Strategy entries of ``search_results.json`` (``multi_fidelity``; the supernet search adds its own)."""
        cfg = self.search_config
        return {"multi_fidelity": fidelity_summary(cfg, self._snapshot())} if cfg.multi_fidelity is not None else {}

    def _collect_results(self) -> AutoDistillationResult:
        """Rank 0: refresh the rows, front and best arch from the study, rewrite ``search_results.json``
        atomically, and return them."""
        cfg = self.search_config
        study = self.study
        trials = study.get_trials(deepcopy=False)
        rows = rows_of(trials, self.search_space, cfg.metrics)
        supernet = cfg.strategy == "supernet"  # only finalists' (final) rows reach the front, not proxies
        full = [r for r in rows if (r.get("fidelity") == "final" if supernet else r["budget"] >= 1)]
        n_trained = sum(r["status"] == STATUS_TRAINED for r in full)
        plain = cfg.multi_fidelity is None and not supernet
        front_numbers = selection.front_numbers(study) if n_trained and plain else None
        front, best = selection.select(full, cfg.metrics, cfg.higher_is_better, cfg.max_latency_ms, front=front_numbers)
        result = AutoDistillationResult(
            best_model_arch=dict(best["arch"]) if best else None,
            best_model_dir=best.get("model_dir") if best else None,
            best_row=best,
            pareto_front=front,
            rows=rows,
            n_trained=n_trained,
            failure_reasons=failure_reasons(rows),
        )
        self.search_result, self.pareto_front, self.best_model_arch = rows, front, result.best_model_arch
        extra = self._results_extra()
        write_results_file(self.output_dir, self.study_name, cfg, result, extra)
        return result
