"""Range checks of ``transformers.TrainingArguments`` values (the recipe's ``auto_distillation.train`` and
``teacher.finetune``) that would only fail, or silently misbehave, when training.

``TrainingArguments``' own ``__post_init__`` checks types and combinations but accepts, e.g., a negative or infinite
learning rate, zero batch sizes and seeds that numpy refuses later. The checks run on the recipe's plain values,
before ``transformers`` is imported, so a bad value is refused in milliseconds; a value of the wrong type is left to
the typed parse, which names the expected type.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..errors import ConfigError
from . import checks


def _max_steps(value: Any, key: str) -> None:
    if value == 0 or value < -1:
        raise ConfigError(f"{key} must be a positive number of steps (or -1 to train num_train_epochs), "
                          f"got {checks.shown(value)}.")


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "learning_rate": checks.positive_number,
    "weight_decay": checks.non_negative_number,
    "max_grad_norm": checks.non_negative_number,
    "adam_beta1": checks.probability,
    "adam_beta2": checks.probability,
    "adam_epsilon": checks.positive_number,
    "num_train_epochs": checks.positive_number,
    "per_device_train_batch_size": checks.positive_int,
    "per_device_eval_batch_size": checks.positive_int,
    "gradient_accumulation_steps": checks.positive_int,
    "max_steps": _max_steps,
    "logging_steps": checks.positive_number,
    "eval_steps": checks.positive_number,
    "save_steps": checks.positive_number,
    "warmup_steps": checks.non_negative_number,
    "seed": checks.seed,
    "data_seed": checks.seed,
}


def check_training_values(values: Mapping[str, Any], where: str) -> None:
    """Check the numeric ``TrainingArguments`` values given in `values` (a recipe mapping), naming ``where.<key>``.

    Values that are not numbers (``None``, strings, lists) are skipped: their type is checked when
    ``TrainingArguments`` is built.

    Raises:
        ConfigError: a value out of range or not finite.
    """
    for key, check in _CHECKS.items():
        value = values.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check(value, f"{where}.{key}")
    if values.get("max_steps", -1) == -1 and values.get("num_train_epochs") is not None:
        checks.positive_number(values["num_train_epochs"], f"{where}.num_train_epochs")
