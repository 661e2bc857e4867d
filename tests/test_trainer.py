"""DistillationTrainer: loss wiring, matchers, accumulation, logs, export."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import MobileBertForSequenceClassification, TrainingArguments

from autodistill_trainer import DistillationTrainer, IntermediateLayersKnowledgeDistillationLoss
from autodistill_trainer.stage_trainer import MATCHERS_ATTRIBUTE
from helpers import RandomTextClassification, mobilebert_block_mappings


def make_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def block_criterion(student, teacher, add_origin_loss=True):
    return {
        "layer_mappings": mobilebert_block_mappings(0) + [("classifier", "classifier")],
        "loss_types": ["KL", "MSE", "KL"],
        "add_origin_loss": add_origin_loss,
    }


def test_matchers_receive_optimizer_updates_and_teacher_stays_fixed(tmp_path, bert_teacher, mobilebert_student):
    teacher_before = copy.deepcopy(bert_teacher.state_dict())
    trainer = DistillationTrainer(
        model=mobilebert_student, teacher_model=bert_teacher,
        criterion=block_criterion(mobilebert_student, bert_teacher),
        args=make_args(tmp_path), train_dataset=RandomTextClassification(16),
    )
    matcher = trainer.criterion.feature_matchers["1"]
    before = matcher.weight.detach().clone()
    trainer.train()
    optimizer_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert id(matcher.weight) in optimizer_params
    assert not torch.allclose(before, matcher.weight)
    assert not bert_teacher.training
    assert all(p.requires_grad for p in bert_teacher.parameters())  # the caller's flags, restored after train()
    for name, value in bert_teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    # the matchers are not left on the student after training
    assert getattr(mobilebert_student, MATCHERS_ATTRIBUTE, None) is None


def test_each_loss_term_appears_in_the_logs(tmp_path, bert_teacher, mobilebert_student):
    trainer = DistillationTrainer(
        model=mobilebert_student, teacher_model=bert_teacher,
        criterion=block_criterion(mobilebert_student, bert_teacher),
        args=make_args(tmp_path, max_steps=2), train_dataset=RandomTextClassification(16),
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    expected = {"origin_loss", *trainer.criterion.loss_names}
    for entry in logs:
        assert expected <= set(entry)
        # with one step per log, the logged loss is exactly origin + weighted terms
        weighted = sum(w * entry[n] for w, n in zip(trainer.criterion.loss_weights, trainer.criterion.loss_names))
        assert entry["loss"] == pytest.approx(entry["origin_loss"] + weighted, rel=1e-3)


def test_origin_loss_is_left_out_when_add_origin_loss_is_off(tmp_path, bert_teacher, mobilebert_student):
    trainer = DistillationTrainer(
        model=mobilebert_student, teacher_model=bert_teacher,
        criterion=block_criterion(mobilebert_student, bert_teacher, add_origin_loss=False),
        args=make_args(tmp_path, max_steps=1), train_dataset=RandomTextClassification(8),
    )
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "loss" in e)
    assert "origin_loss" not in entry


def _one_update(tmp_path, student, teacher, batch_size, accumulation):
    args = make_args(
        tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation, max_steps=1,
        optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", warmup_steps=0,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, criterion=block_criterion(student, teacher), args=args,
        train_dataset=RandomTextClassification(8, seq_len=12, seed=3),
    )
    trainer.train()
    return {k: v.detach().clone() for k, v in student.state_dict().items()}, trainer.criterion.feature_matchers


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, bert_teacher):
    from helpers import tiny_mobilebert_config

    config = tiny_mobilebert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    torch.manual_seed(5)
    base = MobileBertForSequenceClassification(config)
    big, big_matchers = _one_update(tmp_path / "a", copy.deepcopy(base), bert_teacher, batch_size=8, accumulation=1)
    small, small_matchers = _one_update(tmp_path / "b", copy.deepcopy(base), bert_teacher, batch_size=4, accumulation=2)
    changed = [k for k in big if not torch.equal(big[k], base.state_dict()[k])]
    assert changed, "the update changed nothing"
    for key in big:
        assert torch.allclose(big[key], small[key], atol=1e-6), key


def test_save_model_writes_a_plain_student_and_checkpoints_keep_matchers(tmp_path, bert_teacher, mobilebert_student):
    trainer = DistillationTrainer(
        model=mobilebert_student, teacher_model=bert_teacher,
        criterion=block_criterion(mobilebert_student, bert_teacher),
        args=make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=RandomTextClassification(8),
    )
    trainer.train()
    checkpoint = load_file(os.path.join(trainer.args.output_dir, "checkpoint-2", "model.safetensors"))
    assert any(k.startswith(MATCHERS_ATTRIBUTE) for k in checkpoint)

    export = tmp_path / "student"
    trainer.save_model(str(export))
    weights = load_file(str(export / "model.safetensors"))
    assert not any(MATCHERS_ATTRIBUTE in k for k in weights)
    reloaded = MobileBertForSequenceClassification.from_pretrained(str(export))
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, mobilebert_student.state_dict()[name]), name


def test_evaluate_runs_only_the_student(tmp_path, bert_teacher, mobilebert_student):
    calls = []
    bert_teacher.register_forward_hook(lambda *a: calls.append(1))
    trainer = DistillationTrainer(
        model=mobilebert_student, teacher_model=bert_teacher,
        criterion=block_criterion(mobilebert_student, bert_teacher),
        args=make_args(tmp_path, per_device_eval_batch_size=4), eval_dataset=RandomTextClassification(8),
    )
    calls.clear()
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and calls == []
    assert trainer.criterion.student_features == {}


def test_a_prebuilt_criterion_and_teacher_dtype_are_accepted(tmp_path, bert_teacher, mobilebert_student):
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, [("classifier", "classifier")], ["KL"]
    )
    trainer = DistillationTrainer(
        model=mobilebert_student, teacher_model=bert_teacher, criterion=criterion, teacher_dtype="bfloat16",
        args=make_args(tmp_path, max_steps=1), train_dataset=RandomTextClassification(8),
    )
    trainer.train()
    assert next(trainer.teacher_model.parameters()).dtype == torch.bfloat16
    assert trainer.criterion is criterion


def test_default_criterion_distils_output_logits(tmp_path, bert_teacher, mobilebert_student):
    trainer = DistillationTrainer(
        model=mobilebert_student, teacher_model=bert_teacher, args=make_args(tmp_path, max_steps=1),
        train_dataset=RandomTextClassification(8),
    )
    assert trainer.criterion.loss_types == ["KL"] and trainer.criterion.add_origin_loss
    trainer.train()
    (entry,) = [e for e in trainer.state.log_history if "loss" in e]
    assert entry["KL:logits"] > 0 and entry["origin_loss"] > 0
    assert entry["loss"] == pytest.approx(entry["origin_loss"] + entry["KL:logits"], rel=1e-3)
