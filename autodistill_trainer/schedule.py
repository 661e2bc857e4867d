"""Run flash distillation (block by block) then regular distillation as a schedule of Trainer stages.

Each stage is a fresh :class:`~autodistill_trainer.DistillationTrainer` over the same student and
teacher, with its own criterion, its own optimizer and LR scheduler (built by the Trainer over exactly
the parameters the stage trains: its block and its feature matchers), and ``max_steps`` set to the
stage's steps. Under ``accelerate launch`` every process runs the same stages in the same order, so
they stay in lock-step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn
from transformers import TrainingArguments
from transformers.trainer_callback import ProgressCallback

from .auto_mappings import auto_flash_config
from .configs.distillation import (
    FlashDistillationConfig,
    parse_distillation,
    parse_flash_distillation,
)
from .errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What one stage did: its name, kind, steps, final losses and time."""

    name: str
    kind: str  # "flash" or "regular"
    index: int
    total: int
    train_steps: int
    train_loss: float
    loss_terms: dict[str, float] = field(default_factory=dict)
    runtime_s: float = 0.0
    trainable_parameters: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StageProgressCallback(ProgressCallback):
    """The Trainer's progress bar, labelled with the stage (``flash 2/6 mobilebert.encoder.layer.1``)."""

    def __init__(self, label: str):
        super().__init__()
        self.label = label

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.label)


def matches_prefix(name: str, prefix: str) -> bool:
    """Exact module-prefix match: ``layer.1`` matches ``layer.1`` and ``layer.1.x``, never ``layer.10``."""
    return name == prefix or name.startswith(prefix + ".")


def set_trainable(model: nn.Module, prefixes: list[str] | None) -> int:
    """Let exactly the parameters under `prefixes` train (all when None); return how many elements train."""
    if prefixes is not None:
        modules = {name for name, _ in model.named_modules()}
        for prefix in prefixes:
            if prefix not in modules:
                raise ConfigError(
                    f"flash_distillation.block_names: the student has no module {prefix!r}.{did_you_mean(prefix, modules)}"
                )
    trainable = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(prefixes is None or any(matches_prefix(name, p) for p in prefixes))
        trainable += parameter.numel() if parameter.requires_grad else 0
    return trainable


def resolve_flash_config(
    flash: FlashDistillationConfig, student: nn.Module, teacher: nn.Module
) -> FlashDistillationConfig:
    """Replace ``'auto'`` block names / mappings with :func:`auto_flash_config` for these models."""
    if not flash.is_auto:
        return flash
    steps = flash.train_steps
    auto = auto_flash_config(student, teacher, train_steps=steps if isinstance(steps, list) else int(steps))
    return dataclasses.replace(
        flash,
        block_names=auto["block_names"],
        layer_mappings=auto["layer_mappings_for_knowledge_transfer"],
        loss_types=flash.loss_types if flash.loss_types is not None else auto["loss_types"],
        train_steps=auto["train_steps"],
    )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[-60:]


