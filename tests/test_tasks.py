"""The task registry: what text classification and pretraining distillation differ in."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, DataCollatorForLanguageModeling, DataCollatorWithPadding

from autodistill_trainer.data import offline_teacher_path
from autodistill_trainer.errors import ConfigError
from autodistill_trainer.tasks import TASKS, get_task


def test_each_task_names_its_score_card_tag_and_cache_rule():
    classification, pretraining = get_task("text-classification"), get_task("pretraining")
    assert (classification.score_key, classification.pipeline_tag, classification.caches_teacher_outputs) == (
        "accuracy", "text-classification", True)
    assert (pretraining.score_key, pretraining.pipeline_tag, pretraining.caches_teacher_outputs) == (
        "mlm_accuracy", "fill-mask", False)  # MLM masks anew every batch: cached teacher outputs would not match


def test_collators_follow_the_task():
    tokenizer = AutoTokenizer.from_pretrained(offline_teacher_path())
    assert type(TASKS["text-classification"].build_collator(tokenizer)) is DataCollatorWithPadding
    mlm = TASKS["pretraining"].build_collator(tokenizer)
    assert isinstance(mlm, DataCollatorForLanguageModeling) and mlm.mlm_probability == 0.15


def test_unknown_task_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"data.task 'pretrain' is not a known task.*'pretraining'"):
        get_task("pretrain")
