"""Checks of ``transformers.TrainingArguments`` values that would only fail (or silently misbehave) when training.

``TrainingArguments`` is transformers' own dataclass (the recipe's ``auto_distillation.train`` and
``teacher.finetune``); its ``__post_init__`` checks types and combinations but accepts, e.g., a negative or
infinite learning rate, zero batch sizes and seeds that numpy refuses later.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from . import checks


def check_training_arguments(args: Any, where: str) -> None:
    """Values of a parsed ``TrainingArguments``: positive finite rates, batch sizes, steps, epochs; valid seeds.

    Raises:
        ConfigError: naming ``where.<field>``.
    """
    checks.positive_number(args.learning_rate, f"{where}.learning_rate")
    checks.non_negative_number(args.weight_decay, f"{where}.weight_decay")
    checks.non_negative_number(args.max_grad_norm, f"{where}.max_grad_norm", optional=True)
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        checks.positive_int(getattr(args, key), f"{where}.{key}")
    steps = args.max_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps == 0 or steps < -1:
        raise ConfigError(f"{where}.max_steps must be a positive number of steps (or -1 to train num_train_epochs), "
                          f"got {checks.shown(steps)}.")
    if steps == -1:
        checks.positive_number(args.num_train_epochs, f"{where}.num_train_epochs")
    for key in ("logging_steps", "eval_steps", "save_steps"):
        checks.positive_number(getattr(args, key, None), f"{where}.{key}", optional=True)
    checks.non_negative_number(args.warmup_steps, f"{where}.warmup_steps", optional=True)
    checks.seed(args.seed, f"{where}.seed")
    if args.data_seed is not None:
        checks.seed(args.data_seed, f"{where}.data_seed")
