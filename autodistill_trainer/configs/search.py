"""The ``search`` section of an AutoDistillation config: search space, advisor, objectives, budgets, storage."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import field
from typing import Any, Literal, Mapping, Union

from ..errors import ConfigError, did_you_mean
from . import checks
from .kd_knobs import KD_KNOBS, check_knob_values
from .search_supernet import SEARCH_STRATEGIES, SupernetConfig, resolve_strategy

SEARCH_ALGORITHMS = ("BO", "TPE", "NSGA2", "random", "grid")
#: Default direction of the metrics whose sense is known (``higher_is_better`` may be left out for them).
KNOWN_DIRECTIONS = {"accuracy": True, "f1": True, "latency": False, "params": False, "flops": False, "loss": False}
#: Most trials one study may ask for (a typo like ``1e9`` would otherwise plan a search that never ends).
MAX_TRIALS = 100_000

#: One value of a searched field (Optuna categorical choices).
SearchValue = Union[None, bool, int, float, str]
_CATEGORICAL_TYPES = (type(None), bool, int, float, str)


#: A rung fraction within this relative distance of 1 is the top rung (0.111 * 3**2 = 0.999 is 1).
FULL_BUDGET_TOLERANCE = 0.02


def rung_fractions(min_fraction: float, reduction_factor: int) -> list[float]:
    """The budget fraction of each rung, rung 0 first: ``min_fraction * reduction_factor**k`` while below 1
    (by more than :data:`FULL_BUDGET_TOLERANCE`), then exactly 1.

    >>> rung_fractions(0.111, 3)
    [0.111, 0.333, 1.0]
    """
    if not 0 < min_fraction < 1 or reduction_factor < 2:
        raise ValueError(f"need 0 < min_fraction < 1 and reduction_factor >= 2, got {min_fraction}, {reduction_factor}")
    fractions: list[float] = []
    k = 0
    while min_fraction * reduction_factor ** k < 1 - FULL_BUDGET_TOLERANCE:
        fractions.append(round(min_fraction * reduction_factor ** k, 6))
        k += 1
    return fractions + [1.0]


def first_full_result_cost(min_fraction: float, reduction_factor: int) -> float:
    """Full-trial equivalents spent before the first candidate can reach the top rung: ``reduction_factor**(K-k)``
    results at each rung ``k`` below the top rung ``K``, then one top-rung training."""
    fractions = rung_fractions(min_fraction, reduction_factor)
    top = len(fractions) - 1
    return round(sum(reduction_factor ** (top - k) * f for k, f in enumerate(fractions)), 6)


@dataclasses.dataclass
class MultiFidelityConfig:
    """``search.multi_fidelity``: successive halving by dominance (asynchronous, ASHA style).

    Args:
        min_fraction: the fraction of the per-trial budget (flash and regular steps) of rung 0, in (0, 1).
        reduction_factor: rung ``k`` trains ``min_fraction * reduction_factor**k`` of the budget (the top rung
            exactly 1); the best ``1/reduction_factor`` of a rung go up (an integer >= 2).

    Raises:
        ConfigError: naming the field, when a value has the wrong type or is out of range.
    """

    min_fraction: float = field(
        default=0.111, metadata={"help": "Fraction of the per-trial budget trained at rung 0, in (0, 1)."})
    reduction_factor: int = field(
        default=3, metadata={"help": "Rung k trains min_fraction * reduction_factor**k of the budget (top rung: 1); "
                                     "the best 1/reduction_factor of a rung are promoted (integer >= 2)."})

    def __post_init__(self) -> None:
        checks.finite_number(self.min_fraction, "'search.multi_fidelity.min_fraction'", minimum=0,
                             exclusive_minimum=True, maximum=1)
        if self.min_fraction >= 1:
            raise ConfigError("'search.multi_fidelity.min_fraction' must be below 1 (1 trains every candidate fully: "
                              "remove search.multi_fidelity instead), got 1.")
        checks.integer(self.reduction_factor, "'search.multi_fidelity.reduction_factor'", minimum=2,
                       hint=" (e.g. 3)")

    @property
    def rung_fractions(self) -> list[float]:
        """The budget fraction of each rung, from rung 0 up (the last one exactly 1)."""
        return rung_fractions(self.min_fraction, self.reduction_factor)

    @classmethod
    def parse(cls, value: Any) -> "MultiFidelityConfig | None":
        """``None``, an instance, or the recipe's mapping ``{min_fraction: ..., reduction_factor: ...}``."""
        return checks.section(cls, value, "search.multi_fidelity", "{min_fraction: 0.111, reduction_factor: 3}")



