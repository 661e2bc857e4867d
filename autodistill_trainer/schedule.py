"""Run flash distillation (block by block) then regular distillation as a schedule of Trainer stages.

Each stage is a fresh :class:`~autodistill_trainer.stage_trainer.StageTrainer` over the same student and
teacher, with its own criterion, its own optimizer and LR scheduler (built by the Trainer over exactly
the parameters the stage trains: its block and its feature matchers), and ``max_steps`` set to the
stage's steps. Under ``accelerate launch`` every process runs the same stages in the same order, so
they stay in lock-step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn
from transformers import IntervalStrategy, TrainingArguments

from .auto_mappings import auto_flash_config
from .configs.distillation import FlashDistillationConfig, RegularDistillationConfig, parse_distillation
from .configs.kd_knobs import apply_kd_knobs
from .console import StageProgressCallback, label_stage_output  # noqa: F401 (StageProgressCallback: moved)
from .criterion import IntermediateLayersKnowledgeDistillationLoss
from .errors import ConfigError, did_you_mean
from .mappings import LayerMapping
from .guards import requires_grad_restored, teacher_in_dtype
from .stage_trainer import StageTrainer

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
                    f"flash_distillation.block_names: the student has no module {prefix!r}."
                    f"{did_you_mean(prefix, modules)}"
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


@dataclass
class Stage:
    """One stage of the schedule: what trains, on which criterion, for how long."""

    kind: str  # "flash" or "regular"
    name: str
    trainable: list[str] | None  # module prefixes; None: the whole student
    lr_scales: dict[str, float]
    layer_mappings: list[LayerMapping]
    loss_types: list[str]
    loss_weights: list[float] | None
    add_origin_loss: bool
    temperature: float
    steps: int
    learning_rate: float | None


def plan_stages(
    flash: FlashDistillationConfig | None,
    regular: RegularDistillationConfig | None,
    student: nn.Module,
    teacher: nn.Module,
    kd_knobs: Mapping[str, Any] | None = None,
) -> list[Stage]:
    """The stages of typed configs for these models (``auto`` resolved against them), with a trial's KD knobs
    (:mod:`~autodistill_trainer.configs.kd_knobs`: temperature, kd_weight, flash_share) applied."""
    stages: list[Stage] = []
    if flash is not None:
        flash = resolve_flash_config(flash, student, teacher)
        for stage in flash.stages():
            lr_scales: dict[str, float] = {}
            if flash.soft_freeze:
                for earlier in stages:
                    lr_scales.update({p: float(flash.soft_freeze) for p in earlier.trainable or ()})
            stages.append(Stage(
                "flash", stage.name, list(stage.block_prefixes), lr_scales, stage.layer_mappings, stage.loss_types,
                stage.loss_weights, stage.add_origin_loss, flash.temperature, stage.train_steps, flash.learning_rate,
            ))
    if regular is not None:
        regular = regular.validated()
        stages.append(Stage(
            "regular", "whole student", None, {}, regular.mappings(), regular.loss_types, regular.loss_weights,
            regular.add_origin_loss, regular.temperature, regular.train_steps, regular.learning_rate,
        ))
    return apply_kd_knobs(stages, kd_knobs)


def scale_steps(
    flash: FlashDistillationConfig | None, regular: RegularDistillationConfig | None, fraction: float
) -> tuple[FlashDistillationConfig | None, RegularDistillationConfig | None]:
    """The configs with every stage's ``train_steps`` (flash and regular together) scaled by ``fraction`` in (0, 1]:
    ``ceil(steps * fraction)``, at least 1 (a multi-fidelity rung trains this share of the full schedule)."""
    if fraction == 1:
        return flash, regular

    def scaled(steps: int) -> int:
        return max(1, math.ceil(steps * fraction - 1e-9))

    if flash is not None:
        steps = flash.train_steps
        flash = dataclasses.replace(flash, train_steps=[scaled(s) for s in steps] if isinstance(steps, list)
                                    else scaled(steps))
    if regular is not None:
        regular = dataclasses.replace(regular, train_steps=scaled(regular.train_steps))
    return flash, regular


def run_distillation(
    student: nn.Module,
    teacher: nn.Module,
    args: TrainingArguments,
    train_dataset: Any,
    flash_distillation: Mapping[str, Any] | FlashDistillationConfig | None = None,
    regular_distillation: Mapping[str, Any] | RegularDistillationConfig | None = None,
    data_collator: Callable | None = None,
    processing_class: Any = None,
    callbacks: list | None = None,
    teacher_dtype: Any = None,
    teacher_cache: Any = None,
    eval_dataset: Any = None,
    compute_metrics: Callable | None = None,
    preprocess_logits_for_metrics: Callable | None = None,
    kd_knobs: Mapping[str, Any] | None = None,
    log_label: str = "",
    labelled_fraction: float | None = None,
) -> list[StageResult]:
    """Run the flash stages (one per block, in order), then the regular stage; return per-stage results.

    Either phase may be omitted. Configs are accepted in every form of
    :func:`~autodistill_trainer.configs.parse_distillation` (parsed here, once). Stage ``i`` writes under
    ``args.output_dir/stage-XX-<kind>-<block>``. `callbacks` reach every stage's Trainer. With an `eval_dataset`,
    the regular stage evaluates as ``args.eval_strategy`` says (flash stages never evaluate); otherwise stages
    do not evaluate; either override is logged once. Each parameter's ``requires_grad`` flag (student and
    teacher) is restored afterwards. With a `teacher_cache`
    (:class:`~autodistill_trainer.teacher_cache.TeacherOutputCache`), stages whose teacher features are all
    cacheable read them from disk instead of running the teacher. A stage that leaves non-finite weights raises
    :class:`~autodistill_trainer.guards.NonFiniteParametersError` and no later stage runs. `kd_knobs` (a trial's
    temperature / kd_weight / flash_share) change the planned stages (see :func:`plan_stages`). `log_label` (e.g.
    ``trial 3``) starts each stage's log lines and progress-bar label. `labelled_fraction` (``data.labelled_fraction``)
    fixes the labelled share of every stage's training batches (:mod:`~autodistill_trainer.labelled_share`).
    """
    flash, regular = parse_distillation(flash_distillation, regular_distillation)
    if flash is None and regular is None:
        raise ConfigError("distill: give flash_distillation, regular_distillation or both.")
    teacher = teacher_in_dtype(teacher, teacher_dtype)
    stages = plan_stages(flash, regular, student, teacher, kd_knobs)
    evaluates = args.eval_strategy != IntervalStrategy.NO
    if evaluates and eval_dataset is None:
        logger.info("eval_strategy=%r is not applied in distillation stages: no eval_dataset was given.",
                    str(args.eval_strategy.value))
    elif evaluates and any(stage.kind == "flash" for stage in stages):
        logger.info("eval_strategy=%r applies to the regular stage only: flash stages do not evaluate.",
                    str(args.eval_strategy.value))
    evaluation = {"eval_dataset": eval_dataset, "compute_metrics": compute_metrics,
                  "preprocess_logits_for_metrics": preprocess_logits_for_metrics}
    results: list[StageResult] = []
    with requires_grad_restored(student, teacher):
        for index, stage in enumerate(stages):
            stage_evaluates = evaluates and eval_dataset is not None and stage.kind == "regular"
            results.append(_run_stage(
                student, teacher, args, train_dataset, stage, index, len(stages),
                data_collator=data_collator, processing_class=processing_class, callbacks=list(callbacks or []),
                teacher_cache=teacher_cache, step_offset=sum(r.train_steps for r in results), log_label=log_label,
                labelled_fraction=labelled_fraction, **(evaluation if stage_evaluates else {}),
            ))
    return results


def _run_stage(
    student: nn.Module, teacher: nn.Module, args: TrainingArguments, train_dataset: Any, stage: Stage, index: int,
    total: int, step_offset: int = 0, log_label: str = "", labelled_fraction: float | None = None,
    **trainer_kwargs: Any,
) -> StageResult:
    label, prefix = f"{stage.kind} {index + 1}/{total} {stage.name}", f"{log_label}: " if log_label else ""
    trainable = set_trainable(student, None if stage.trainable is None else stage.trainable + list(stage.lr_scales))
    overrides: dict[str, Any] = {}
    if trainer_kwargs.get("eval_dataset") is None:
        overrides = {"eval_strategy": IntervalStrategy.NO, "load_best_model_at_end": False}
    stage_args = dataclasses.replace(
        args,
        max_steps=stage.steps,
        learning_rate=stage.learning_rate if stage.learning_rate is not None else args.learning_rate,
        output_dir=os.path.join(args.output_dir, f"stage-{index:02d}-{stage.kind}-{_slug(stage.name)}"),
        **overrides,
    )
    logger.info("%sDistillation stage %d/%d (%s): %s, %d steps", prefix, index + 1, total, stage.kind, stage.name,
                stage.steps)
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        student, teacher, stage.layer_mappings, loss_types=stage.loss_types, loss_weights=stage.loss_weights,
        temperature=stage.temperature, add_origin_loss=stage.add_origin_loss,
    )
    trainer = StageTrainer(model=student, teacher_model=teacher, criterion=criterion, args=stage_args,
                           train_dataset=train_dataset, learning_rate_scales=stage.lr_scales, **trainer_kwargs)
    trainer.log_step_offset = step_offset  # logs continue the trial's step count across its stages
    trainer.labelled_fraction = labelled_fraction  # None: the Trainer's sampler
    matcher_elements = sum(p.numel() for p in criterion.feature_matchers.parameters())
    label_stage_output(trainer, f"{log_label} {label}".strip())  # labelled bar or log lines; no end-of-train dict
    start = time.perf_counter()
    try:
        output = trainer.train()
    finally:
        criterion.remove_hooks()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    terms = {k: v for k, v in (logs[-1] if logs else {}).items() if k not in _LOG_BOOKKEEPING}
    result = StageResult(
        name=stage.name, kind=stage.kind, index=index, total=total, train_steps=output.global_step,
        train_loss=float(output.training_loss), loss_terms=terms, runtime_s=time.perf_counter() - start,
        trainable_parameters=trainable + matcher_elements,
    )
    logger.info("%sStage %s done: train loss %.4f in %.1fs", prefix, label, result.train_loss, result.runtime_s)
    return result


#: Entries of a training log that are not loss terms.
_LOG_BOOKKEEPING = ("loss", "grad_norm", "learning_rate", "epoch", "step")

__all__ = [
    "Stage",
    "StageResult",
    "matches_prefix",
    "plan_stages",
    "resolve_flash_config",
    "run_distillation",
    "scale_steps",
    "set_trainable",
]
