"""Teacher-output cache: one teacher pass, memory-mapped fp16 features, same losses as the live teacher."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from autodistill_trainer import DistillationTrainer, IntermediateLayersKnowledgeDistillationLoss
from autodistill_trainer.schedule import run_distillation
from autodistill_trainer.teacher_cache import TeacherCacheCollator, TeacherOutputCache, teacher_column
from helpers import pad_collator, token_dataset

LOGITS_AND_HIDDEN = [("classifier", "classifier"), ("mobilebert.encoder.layer.1.output", "bert.encoder.layer.1.output")]


def make_cache(teacher, tmp_path, **kwargs):
    return TeacherOutputCache(teacher, str(tmp_path / "cache"), pad_collator, batch_size=8, **kwargs)


def test_cached_and_live_losses_agree(tmp_path, bert_teacher, mobilebert_student):
    mobilebert_student.eval()
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, LOGITS_AND_HIDDEN, ["KL", "MSE"]
    )
    cache = make_cache(bert_teacher, tmp_path)
    dataset = cache.dataset_for(token_dataset(), criterion.layer_mappings)
    columns = [teacher_column(m) for m in criterion.layer_mappings]
    assert set(columns) <= set(dataset.column_names)
    batch = TeacherCacheCollator(pad_collator)([dataset[i] for i in range(6)])
    assert batch[columns[1]].shape == (6, batch["input_ids"].shape[1], 32) and batch[columns[1]].dtype == torch.float16
    with torch.no_grad():
        student_inputs = {k: v for k, v in batch.items() if not k.startswith("teacher_")}
        mobilebert_student(**student_inputs)
        criterion.teacher_model_forward(student_inputs)
        live = criterion.loss_cal()
        live_terms = dict(criterion.last_loss_terms)
        mobilebert_student(**student_inputs)
        criterion.attention_mask = batch["attention_mask"]
        cached = criterion.loss_cal(teacher_outputs=[batch[c] for c in columns])
    assert cached.item() == pytest.approx(live.item(), rel=2e-3)
    for name, value in criterion.last_loss_terms.items():
        assert value.item() == pytest.approx(live_terms[name].item(), rel=5e-3, abs=1e-6), name


def test_one_teacher_pass_serves_every_stage_trial_and_rerun(tmp_path, bert_teacher, mobilebert_student):
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, LOGITS_AND_HIDDEN[:1], ["KL"]
    )
    data = token_dataset()
    cache = make_cache(bert_teacher, tmp_path)
    first = cache.dataset_for(data, criterion.layer_mappings)
    cache.dataset_for(data, criterion.layer_mappings)  # a second stage or trial
    assert cache.passes == 1
    rerun = make_cache(bert_teacher, tmp_path)  # a new process: reads the Arrow file
    third = rerun.dataset_for(data, criterion.layer_mappings)
    assert rerun.passes == 0
    column = teacher_column(criterion.layer_mappings[0])
    assert torch.equal(torch.as_tensor(first[:][column]), torch.as_tensor(third[:][column]))
    files = sorted((tmp_path / "cache").glob("teacher-outputs-*.arrow"))
    assert len(files) == 1  # the one pass wrote one file, which the rerun reads
    assert [f["filename"] for f in first.cache_files] == [f["filename"] for f in third.cache_files] == [str(files[0])]
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_attention_maps_and_oversized_features_fall_back_to_the_live_teacher(
    tmp_path, bert_teacher, mobilebert_student
):
    data = token_dataset()
    attention = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student,
        bert_teacher,
        [("mobilebert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1")],
        ["KL"],
    )
    cache = make_cache(bert_teacher, tmp_path)
    assert cache.dataset_for(data, attention.layer_mappings) is data
    hidden = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, LOGITS_AND_HIDDEN[1:], ["MSE"]
    )
    tiny_budget = make_cache(bert_teacher, tmp_path, max_bytes=1000)
    assert tiny_budget.dataset_for(data, hidden.layer_mappings) is data
    assert cache.passes == 0 and tiny_budget.passes == 0


def test_a_cached_run_never_calls_the_teacher_while_training(tmp_path, bert_teacher, mobilebert_student):
    calls = []
    cache = make_cache(bert_teacher, tmp_path)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-2,
        logging_steps=1,
    )
    before = {n: p.detach().clone() for n, p in mobilebert_student.named_parameters()}
    trainer = DistillationTrainer(
        model=mobilebert_student,
        teacher_model=bert_teacher,
        args=args,
        criterion={"layer_mappings": LOGITS_AND_HIDDEN, "loss_types": ["KL", "MSE"], "add_origin_loss": True},
        train_dataset=token_dataset(),
        data_collator=pad_collator,
        teacher_cache=cache,
    )
    assert cache.passes == 0  # nothing is computed until training starts
    cache.dataset_for(token_dataset(), trainer.criterion.layer_mappings)  # e.g. an earlier trial
    bert_teacher.register_forward_hook(lambda *a: calls.append(1))
    trainer.train()
    assert calls == [] and cache.passes == 1
    assert any(not torch.equal(before[n], p) for n, p in mobilebert_student.named_parameters())
    logged = next(e for e in trainer.state.log_history if "loss" in e)
    assert "origin_loss" in logged and "KL:classifier" in logged


def test_schedule_uses_the_cache_for_regular_and_the_live_teacher_for_attention(
    tmp_path, bert_teacher, mobilebert_student
):
    calls = []
    bert_teacher.register_forward_hook(lambda *a: calls.append(1))
    cache = make_cache(bert_teacher, tmp_path)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-2,
    )
    results = run_distillation(
        mobilebert_student,
        bert_teacher,
        args,
        token_dataset(),
        data_collator=pad_collator,
        teacher_cache=cache,
        flash_distillation={"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto", "train_steps": 2},
        regular_distillation={"train_steps": 3},
    )
    assert [r.kind for r in results] == ["flash", "flash", "regular"]
    assert cache.passes == 1
    calls_after = len(calls)
    results = run_distillation(
        mobilebert_student,
        bert_teacher,
        args,
        token_dataset(),
        data_collator=pad_collator,
        teacher_cache=cache,
        regular_distillation={"train_steps": 5},
    )
    assert cache.passes == 1
    assert len(calls) - calls_after == 1  # only the criterion's set-up probe ran the teacher: no step did