@dataclasses.dataclass
class SearchConfig:
    """Validated ``search`` section of an AutoDistillation config.

    Args:
        search_space: ``{field: [values, ...]}``: student config fields and their candidate values.
        search_algorithm: ``BO``, ``TPE``, ``NSGA2``, ``random`` or ``grid`` (case-insensitive).
        metrics: objectives, e.g. ``['accuracy', 'latency']``.
        higher_is_better: one direction per metric.
        max_trials: trained architectures to try (1..100000).
        seed: sampler seed, in ``[0, 2**32 - 1]``.
        storage: Optuna storage URL (default: a SQLite file in ``output_dir``).
        study_name: Optuna study name (default derived from the output directory).
        max_latency_ms: latency budget: slower architectures are not trained.
        max_params: parameter budget.
        max_flops: FLOPs budget.
        heartbeat_interval: seconds between heartbeats of a running trial (None disables it).
        grace_period: seconds before a silent RUNNING trial is failed (default ``max(60, 3 * heartbeat_interval)``).
        retry_failed: on each new search run, retry once the architectures whose training failed in earlier runs
            (a failure within the same run stays final).
        multi_fidelity: successive halving by dominance (:class:`MultiFidelityConfig`); ``None``: every candidate
            trains for the full budget. With it, ``max_trials`` counts full-trial equivalents (sum of fractions).
        time_budget_s: wall seconds from the start of each ``search_loop`` call after which no new build or
            training starts (the search ends with what it has and can be resumed).
        strategy: ``plain``, ``multi_fidelity`` or ``supernet`` (default: ``multi_fidelity`` when
            ``multi_fidelity`` is given, else ``plain``); a section of another strategy is an error.
        supernet: the supernet strategy's settings (:class:`SupernetConfig`; defaults when the strategy is
            ``supernet`` and it is not given). ``max_trials`` is not used by that strategy.

    Raises:
        ConfigError: naming the field, when a value has the wrong type or is out of range.
    """

    search_space: dict[str, list[SearchValue]] = field(
        metadata={"help": "{field: [values, ...]}: student config fields and their candidate values."})
    search_algorithm: Literal["BO", "TPE", "NSGA2", "random", "grid"] = field(
        default="BO", metadata={"help": "Search advisor: BO, TPE, NSGA2, random or grid."})
    metrics: list[str] = field(default_factory=lambda: ["accuracy", "latency"],
                               metadata={"help": "Objectives (evaluation metrics, latency, params, flops)."})
    higher_is_better: list[bool] = field(default_factory=lambda: [True, False],
                                         metadata={"help": "One direction per metric."})
    max_trials: int = field(default=10, metadata={"help": f"Architectures to train (1..{MAX_TRIALS})."})
    seed: int = field(default=42, metadata={"help": "Sampler seed in [0, 2**32 - 1]."})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL (default: SQLite in output_dir)."})
    study_name: str | None = field(default=None, metadata={"help": "Optuna study name."})
    max_latency_ms: float | None = field(default=None, metadata={"help": "Latency budget in ms (positive)."})
    max_params: float | None = field(default=None, metadata={"help": "Parameter budget (positive)."})
    max_flops: float | None = field(default=None, metadata={"help": "FLOPs budget (positive)."})
    heartbeat_interval: int | None = field(
        default=10, metadata={"help": "Seconds between heartbeats of a running trial; null disables it."})
    grace_period: int | None = field(
        default=None, metadata={"help": "Seconds before a silent RUNNING trial is failed (positive)."})
    retry_failed: bool = field(
        default=True, metadata={"help": "Retry once, on a rerun, the architectures whose training failed in earlier "
                                        "runs (false: failures are final)."})
    multi_fidelity: MultiFidelityConfig | None = field(
        default=None, metadata={"help": "Successive halving by dominance: {min_fraction: 0.111, reduction_factor: 3}; "
                                        "max_trials then counts full-trial equivalents. null: full budget for all."})
    time_budget_s: float | None = field(
        default=None, metadata={"help": "Wall seconds per search run after which no new training starts (positive)."})
    strategy: Literal["plain", "multi_fidelity", "supernet"] | None = field(
        default=None, metadata={"help": f"Search strategy, one of {list(SEARCH_STRATEGIES)} (default: multi_fidelity "
                                        "when search.multi_fidelity is given, else plain)."})
    supernet: SupernetConfig | None = field(
        default=None, metadata={"help": "Supernet strategy: {num_candidates, finalists, train_steps, num_random, "
                                        "inplace_distillation, finalist_budget, eval_samples, latency_measurements}."})

    def __post_init__(self) -> None:
        self.search_space = _check_search_space(self.search_space)
        algo = self.search_algorithm
        canonical = {a.lower(): a for a in SEARCH_ALGORITHMS}
        if not isinstance(algo, str) or algo.lower() not in canonical:
            raise ConfigError(f"'search.search_algorithm' is {checks.shown(algo)}; choose one of "
                              f"{list(SEARCH_ALGORITHMS)}." + did_you_mean(str(algo), SEARCH_ALGORITHMS))
        self.search_algorithm = canonical[algo.lower()]
        metrics = self.metrics
        if not isinstance(metrics, (list, tuple)) or not metrics or not all(isinstance(m, str) and m for m in metrics):
            raise ConfigError(
                f"'search.metrics' must be a non-empty list of metric names, got {checks.shown(metrics)}.")
        if len(set(metrics)) != len(metrics):
            raise ConfigError(f"'search.metrics' has repeated names: {checks.shown(metrics)}.")
        self.metrics = list(metrics)
        hib = self.higher_is_better
        if not isinstance(hib, (list, tuple)) or not all(isinstance(h, bool) for h in hib):
            raise ConfigError(f"'search.higher_is_better' must be a list of booleans, got {checks.shown(hib)}.")
        if len(hib) != len(metrics):
            raise ConfigError(f"'search.higher_is_better' has {len(hib)} entries but 'search.metrics' has "
                              f"{len(metrics)}; give one direction per metric.")
        self.higher_is_better = list(hib)
        checks.positive_int(self.max_trials, "'search.max_trials'", maximum=MAX_TRIALS)
        checks.seed(self.seed, "'search.seed'")
        checks.non_empty_str(self.storage, "'search.storage'", optional=True)
        checks.non_empty_str(self.study_name, "'search.study_name'", optional=True)
        for key in ("max_latency_ms", "max_params", "max_flops"):
            checks.positive_number(getattr(self, key), f"'search.{key}'", optional=True)
        checks.boolean(self.retry_failed, "'search.retry_failed'")
        self.multi_fidelity = MultiFidelityConfig.parse(self.multi_fidelity)
        self.supernet = SupernetConfig.parse(self.supernet)
        self.strategy = resolve_strategy(self.strategy, self.multi_fidelity, self.supernet, self.search_space)
        if self.strategy == "multi_fidelity" and self.multi_fidelity is None:
            self.multi_fidelity = MultiFidelityConfig()
        if self.strategy == "supernet" and self.supernet is None:
            self.supernet = SupernetConfig()
        if self.multi_fidelity is not None:
            mf = self.multi_fidelity
            needed = first_full_result_cost(mf.min_fraction, mf.reduction_factor)
            if self.max_trials < needed - 1e-6:
                raise ConfigError(
                    f"'search.max_trials' is {self.max_trials}, below the {needed:g} full-trial equivalents that "
                    f"search.multi_fidelity (rungs {mf.rung_fractions}) spends before one candidate can reach the "
                    f"full budget; raise max_trials to at least {math.ceil(needed - 1e-6)}, or min_fraction "
                    "(fewer rungs).")
        checks.positive_number(self.time_budget_s, "'search.time_budget_s'", optional=True)
        for key in ("heartbeat_interval", "grace_period"):
            checks.positive_int(getattr(self, key), f"'search.{key}'", optional=True,
                                what="integer number of seconds")

    @property
    def directions(self) -> list[str]:
        return ["maximize" if h else "minimize" for h in self.higher_is_better]

    @property
    def space_size(self) -> int:
        return math.prod(len(v) for v in self.search_space.values())


