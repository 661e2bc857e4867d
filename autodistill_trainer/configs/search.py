"""The ``search`` section of an AutoDistillation config: search space, advisor, objectives, budgets, storage."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable, Mapping

from ..errors import ConfigError, did_you_mean

SEARCH_ALGORITHMS = ("BO", "TPE", "NSGA2", "random", "grid")


@dataclasses.dataclass
class SearchConfig:
    """Validated ``search`` section of an AutoDistillation config (see :func:`parse_search_config`)."""

    search_space: dict[str, list[Any]]
    search_algorithm: str = "BO"
    metrics: list[str] = dataclasses.field(default_factory=lambda: ["accuracy", "latency"])
    higher_is_better: list[bool] = dataclasses.field(default_factory=lambda: [True, False])
    max_trials: int = 10
    seed: int = 42
    storage: str | None = None
    study_name: str | None = None
    max_latency_ms: float | None = None
    max_params: float | None = None
    max_flops: float | None = None
    heartbeat_interval: int | None = 10
    grace_period: int | None = None

    @property
    def directions(self) -> list[str]:
        return ["maximize" if h else "minimize" for h in self.higher_is_better]

    @property
    def space_size(self) -> int:
        return math.prod(len(v) for v in self.search_space.values())


_SEARCH_KEYS = [f.name for f in dataclasses.fields(SearchConfig)]
_CATEGORICAL_TYPES = (type(None), bool, int, float, str)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_search_config(config: Any) -> SearchConfig:
    """Validate an AutoDistillation config and return its ``search`` section.

    ``config`` is a mapping ``{'search': {...}, 'flash_distillation': ..., ...}``; sections other than
    ``search`` are ignored here. A dataclass (or an object with ``to_dict()``) is converted first.
    Keys of ``search``: ``search_space`` (required; ``{name: [values, ...]}``), ``search_algorithm``
    (``BO``/``TPE``/``NSGA2``/``random``/``grid``, default ``BO``), ``metrics`` (default
    ``['accuracy', 'latency']``), ``higher_is_better`` (default ``[True, False]``), ``max_trials``
    (default 10), ``seed`` (default 42), ``storage`` (Optuna storage URL, default a SQLite file in
    ``output_dir``), ``study_name``, ``max_latency_ms``, ``max_params``, ``max_flops`` (budgets on the
    cheap objectives), ``heartbeat_interval`` (seconds, default 10; ``None`` disables the heartbeat),
    ``grace_period`` (seconds before a silent RUNNING trial is failed, default ``max(60, 3 * heartbeat_interval)``).

    Raises:
        ConfigError: naming the offending key.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif hasattr(config, "to_dict") and not isinstance(config, Mapping):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise ConfigError(f"AutoDistillation config must be a mapping with a 'search' section, got {type(config).__name__}.")
    if "search" in config:
        search = config["search"]
    elif "search_space" in config:  # a bare search section is accepted too
        search = config
    else:
        raise ConfigError("AutoDistillation config has no 'search' section (it needs 'search': {'search_space': {...}})." + did_you_mean("search", [str(k) for k in config]))
    if dataclasses.is_dataclass(search) and not isinstance(search, type):
        search = dataclasses.asdict(search)
    if not isinstance(search, Mapping):
        raise ConfigError(f"config 'search' must be a mapping, got {type(search).__name__}.")
    for key in search:
        if key not in _SEARCH_KEYS:
            raise ConfigError(f"Unknown key 'search.{key}'." + did_you_mean(str(key), _SEARCH_KEYS))

    # search_space
    space = search.get("search_space")
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("'search.search_space' must be a non-empty mapping {name: [values, ...]}.")
    search_space: dict[str, list[Any]] = {}
    for name, values in space.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"'search.search_space' names must be non-empty strings, got {name!r}.")
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise ConfigError(f"'search.search_space.{name}' must be a list of values, got {values!r}.")
        values = list(values)
        if not values:
            raise ConfigError(f"'search.search_space.{name}' is an empty list; give at least one value.")
        for v in values:
            if not isinstance(v, _CATEGORICAL_TYPES):
                raise ConfigError(f"'search.search_space.{name}' holds {v!r} of type {type(v).__name__}; values must be None, bool, int, float or str.")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"'search.search_space.{name}' has repeated values: {values!r}.")
        search_space[name] = values

    # algorithm
    algo = search.get("search_algorithm", "BO")
    canonical = {a.lower(): a for a in SEARCH_ALGORITHMS}
    if not isinstance(algo, str) or algo.lower() not in canonical:
        raise ConfigError(f"'search.search_algorithm' is {algo!r}; choose one of {list(SEARCH_ALGORITHMS)}." + did_you_mean(str(algo), SEARCH_ALGORITHMS))
    algo = canonical[algo.lower()]

    # metrics / directions
    metrics = search.get("metrics", ["accuracy", "latency"])
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)) or not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise ConfigError(f"'search.metrics' must be a non-empty list of metric names, got {metrics!r}.")
    if len(set(metrics)) != len(metrics):
        raise ConfigError(f"'search.metrics' has repeated names: {metrics!r}.")
    hib = search.get("higher_is_better", None)
    if hib is None:
        defaults = {"accuracy": True, "f1": True, "latency": False, "params": False, "flops": False, "loss": False}
        if "metrics" in search and any(m not in defaults for m in metrics):
            raise ConfigError(f"'search.higher_is_better' is required for metrics {list(metrics)!r} (one bool per metric).")
        hib = [defaults[m] for m in metrics]
    if isinstance(hib, bool):
        hib = [hib]
    if not isinstance(hib, (list, tuple)) or not all(isinstance(h, bool) for h in hib):
        raise ConfigError(f"'search.higher_is_better' must be a list of booleans, got {hib!r}.")
    if len(hib) != len(metrics):
        raise ConfigError(f"'search.higher_is_better' has {len(hib)} entries but 'search.metrics' has {len(metrics)}; give one direction per metric.")

    max_trials = search.get("max_trials", 10)
    if not isinstance(max_trials, int) or isinstance(max_trials, bool) or max_trials <= 0:
        raise ConfigError(f"'search.max_trials' must be a positive integer, got {max_trials!r}.")
    seed = search.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"'search.seed' must be an integer, got {seed!r}.")
    for key in ("storage", "study_name"):
        val = search.get(key)
        if val is not None and (not isinstance(val, str) or not val):
            raise ConfigError(f"'search.{key}' must be a non-empty string, got {val!r}.")
    budgets = {}
    for key in ("max_latency_ms", "max_params", "max_flops"):
        val = search.get(key)
        if val is not None and (not _is_number(val) or val <= 0):
            raise ConfigError(f"'search.{key}' must be a positive number, got {val!r}.")
        budgets[key] = val
    hb = search.get("heartbeat_interval", 10)
    grace = search.get("grace_period")
    for key, val in (("heartbeat_interval", hb), ("grace_period", grace)):
        if val is not None and (not isinstance(val, int) or isinstance(val, bool) or val <= 0):
            raise ConfigError(f"'search.{key}' must be a positive integer number of seconds (or None), got {val!r}.")
    return SearchConfig(
        search_space=search_space,
        search_algorithm=algo,
        metrics=list(metrics),
        higher_is_better=list(hib),
        max_trials=max_trials,
        seed=seed,
        storage=search.get("storage"),
        study_name=search.get("study_name"),
        heartbeat_interval=hb,
        grace_period=grace,
        **budgets,
    )
