"""The sandwich rule: every training step trains the largest, the smallest and a few random sub-networks on one batch.

:class:`SandwichSampler` draws the step's architectures as a pure function of ``(seed, step)``, so every process of
a distributed run (and a resumed run) trains the same sub-networks at the same step. :class:`SandwichModel` runs
them all in *one* forward on views of the supernet's weights (:func:`~.extract.subnet_forward`) and returns the sum
of their losses, so a Trainer (and DDP under accelerate) sees one forward and one backward per step.

Each sub-network's loss is the regular distillation stage's: ``kd_weight * KL(softmax(s/T) || softmax(t/T)) * T^2``
(:class:`~autodistill_trainer.losses.KLDivergenceLoss`, averaged over the batch) plus the sub-network's own label
loss (skipped for a batch without labelled rows, as in the regular stage). The target ``t`` is the teacher's logits
(``inplace_distillation="teacher"``), or, with ``"largest"``, the largest sub-network's logits (detached) for
every sub-network run after it in the step (in-place distillation of OFA/BigNAS); the largest itself always learns
from the teacher.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers.utils import ModelOutput

from ..accumulation import has_labelled_rows
from ..errors import ConfigError
from ..losses import KLDivergenceLoss
from .extract import subnet_forward
from .space import ElasticSpace

__all__ = ["INPLACE_DISTILLATION", "SandwichModel", "SandwichOutput", "SandwichSampler"]

#: Values of ``inplace_distillation``: what the sub-networks other than the largest distil from.
INPLACE_DISTILLATION = ("teacher", "largest")


class SandwichSampler:
    """The sub-networks of each training step: the largest, the smallest, then ``num_random`` random ones.

    Args:
        space: the elastic space.
        num_random: random sub-networks per step (>= 0), drawn uniformly from the valid architectures.
        seed: with the step, the only input of the draw.
    """

    def __init__(self, space: ElasticSpace, num_random: int, seed: int) -> None:
        if not isinstance(num_random, int) or isinstance(num_random, bool) or num_random < 0:
            raise ConfigError(f"num_random must be an integer >= 0 (random sub-networks per step), got {num_random!r}.")
        self.space, self.num_random, self.seed = space, num_random, int(seed)

    def archs_for_step(self, step: int) -> list[dict[str, int]]:
        """``[largest, smallest, random_1, ..., random_num_random]`` for ``step``: a pure function of (seed, step)."""
        rng = random.Random(f"sandwich:{self.seed}:{int(step)}")  # str seeds hash with SHA-512: stable everywhere
        return [self.space.largest(), self.space.smallest(), *(self.space.sample(rng) for _ in range(self.num_random))]


@dataclasses.dataclass
class SandwichOutput(ModelOutput):
    """``loss``: the sum of the sub-networks' losses; ``subnet_losses``: each one's loss (detached), in order;
    ``logits``: the first sub-network's logits (the largest, with :class:`SandwichSampler`)."""

    loss: torch.Tensor | None = None
    subnet_losses: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class SandwichModel(nn.Module):
    """Wraps a supernet so that one forward trains several of its sub-networks on one batch (see the module doc).

    Args:
        supernet: the supernet (built from ``space.supernet_config()``).
        space: its elastic space.
        temperature: KD temperature ``T`` (> 0).
        kd_weight: weight of the KD term (>= 0; 0 trains on labels only).
        inplace_distillation: ``"teacher"`` or ``"largest"`` (see the module docstring).
    """

    def __init__(self, supernet: nn.Module, space: ElasticSpace, *, temperature: float = 2.0,
                 kd_weight: float = 1.0, inplace_distillation: str = "teacher") -> None:
        super().__init__()
        if inplace_distillation not in INPLACE_DISTILLATION:
            raise ConfigError(f"inplace_distillation must be one of {', '.join(INPLACE_DISTILLATION)}, got "
                              f"{inplace_distillation!r}.")
        if not kd_weight >= 0:
            raise ConfigError(f"kd_weight must be >= 0, got {kd_weight!r}.")
        self.supernet = supernet
        self.space = space
        self.kd_weight = float(kd_weight)
        self.inplace_distillation = inplace_distillation
        self.kd_loss = KLDivergenceLoss(temperature=temperature)

    @property
    def config(self) -> Any:
        """The supernet's config (for code that reads ``model.config``)."""
        return self.supernet.config

    def forward(self, archs: Sequence[Mapping[str, int]], teacher_logits: torch.Tensor | None = None,
                **batch: Any) -> SandwichOutput:
        """Run every architecture of ``archs`` on ``batch``; ``teacher_logits`` are needed when ``kd_weight`` > 0."""
        if not archs:
            raise ValueError("SandwichModel.forward needs at least one architecture.")
        if self.kd_weight > 0 and teacher_logits is None:
            raise ValueError("SandwichModel.forward needs teacher_logits when kd_weight > 0.")
        labelled = has_labelled_rows(batch)
        inputs = batch if labelled else {k: v for k, v in batch.items() if k != "labels"}
        largest, target_of_largest = self.space.largest(), None
        losses, first_logits = [], None
        for arch in archs:
            outputs = subnet_forward(self.supernet, arch, self.space, **inputs)
            logits = outputs.logits
            loss = logits.new_zeros(())
            if self.kd_weight > 0:
                target = teacher_logits if target_of_largest is None else target_of_largest
                loss = loss + self.kd_weight * self.kd_loss(logits, target.to(logits.dtype))
            if labelled:
                loss = loss + outputs.loss
            if self.inplace_distillation == "largest" and target_of_largest is None and dict(arch) == largest:
                target_of_largest = logits.detach()
            losses.append(loss)
            first_logits = logits if first_logits is None else first_logits
        if not labelled and self.kd_weight == 0:
            raise ValueError("a batch without labelled rows and kd_weight=0 gives the sub-networks nothing to learn.")
        total = torch.stack(losses).sum()
        return SandwichOutput(loss=total, subnet_losses=torch.stack([x.detach() for x in losses]),
                              logits=first_logits)