_SEARCH_KEYS = [f.name for f in dataclasses.fields(SearchConfig)]


def _check_search_space(space: Any) -> dict[str, list[Any]]:
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("'search.search_space' must be a non-empty mapping {name: [values, ...]}.")
    search_space: dict[str, list[Any]] = {}
    for name, values in space.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"'search.search_space' names must be non-empty strings, got {checks.shown(name)}.")
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"'search.search_space.{name}' must be a list of values, got {checks.shown(values)} "
                              f"({type(values).__name__}); write {name}: [value, ...].")
        values = list(values)
        if not values:
            raise ConfigError(f"'search.search_space.{name}' is an empty list; give at least one value.")
        for v in values:
            if not isinstance(v, _CATEGORICAL_TYPES):
                raise ConfigError(f"'search.search_space.{name}' holds {checks.shown(v)} of type {type(v).__name__}; "
                                  "values must be None, bool, int, float or str.")
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"'search.search_space.{name}' holds {v!r}; values must be finite.")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"'search.search_space.{name}' has repeated values: {checks.shown(values)}.")
        if name in KD_KNOBS:  # temperature, kd_weight, flash_share: distillation settings, not config fields
            check_knob_values(name, values)
        search_space[name] = values
    return search_space


def parse_search_config(config: Any) -> SearchConfig:
    """Read the ``search`` section of an AutoDistillation config into a :class:`SearchConfig` (which checks it).

    ``config`` is a mapping ``{'search': {...}, 'flash_distillation': ..., ...}`` (sections other than ``search``
    are ignored), a bare search section, a :class:`SearchConfig`, or a dataclass / object with ``to_dict()``.
    Here only the dict boundary is handled: unknown keys, a single metric given as a string, and the default
    ``higher_is_better`` for metrics whose direction is known (:data:`KNOWN_DIRECTIONS`).

    Raises:
        ConfigError: naming the offending key.
    """
    if isinstance(config, SearchConfig):
        return config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        search_field = getattr(config, "search", None)
        if isinstance(search_field, SearchConfig):
            return search_field
        config = dataclasses.asdict(config)
    elif hasattr(config, "to_dict") and not isinstance(config, Mapping):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ConfigError("AutoDistillation config must be a mapping with a 'search' section, "
                          f"got {type(config).__name__}.")
    if "search" in config:
        search = config["search"]
    elif "search_space" in config:  # a bare search section is accepted too
        search = config
    else:
        raise ConfigError("AutoDistillation config has no 'search' section (it needs 'search': {'search_space': "
                          "{...}})." + did_you_mean("search", [str(k) for k in config]))
    if isinstance(search, SearchConfig):
        return search
    if dataclasses.is_dataclass(search) and not isinstance(search, type):
        search = dataclasses.asdict(search)
    if not isinstance(search, Mapping):
        raise ConfigError(f"config 'search' must be a mapping, got {type(search).__name__}.")
    for key in search:
        if key not in _SEARCH_KEYS:
            raise ConfigError(f"Unknown key 'search.{key}'." + did_you_mean(str(key), _SEARCH_KEYS))
    if "search_space" not in search:
        raise ConfigError("'search.search_space' must be a non-empty mapping {name: [values, ...]}.")
    values = dict(search)
    if isinstance(values.get("metrics"), str):
        values["metrics"] = [values["metrics"]]
    if isinstance(values.get("higher_is_better"), bool):
        values["higher_is_better"] = [values["higher_is_better"]]
    if values.get("higher_is_better") is None:
        metrics = values.get("metrics", ["accuracy", "latency"])
        if isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics):
            unknown = [m for m in metrics if m not in KNOWN_DIRECTIONS]
            if unknown:
                raise ConfigError(f"'search.higher_is_better' is required for metrics {checks.shown(list(metrics))} "
                                  "(one bool per metric).")
            values["higher_is_better"] = [KNOWN_DIRECTIONS[m] for m in metrics]
        else:
            values.pop("higher_is_better", None)
    return SearchConfig(**values)
