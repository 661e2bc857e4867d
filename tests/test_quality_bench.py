"""bench/quality.py's variants: ``+hid`` adds hidden-state KD (layer outputs, MSE, linear matchers) to the regular
stage, ``+lfNN`` a labelled share; unknown suffixes are refused."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertForSequenceClassification, MobileBertForSequenceClassification

from autodistill_trainer.configs import parse_distillation
from autodistill_trainer.schedule import plan_stages, run_distillation
from helpers import tiny_bert_config, tiny_mobilebert_config, token_dataset

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def quality():
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("quality")
    finally:
        sys.path.remove(str(BENCH))


def _models(student_layers: int = 4, teacher_layers: int = 6):
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=teacher_layers)).eval()
    student = MobileBertForSequenceClassification(tiny_mobilebert_config(num_hidden_layers=student_layers))
    return student, teacher


def test_hid_adds_one_mse_mapping_per_student_layer_to_its_uniformly_mapped_teacher_layer(quality):
    student, teacher = _models()
    _, regular = parse_distillation(None, {"layer_mappings_for_knowledge_transfer": [["classifier", "classifier"]],
                                           "loss_types": ["KL"], "temperature": 2.0})
    overrides = quality.hidden_state_overrides(regular, student, teacher)
    assert overrides["layer_mappings"] == [
        ["classifier", "classifier"],
        *[(f"mobilebert.encoder.layer.{i}.output", f"bert.encoder.layer.{t}.output") for i, t in
          enumerate([1, 2, 3, 5])],  # uniform_layer_map(4, 6)
    ]
    assert overrides["loss_types"] == ["KL", "MSE", "MSE", "MSE", "MSE"]
    assert overrides["loss_weights"] == [1.0, 0.25, 0.25, 0.25, 0.25]  # logit KD keeps its weight


def test_a_regular_stage_with_hid_trains_every_term_through_linear_matchers(quality, tmp_path):
    import dataclasses

    from transformers import TrainingArguments

    from helpers import pad_collator

    student, teacher = _models(student_layers=2, teacher_layers=4)
    _, regular = parse_distillation(None, {"train_steps": 2})
    regular = dataclasses.replace(regular, **quality.hidden_state_overrides(regular, student, teacher, weight=2.0))
    stage = plan_stages(None, regular, student, teacher)[0]
    assert stage.loss_weights == [1.0, 1.0, 1.0] and stage.loss_types == ["KL", "MSE", "MSE"]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, logging_steps=1,
                             report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    results = run_distillation(student, teacher, args, token_dataset(n=8), regular_distillation=regular,
                               data_collator=pad_collator)
    terms = results[-1].loss_terms
    hidden = [name for name in terms if "encoder.layer" in name]
    assert len(hidden) == 2 and all(terms[name] > 0 for name in hidden), terms  # 16-wide student, 32-wide teacher


@pytest.mark.parametrize("variant", ["kd+bogus", "kd+lf", "kd+lfhalf"])
def test_an_unknown_variant_suffix_is_refused(quality, variant):
    task = object.__new__(quality.Task)  # run() checks the suffixes before touching the task's data
    with pytest.raises(SystemExit, match="unknown suffix"):
        task.run(variant, {}, 1e-3, 1)
