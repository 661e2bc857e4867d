"""Measuring one architecture: its profile (cheap objectives), budgets, training and evaluation results."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..configs import SearchConfig
from ..errors import InvalidArchitectureError
from ..profiling import ProfilingUnsupportedError, count_parameters, profile_model

logger = logging.getLogger(__name__)

__all__ = ["PROFILE_KEYS", "MissingMetricError", "budget_violation", "empty_cuda_cache", "measure_profile",
           "objective_values"]

PROFILE_KEYS = ("params", "flops", "latency")

#: ``search.<budget>`` -> (profile key, unit).
BUDGETS = {"max_latency_ms": ("latency", " ms"), "max_params": ("params", ""), "max_flops": ("flops", "")}


class MissingMetricError(KeyError):
    """A metric of ``search.metrics`` (``.metric``) is neither in ``eval_func``'s results nor in the profile."""

    def __init__(self, metric: str, message: str) -> None:
        super().__init__(message)
        self.metric = metric


def fallback_profile(model: Any) -> dict[str, Any]:
    """What can be measured of any model: the parameter count of an ``nn.Module`` (else nothing)."""
    return {"params": count_parameters(model)} if isinstance(model, nn.Module) else {}


def measure_profile(
    model: Any, profile_func: Callable[[Any], Mapping[str, Any]] | None
) -> tuple[dict[str, Any], str | None]:
    """``(profile, why_partial)``: the cheap objectives of a freshly built model.

    With ``profile_func``, its result; when it raises (other than :class:`InvalidArchitectureError`), the
    fallback profile. Without, :func:`~autodistill_trainer.profiling.profile_model`; when the model cannot
    be profiled (not an ``nn.Module``, no dummy batch for it), the fallback profile. ``why_partial`` says
    why a fallback was used (None otherwise).

    Raises:
        InvalidArchitectureError: ``profile_func`` raised it, or the model's own forward pass failed on the
            default profiler's dummy batch (the architecture cannot run).
    """
    if profile_func is not None:
        try:
            return dict(profile_func(model)), None
        except InvalidArchitectureError:
            raise
        except Exception as exc:  # a user callback may raise anything: fall back, and the caller reports it
            return fallback_profile(model), f"profile_func raised {type(exc).__name__}: {exc}"
    try:
        return dict(profile_model(model)), None
    except ProfilingUnsupportedError as exc:
        return fallback_profile(model), str(exc)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise InvalidArchitectureError(f"its forward pass fails ({type(exc).__name__}: {exc})") from exc


def budget_violation(profile: Mapping[str, Any], cfg: SearchConfig) -> tuple[str, str] | None:
    """``(profile key, reason)`` of the first budget the profile breaks, or None."""
    for budget_name, (key, unit) in BUDGETS.items():
        budget = getattr(cfg, budget_name)
        if budget is None:
            continue
        if profile.get(key) is None:
            logger.warning("search.%s cannot be checked: the profile has no %r", budget_name, key)
            continue
        if float(profile[key]) > budget:
            return key, f"{key} {profile[key]:g}{unit} > budget {budget:g}{unit}"
    return None


def objective_values(metrics: dict[str, Any], profile: Mapping[str, Any], names: Sequence[str]) -> list[float]:
    """The objective values in ``names`` order; metrics missing from ``metrics`` are taken from the profile
    (and added to ``metrics``).

    Raises:
        MissingMetricError: a metric is in neither. ValueError: a metric is NaN or not a number.
    """
    values = []
    for name in names:
        if name not in metrics and name in profile:
            metrics[name] = profile[name]
        if name not in metrics:
            raise MissingMetricError(
                name, f"metric {name!r} is missing from eval_func's results {sorted(metrics)} and from the profile"
            )
        try:
            v = float(metrics[name])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metric {name!r} is not a number: {metrics[name]!r}") from exc
        if math.isnan(v):
            raise ValueError(f"metric {name!r} is NaN")
        values.append(v)
    return values


def empty_cuda_cache() -> None:
    """Release cached CUDA memory after a failed trial (no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
