"""Task registry: what differs between text classification and pretraining distillation, in one place.

A :class:`Task` says how the CLI loads the data, collates batches, loads the teacher, which metric scores a model,
which criterion hosts the search, how the exported model is tagged, and whether the teacher-output cache applies.
``TASKS[data.task]`` (or :func:`get_task`) picks one; adding a task means adding an entry, not branches in the CLI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding, PreTrainedModel

from .data import load_pretraining_data, load_text_classification_data
from .errors import ConfigError, did_you_mean
from .teacher import finetune_teacher, load_pretraining_teacher, load_teacher

logger = logging.getLogger(__name__)

__all__ = ["Task", "TeacherSetup", "TASKS", "get_task"]


@dataclass(frozen=True)
class TeacherSetup:
    """What a task's teacher loader needs besides the recipe sections."""

    label_names: Optional[list[str]]
    train_dataset: Any
    eval_dataset: Any
    output_dir: str
    collator: Any
    tokenizer: Any
    compute_metrics: Any


@dataclass(frozen=True)
class Task:
    """One task the CLI can distil.

    Attributes:
        name: the ``data.task`` value.
        score_key: the metric that scores a model (summary, Pareto plot's y axis).
        pipeline_tag: the model card's ``pipeline_tag`` (and its usage snippet).
        caches_teacher_outputs: whether ``teacher.cache_outputs`` applies (not when the collator changes the
            inputs of every batch, as MLM masking does).
        load_data: ``(data_args, seed) -> (DatasetDict with train/validation, label names or None)``.
        build_collator: ``tokenizer -> data collator``.
        load_teacher: ``(teacher_args, setup) -> (teacher, its validation metrics or None)``; None means the caller
            evaluates it.
    """

    name: str
    score_key: str
    pipeline_tag: str
    caches_teacher_outputs: bool
    load_data: Callable[[Any, int], tuple[Any, Optional[list[str]]]]
    build_collator: Callable[[Any], Any]
    load_teacher: Callable[[Any, TeacherSetup], tuple[PreTrainedModel, Optional[dict[str, float]]]]


def _classification_data(data: Any, seed: int) -> tuple[Any, list[str]]:
    return load_text_classification_data(
        dataset_name=data.dataset_name, dataset_config_name=data.dataset_config_name, train_file=data.train_file,
        validation_file=data.validation_file, text_column=data.text_column, text_pair_column=data.text_pair_column,
        label_column=data.label_column, validation_split_size=data.validation_split_size, seed=seed,
    )


def _pretraining_data(data: Any, seed: int) -> tuple[Any, None]:
    raw = load_pretraining_data(
        dataset_name=data.dataset_name, dataset_config_name=data.dataset_config_name, train_file=data.train_file,
        validation_file=data.validation_file, text_column=data.text_column,
        validation_split_size=data.validation_split_size, seed=seed,
    )
    return raw, None


def _classification_teacher(teacher: Any, setup: TeacherSetup) -> tuple[PreTrainedModel, Optional[dict[str, float]]]:
    """A fine-tuned teacher as given, or ``teacher.pretrained_encoder`` fine-tuned once (cached in output_dir)."""
    if teacher.model_name_or_path:
        return load_teacher(teacher.model_name_or_path, setup.label_names, teacher.trust_remote_code), None
    fingerprint = f"{setup.train_dataset._fingerprint}-{setup.eval_dataset._fingerprint}"
    return finetune_teacher(
        teacher.pretrained_encoder, setup.label_names, setup.train_dataset, setup.eval_dataset, setup.output_dir,
        teacher.finetune, setup.collator, setup.tokenizer, setup.compute_metrics, fingerprint=fingerprint,
        trust_remote_code=teacher.trust_remote_code,
    )


def _pretraining_teacher(teacher: Any, setup: TeacherSetup) -> tuple[PreTrainedModel, None]:
    """A pretrained model with its MLM and next-sentence heads."""
    return load_pretraining_teacher(teacher.model_name_or_path, teacher.trust_remote_code), None


def _classification_collator(tokenizer: Any) -> Any:
    return DataCollatorWithPadding(tokenizer)


def _pretraining_collator(tokenizer: Any) -> Any:
    # masks 15% of the tokens (labels: the originals, -100 elsewhere) and keeps next_sentence_label
    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)


TASKS: dict[str, Task] = {
    "text-classification": Task(
        name="text-classification", score_key="accuracy", pipeline_tag="text-classification",
        caches_teacher_outputs=True, load_data=_classification_data, build_collator=_classification_collator,
        load_teacher=_classification_teacher,
    ),
    "pretraining": Task(
        name="pretraining", score_key="mlm_accuracy", pipeline_tag="fill-mask",
        # the collator masks tokens anew for every batch: cached teacher outputs would not match the inputs
        caches_teacher_outputs=False, load_data=_pretraining_data, build_collator=_pretraining_collator,
        load_teacher=_pretraining_teacher,
    ),
}


def get_task(name: str) -> Task:
    """The registered task called ``name`` (``data.task``)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"data.task {name!r} is not a known task.{did_you_mean(str(name), sorted(TASKS))}") from None