def run_distillation(
    student: nn.Module,
    teacher: nn.Module,
    args: TrainingArguments,
    train_dataset: Any,
    flash_distillation: Any = None,
    regular_distillation: Any = None,
    data_collator: Callable | None = None,
    processing_class: Any = None,
    callbacks: list | None = None,
    teacher_dtype: Any = None,
    teacher_cache: Any = None,
) -> list[StageResult]:
    """Run the flash stages (one per block, in order), then the regular stage; return per-stage results.

    Either phase may be omitted. Configs are accepted in every form of
    :mod:`autodistill_trainer.distillation_config`. Stage ``i`` writes under
    ``args.output_dir/stage-XX-<kind>-<block>``. All parameters of the student train again afterwards.
    With a `teacher_cache` (:class:`~autodistill_trainer.teacher_cache.TeacherOutputCache`), stages whose
    teacher features are all cacheable read them from disk instead of running the teacher.
    """
    flash, regular = parse_distillation(flash_distillation, regular_distillation)
    if flash is None and regular is None:
        raise ConfigError("distill: give flash_distillation, regular_distillation or both.")
    stages: list[tuple[str, dict[str, Any]]] = []
    if flash is not None:
        flash = resolve_flash_config(flash, student, teacher)
        for stage in flash.stages():
            lr_scales = {}
            if flash.soft_freeze:
                for earlier in stages:
                    lr_scales.update({p: float(flash.soft_freeze) for p in earlier[1]["trainable"]})
            stages.append((
                "flash",
                {
                    "name": stage.name,
                    "trainable": stage.block_prefixes,
                    "lr_scales": lr_scales,
                    "criterion": {
                        "layer_mappings": stage.layer_mappings,
                        "loss_types": stage.loss_types,
                        "loss_weights": stage.loss_weights,
                        "add_origin_loss": stage.add_origin_loss,
                        "temperature": flash.temperature,
                    },
                    "steps": stage.train_steps,
                    "learning_rate": flash.learning_rate,
                },
            ))
    if regular is not None:
        regular = regular.validated()
        stages.append((
            "regular",
            {
                "name": "whole student",
                "trainable": None,
                "lr_scales": {},
                "criterion": {
                    "layer_mappings": regular.mappings(),
                    "loss_types": regular.loss_types,
                    "loss_weights": regular.loss_weights,
                    "add_origin_loss": regular.add_origin_loss,
                    "temperature": regular.temperature,
                },
                "steps": regular.train_steps,
                "learning_rate": regular.learning_rate,
            },
        ))

    results: list[StageResult] = []
    total = len(stages)
    try:
        for index, (kind, spec) in enumerate(stages):
            results.append(
                _run_stage(
                    student, teacher, args, train_dataset, kind, spec, index, total,
                    data_collator, processing_class, callbacks, teacher_dtype, teacher_cache,
                )
            )
    finally:
        set_trainable(student, None)
    return results


def _run_stage(
    student, teacher, args, train_dataset, kind, spec, index, total,
    data_collator, processing_class, callbacks, teacher_dtype, teacher_cache,
) -> StageResult:
    label = f"{kind} {index + 1}/{total} {spec['name']}"
    trainable = set_trainable(student, spec["trainable"] if spec["trainable"] is None else list(spec["trainable"]) + list(spec["lr_scales"]))
    stage_args = dataclasses.replace(
        args,
        max_steps=spec["steps"],
        learning_rate=spec["learning_rate"] if spec["learning_rate"] is not None else args.learning_rate,
        output_dir=os.path.join(args.output_dir, f"stage-{index:02d}-{kind}-{_slug(spec['name'])}"),
        eval_strategy="no",
        load_best_model_at_end=False,
    )
    from .trainer import DistillationTrainer  # the trainer module imports this one

    logger.info("Distillation stage %d/%d (%s): %s, %d steps", index + 1, total, kind, spec["name"], spec["steps"])
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        criterion=spec["criterion"],
        args=stage_args,
        train_dataset=train_dataset,
        data_collator=data_collator,
        processing_class=processing_class,
        callbacks=list(callbacks or []),
        teacher_dtype=teacher_dtype,
        learning_rate_scales=spec["lr_scales"],
        teacher_cache=teacher_cache,
    )
    matcher_elements = sum(p.numel() for p in trainer.criterion.feature_matchers.parameters())
    if not stage_args.disable_tqdm:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StageProgressCallback(label))
    start = time.perf_counter()
    try:
        output = trainer.train()
    finally:
        trainer.criterion.remove_hooks()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    terms = {k: v for k, v in (logs[-1] if logs else {}).items() if k not in ("loss", "grad_norm", "learning_rate", "epoch", "step")}
    result = StageResult(
        name=spec["name"], kind=kind, index=index, total=total, train_steps=output.global_step,
        train_loss=float(output.training_loss), loss_terms=terms, runtime_s=time.perf_counter() - start,
        trainable_parameters=trainable + matcher_elements,
    )
    logger.info("Stage %s done: train loss %.4f in %.1fs", label, result.train_loss, result.runtime_s)
    return result


__all__ = [
    "StageResult",
    "matches_prefix",
    "parse_flash_distillation",
    "resolve_flash_config",
    "run_distillation",
    "set_trainable",
]
