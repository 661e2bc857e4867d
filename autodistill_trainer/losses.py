"""Feature losses for knowledge distillation, and a registry to add your own by name.

Every loss compares a student tensor with a teacher tensor of the same shape and returns a scalar.
The **last dimension** is the feature (or distribution) dimension; all leading dimensions are
*positions* (batch, heads, tokens). A loss first reduces the last dimension to one value per
position, then averages over the *real* positions given by ``position_mask`` (padding is ignored):

=====  ==========================================================================================
MSE    per position: mean over features of (s - t)^2
L1     per position: mean over features of |s - t|
KL     per position: sum over the distribution of t * (log t - log s) (MobileBERT's convention for
       attention maps: summed over keys, averaged over batch, heads and real query positions).
       For logits the distributions are softmax(x / T) and the result is scaled by T^2.
CE     soft cross-entropy: per position -sum t * log s (softmax(x / T) for logits, times T^2)
Cos    per position: 1 - cosine_similarity(s, t)
=====  ==========================================================================================

Whether KL/CE inputs are probabilities or logits is decided once, at set-up, by the criterion (see
:class:`~autodistill_trainer.criterion.IntermediateLayersKnowledgeDistillationLoss`), and passed
as ``inputs_are_probabilities``; it is never guessed anew per batch.

Add a loss::

    from autodistill_trainer import register_loss, FeatureLoss

    @register_loss("SmoothL1")
    class SmoothL1FeatureLoss(FeatureLoss):
        def per_position(self, student, teacher):
            return torch.nn.functional.smooth_l1_loss(student, teacher, reduction="none").mean(-1)

and use it in a recipe with ``loss_types: ['SmoothL1']``.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, did_you_mean

LOSS_REGISTRY: dict[str, type["FeatureLoss"]] = {}
_PROBABILITY_EPS = 1e-12

T = TypeVar("T", bound=type)


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator that registers a :class:`FeatureLoss` under `name` (case-insensitive)."""

    def decorator(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, FeatureLoss)):
            raise TypeError(f"register_loss({name!r}) expects a FeatureLoss subclass, got {cls!r}")
        LOSS_REGISTRY[name.upper()] = cls
        cls.loss_name = name
        return cls

    return decorator


def get_loss_class(name: str) -> type["FeatureLoss"]:
    """Look up a registered loss by name (case-insensitive), with a clear error for unknown names."""
    if not isinstance(name, str) or name.upper() not in LOSS_REGISTRY:
        known = sorted(cls.loss_name for cls in LOSS_REGISTRY.values())
        raise ConfigError(
            f"unknown loss type {name!r}; known loss types: {', '.join(known)}."
            f"{did_you_mean(str(name), known)} Register a new one with @register_loss('Name')."
        )
    return LOSS_REGISTRY[name.upper()]


def masked_mean(values: torch.Tensor, position_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-position `values` over the positions where `position_mask` is true.

    `position_mask` must broadcast to `values` (e.g. ``(B, 1, L)`` against ``(B, H, L)``).
    """
    if position_mask is None:
        return values.mean()
    mask = position_mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class FeatureLoss(nn.Module):
    """Base class: reduce the last dimension per position (`per_position`), then a masked mean.

    Args:
        temperature: softmax temperature for losses on logits (KL, CE); ignored by the others.
        inputs_are_probabilities: for KL/CE, whether the tensors already are distributions
            (attention maps) rather than logits.
    """

    loss_name = "base"

    def __init__(self, temperature: float = 1.0, inputs_are_probabilities: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.inputs_are_probabilities = bool(inputs_are_probabilities)

    def per_position(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Return one loss value per position (all dimensions but the last)."""
        raise NotImplementedError

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, position_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(
                f"{self.loss_name}: student shape {tuple(student.shape)} != teacher {tuple(teacher.shape)}"
            )
        return masked_mean(self.per_position(student, teacher), position_mask)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, inputs_are_probabilities={self.inputs_are_probabilities}"


@register_loss("MSE")
class MSEFeatureLoss(FeatureLoss):
    """Mean squared error (TinyBERT/MobileBERT feature-map transfer)."""

    def per_position(self, student, teacher):
        return (student - teacher).pow(2).mean(-1)


@register_loss("L1")
class L1FeatureLoss(FeatureLoss):
    """Mean absolute error."""

    def per_position(self, student, teacher):
        return (student - teacher).abs().mean(-1)


@register_loss("Cos")
class CosineFeatureLoss(FeatureLoss):
    """1 - cosine similarity along the feature dimension (DistilBERT's hidden-state alignment)."""

    def per_position(self, student, teacher):
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1)


@register_loss("KL")
class KLDivergenceLoss(FeatureLoss):
    """KL(teacher || student) along the last dimension (Hinton et al. 2015; MobileBERT attention transfer).

    For probabilities (attention maps): per row ``sum_k t_k (log t_k - log s_k)``; zero-probability
    teacher entries contribute 0. For logits: ``softmax(x / T)`` on both sides, result times ``T^2``.
    """

    def per_position(self, student, teacher):
        if self.inputs_are_probabilities:
            student, teacher = student.float(), teacher.float()
            return (torch.xlogy(teacher, teacher) - torch.xlogy(teacher, student.clamp_min(_PROBABILITY_EPS))).sum(-1)
        t = self.temperature
        log_s = F.log_softmax(student.float() / t, dim=-1)
        log_t = F.log_softmax(teacher.float() / t, dim=-1)
        return (log_t.exp() * (log_t - log_s)).sum(-1) * (t * t)


@register_loss("CE")
class SoftCrossEntropyLoss(FeatureLoss):
    """Soft cross-entropy ``-sum t log s`` along the last dimension (softmax(x / T) for logits, times T^2)."""

    def per_position(self, student, teacher):
        if self.inputs_are_probabilities:
            return -torch.xlogy(teacher.float(), student.float().clamp_min(_PROBABILITY_EPS)).sum(-1)
        t = self.temperature
        log_s = F.log_softmax(student.float() / t, dim=-1)
        p_t = F.softmax(teacher.float() / t, dim=-1)
        return -(p_t * log_s).sum(-1) * (t * t)
