"""Flash (block-by-block) distillation of a supernet: the flash stages of the plain students, on sandwiches.

Stage ``i`` trains encoder layer ``i`` of the supernet (and the embeddings at stage 0) and nothing else; every
step runs the sandwich's sub-networks (:class:`~.sandwich.SandwichSampler`) that have a layer ``i``, each up to
layer ``i`` only, and sums their block losses. A block loss is the plain flash criterion's
(:func:`~autodistill_trainer.auto_mappings.auto_flash_config`): KL between the sub-network's attention maps of
layer ``i`` and the teacher's of layer ``uniform_layer_map(supernet depth, teacher depth)[i]`` (heads averaged
to the smaller count when they differ, as the criterion's head alignment does) plus MSE between the layer's output,
through a matcher, and the teacher layer's output, both over real (unpadded) positions, with equal weights.

**Matchers per sub-width.** One ``Linear(supernet hidden_size, teacher hidden_size)`` per stage; a sub-network of
width ``h`` uses its first ``h`` input columns, so matchers nest like every other weight, and the largest
sub-network (in every step) reaches all of it, as DDP requires. The teacher runs live (attention maps are not
cached), switched to eager attention for the stages when it runs another implementation (restored afterwards).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainingArguments

from ..auto_mappings import uniform_layer_map
from ..console import label_stage_output
from .. import module_overrides
from ..criterion_setup import align_heads, hold_eager_attention, real_positions
from ..embedding_init import TeacherEmbeddingProjection
from ..embedding_init import init_embeddings_from_teacher as _init_embeddings
from ..errors import ConfigError
from ..guards import check_finite_parameters, requires_grad_restored
from ..losses import KLDivergenceLoss, MSEFeatureLoss
from .extract import build_supernet, subnet_forward
from .sandwich import SandwichOutput, SandwichSampler
from .space import ElasticSpace
from .training import SupernetTrainer, SupernetTrainResult

logger = logging.getLogger(__name__)

__all__ = ["FlashBlockModel", "FlashSupernetTrainer", "block_prefixes", "train_supernet_flash"]


def head_alignment(student_heads: int, teacher_heads: int) -> str | None:
    """How attention maps of different head counts are compared: the larger count averaged down to the smaller one
    when it divides it (``"teacher"``/``"student"``), else both averaged to one map (``"both"``)."""
    if student_heads == teacher_heads:
        return None
    if teacher_heads % student_heads == 0:
        return "teacher"
    return "student" if student_heads % teacher_heads == 0 else "both"


def block_prefixes(supernet: nn.Module, block: int) -> list[str]:
    """The parameter prefixes stage ``block`` trains: encoder layer ``block`` (and the embeddings for block 0)."""
    base = f"{supernet.base_model_prefix}."
    return [f"{base}embeddings", f"{base}encoder.layer.0"] if block == 0 else [f"{base}encoder.layer.{block}"]


class FlashBlockModel(nn.Module):
    """One flash stage's model: the supernet, its block index and the stage's nested matcher (module docstring)."""

    def __init__(self, supernet: nn.Module, space: ElasticSpace, block: int, teacher_hidden_size: int,
                 seed: int = 0) -> None:
        super().__init__()
        self.supernet, self.space, self.block = supernet, space, int(block)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + block)
            self.matcher = nn.Linear(supernet.config.hidden_size, teacher_hidden_size)
        self.attention_loss = KLDivergenceLoss(inputs_are_probabilities=True)
        self.output_loss = MSEFeatureLoss()

    @property
    def config(self) -> Any:
        return self.supernet.config

    def block_loss(self, arch: Mapping[str, int], teacher_attention: torch.Tensor, teacher_hidden: torch.Tensor,
                   **inputs: Any) -> torch.Tensor:
        """Attention KL + matched layer-output MSE of sub-network ``arch`` at this block."""
        out = subnet_forward(self.supernet, arch, self.space, depth=self.block + 1, output_attentions=True,
                             output_hidden_states=True, **inputs)
        attention, hidden = out.attentions[self.block], out.hidden_states[self.block + 1]
        mask = inputs.get("attention_mask")
        student, teacher = align_heads(head_alignment(attention.shape[1], teacher_attention.shape[1]),
                                       attention, teacher_attention.to(attention.dtype))
        kl = self.attention_loss(real_positions(student, mask)[0], real_positions(teacher, mask)[0])
        matched = F.linear(hidden, self.matcher.weight[:, : hidden.shape[-1]], self.matcher.bias)
        mse = self.output_loss(real_positions(matched, mask)[0],
                               real_positions(teacher_hidden.to(matched.dtype), mask)[0])
        return kl + mse

    def forward(self, archs: Sequence[Mapping[str, int]], teacher_attention: torch.Tensor,
                teacher_hidden: torch.Tensor, **batch: Any) -> SandwichOutput:
        """The summed block losses of the sub-networks of ``archs`` that have this block (labels are not used)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        deep = [arch for arch in archs if _depth(self.space, arch) > self.block]
        if not deep:
            raise ValueError(f"no sub-network of this step has a layer {self.block}.")
        losses = [self.block_loss(arch, teacher_attention, teacher_hidden, **inputs) for arch in deep]
        return SandwichOutput(loss=torch.stack(losses).sum(), subnet_losses=torch.stack([x.detach() for x in losses]))


