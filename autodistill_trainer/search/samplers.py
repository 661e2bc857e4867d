"""Advisors: the Optuna sampler behind each ``search.search_algorithm`` name, from a registry."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import optuna

from ..configs import SEARCH_ALGORITHMS
from ..errors import ConfigError, did_you_mean

__all__ = ["SAMPLER_FACTORIES", "make_advisor"]


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler that does not call ``study.stop()`` (which raises outside ``study.optimize``).

    The search loop stops by itself once every architecture of the (finite) space was evaluated.
    """

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D401 - see class docstring
        return None


SamplerFactory = Callable[[Mapping[str, Sequence[Any]], int], optuna.samplers.BaseSampler]

#: ``search_algorithm`` name -> ``factory(search_space, seed)``.
SAMPLER_FACTORIES: dict[str, SamplerFactory] = {
    "BO": lambda space, seed: optuna.samplers.GPSampler(seed=seed),
    "TPE": lambda space, seed: optuna.samplers.TPESampler(seed=seed, multivariate=True),
    "NSGA2": lambda space, seed: optuna.samplers.NSGAIISampler(seed=seed),
    "random": lambda space, seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda space, seed: AskTellGridSampler({k: list(v) for k, v in space.items()}, seed=seed),
}
assert set(SAMPLER_FACTORIES) == set(SEARCH_ALGORITHMS), "every search algorithm of the config needs a sampler"


def make_advisor(name: str, search_space: Mapping[str, Sequence[Any]], seed: int) -> optuna.samplers.BaseSampler:
    """Return the Optuna sampler for an advisor name (``BO``, ``TPE``, ``NSGA2``, ``random``, ``grid``)."""
    factory = SAMPLER_FACTORIES.get(name)
    if factory is None:
        raise ConfigError(
            f"search.search_algorithm: unknown value {name!r}; choose one of {list(SAMPLER_FACTORIES)}."
            + did_you_mean(name, SAMPLER_FACTORIES)
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factory(search_space, seed)