class FlashSupernetTrainer(SupernetTrainer):
    """:class:`~.training.SupernetTrainer` of a :class:`FlashBlockModel`: the live teacher's attention maps and
    output of ``teacher_layer`` are the targets."""

    def __init__(self, *args: Any, teacher_layer: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_layer = int(teacher_layer)

    def teacher_targets(self, model: nn.Module, batch: dict[str, Any], cached: torch.Tensor | None) -> dict[str, Any]:
        with torch.no_grad():
            out = self.run_teacher(batch, output_attentions=True, output_hidden_states=True)
        if not out.attentions or out.attentions[self.teacher_layer] is None:
            raise ConfigError("flash supernet distillation needs the teacher's attention maps: load the teacher with "
                              "attn_implementation='eager'.")
        return {"teacher_attention": out.attentions[self.teacher_layer].float(),
                "teacher_hidden": out.hidden_states[self.teacher_layer + 1].float()}

    def _record(self, losses: torch.Tensor) -> None:
        """Log ``loss_largest`` and the mean of the others as ``loss_others`` (sub-networks without this block are
        skipped, so positions do not name roles here)."""
        values = {"loss_largest": losses[0]}
        if len(losses) > 1:
            values["loss_others"] = losses[1:].mean()
        for name, value in values.items():
            self._loss_sums[name] = self._loss_sums.get(name, 0) + value.float()
        self._loss_count += 1


def _depth(space: ElasticSpace, arch: Mapping[str, int]) -> int:
    return int(arch.get("num_hidden_layers", space.base_config.num_hidden_layers))


def _deep_subnets(sampler: SandwichSampler, space: ElasticSpace, block: int, steps: int) -> int:
    return sum(sum(_depth(space, arch) > block for arch in sampler.archs_for_step(step)) for step in range(steps))


def train_supernet_flash(
    space: ElasticSpace,
    teacher: nn.Module,
    args: TrainingArguments,
    train_dataset: Any,
    data_collator: Callable | None = None,
    *,
    steps_per_block: int,
    num_random: int = 2,
    blocks: Sequence[int] | None = None,
    init_embeddings_from_teacher: bool = True,
    callbacks: Sequence[Any] = (),
    supernet: nn.Module | None = None,
    embedding_projection: TeacherEmbeddingProjection | None = None,
    processing_class: Any = None,
    log_label: str = "supernet flash",
) -> SupernetTrainResult:
    """Flash-distil the supernet of ``space`` block by block (see the module docstring); one Trainer run per block
    under ``args.output_dir/flash-XX`` (``max_steps=steps_per_block``; stage ``i`` draws its sandwiches with seed
    ``args.seed + i``). ``blocks`` (default: every layer of the supernet, in order) selects the stages. Other
    arguments as :func:`~.training.train_supernet`. Each parameter's ``requires_grad`` flag is restored afterwards.
    A stage is one Trainer run, so ``resume_from_checkpoint`` is not offered across stages: rerun the stages left.
    """
    if not isinstance(steps_per_block, int) or isinstance(steps_per_block, bool) or steps_per_block < 1:
        raise ValueError(f"steps_per_block must be a positive integer, got {steps_per_block!r}.")
    supernet = build_supernet(space, seed=args.seed) if supernet is None else supernet
    depth = supernet.config.num_hidden_layers
    blocks = list(range(depth)) if blocks is None else list(blocks)
    if any(not 0 <= b < depth for b in blocks):
        raise ConfigError(f"blocks must be layer indices of the supernet (0 to {depth - 1}), got {blocks}.")
    if init_embeddings_from_teacher and 0 in blocks:
        _init_embeddings(supernet, embedding_projection or TeacherEmbeddingProjection(teacher))
    layer_map = uniform_layer_map(depth, teacher.config.num_hidden_layers)
    start, steps, subnet_steps = time.perf_counter(), 0, 0
    teacher_was_training = teacher.training
    eager = hold_eager_attention(teacher, "teacher", needed=True)  # attention maps exist only in eager attention
    try:
        with requires_grad_restored(supernet, teacher):
            teacher.eval().requires_grad_(False)
            for block in blocks:
                prefixes = block_prefixes(supernet, block)
                for name, parameter in supernet.named_parameters():
                    parameter.requires_grad_(any(name == p or name.startswith(p + ".") for p in prefixes))
                model = FlashBlockModel(supernet, space, block, teacher.config.hidden_size, seed=args.seed)
                sampler = SandwichSampler(space, num_random, seed=args.seed + block)
                stage_args = dataclasses.replace(
                    args, max_steps=steps_per_block, eval_strategy="no", load_best_model_at_end=False,
                    output_dir=os.path.join(args.output_dir, f"flash-{block:02d}"))
                trainer = FlashSupernetTrainer(
                    model=model, args=stage_args, train_dataset=train_dataset, data_collator=data_collator,
                    processing_class=processing_class, callbacks=list(callbacks), teacher_model=teacher,
                    sampler=sampler, teacher_layer=layer_map[block])
                label_stage_output(trainer, f"{log_label} {blocks.index(block) + 1}/{len(blocks)} layer {block}")
                output = trainer.train()
                steps += output.global_step
                subnet_steps += _deep_subnets(sampler, space, block, output.global_step)
    finally:
        teacher.train(teacher_was_training)
        if eager:
            module_overrides.release(teacher, "attn_implementation")
    check_finite_parameters(supernet)
    wall = time.perf_counter() - start
    logger.info("Supernet flash-distilled: %d blocks, %d steps in %.1fs", len(blocks), steps, wall)
    return SupernetTrainResult(supernet=supernet, steps=steps, wall_s=wall, subnet_steps=subnet_steps)
