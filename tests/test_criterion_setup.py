"""Criterion set-up: probabilities in low precision, the dropout on mapped maps, the teacher's early stop,
and the caller's models left as given."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import AlbertConfig, AlbertForSequenceClassification, BertForSequenceClassification

from autodistill_trainer import ConfigError, IntermediateLayersKnowledgeDistillationLoss
from autodistill_trainer.criterion_setup import is_probability_tensor
from helpers import random_batch, tiny_bert_config

SELF_ATTENTION = ("bert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1")
PARENT_ATTENTION = ("bert.encoder.layer.0.attention", "1", "bert.encoder.layer.0.attention", "1")


def step_loss(criterion, student, batch):
    student(**batch)
    criterion.teacher_model_forward(batch)
    return criterion.loss_cal()


def attention_kl_by_hand(student, teacher, batch):
    """Attention KL of layer 0 computed from both models' own attention maps (real query rows only)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s = student(**inputs, output_attentions=True).attentions[0].double()
        t = teacher(**inputs, output_attentions=True).attentions[0].double()
    per_row = (torch.xlogy(t, t) - torch.xlogy(t, s.clamp_min(1e-12))).sum(-1)  # (B, H, L)
    mask = batch["attention_mask"].bool()[:, None, :].expand_as(per_row)
    return per_row[mask].mean().item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_maps_of_a_low_precision_teacher_are_probabilities(dtype):
    torch.manual_seed(0)  # a wide initialisation: sharp attention maps that differ between the two models
    teacher = BertForSequenceClassification(tiny_bert_config(initializer_range=1.0)).eval().to(dtype)
    torch.manual_seed(1)
    student = BertForSequenceClassification(tiny_bert_config(initializer_range=1.0)).eval()
    criterion = IntermediateLayersKnowledgeDistillationLoss(student, teacher, [SELF_ATTENTION], ["KL"])
    assert criterion.inputs_are_probabilities == [True]
    assert criterion.loss_funcs[0].inputs_are_probabilities
    batch = random_batch()
    with torch.no_grad():
        loss = step_loss(criterion, student, batch)
    expected = attention_kl_by_hand(student, teacher, batch)
    assert expected > 1e-3  # different models: a KL a log_softmax of probabilities would shrink ~100x
    assert loss.item() == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_probability_decision_tolerates_the_rounding_of_the_tensor_dtype(dtype):
    torch.manual_seed(0)
    for length in (8, 128, 512):
        maps = torch.softmax(torch.randn(2, 4, length, length) * 3, -1).to(dtype)
        assert is_probability_tensor(maps), (dtype, length)
    logits = torch.randn(4, 8, 32).to(dtype)
    assert not is_probability_tensor(logits)
    assert not is_probability_tensor(logits.abs())  # non-negative, but rows do not sum to 1
    assert not is_probability_tensor(torch.full((4, 10), 0.2).to(dtype))  # rows sum to 2
    assert not is_probability_tensor(torch.ones(3, 1, dtype=torch.long))


def test_mapping_the_parent_attention_module_switches_off_the_dropout_on_its_maps():
    torch.manual_seed(0)
    config = tiny_bert_config(attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0)
    teacher = BertForSequenceClassification(config).eval()
    student = copy.deepcopy(teacher).train()
    criterion = IntermediateLayersKnowledgeDistillationLoss(student, teacher, [PARENT_ATTENTION], ["KL"])
    dropout = student.bert.encoder.layer[0].attention.self.dropout
    assert dropout.p == 0.0
    student.bert.encoder.layer[0].attention.output.dropout.p = 0.2
    criterion.remove_hooks()
    criterion = IntermediateLayersKnowledgeDistillationLoss(student, teacher, [PARENT_ATTENTION], ["KL"])
    assert student.bert.encoder.layer[0].attention.output.dropout.p == pytest.approx(0.2)  # hidden dropout kept
    student.bert.encoder.layer[0].attention.output.dropout.p = 0.0
    assert student.bert.encoder.layer[1].attention.self.dropout.p == pytest.approx(0.5)  # not mapped
    loss = step_loss(criterion, student, random_batch())  # train mode
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    criterion.remove_hooks()
    assert dropout.p == pytest.approx(0.5)


def test_a_second_criterion_keeps_the_dropout_off_until_both_are_removed(bert_teacher, mobilebert_student):
    mapping = [("mobilebert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1")]
    dropout = mobilebert_student.mobilebert.encoder.layer[0].attention.self.dropout
    first = IntermediateLayersKnowledgeDistillationLoss(mobilebert_student, bert_teacher, mapping, ["KL"])
    second = IntermediateLayersKnowledgeDistillationLoss(mobilebert_student, bert_teacher, mapping, ["KL"])
    first.remove_hooks()
    assert dropout.p == 0.0
    second.remove_hooks()
    second.remove_hooks()  # idempotent
    assert dropout.p == pytest.approx(0.1)


def test_removing_hooks_restores_the_attention_implementation_it_switched():
    teacher = BertForSequenceClassification(tiny_bert_config(attn_implementation="sdpa")).eval()
    student = copy.deepcopy(teacher)
    criterion = IntermediateLayersKnowledgeDistillationLoss(student, teacher, [SELF_ATTENTION], ["KL"])
    assert teacher.config._attn_implementation == student.config._attn_implementation == "eager"
    second = IntermediateLayersKnowledgeDistillationLoss(student, teacher, [SELF_ATTENTION], ["KL"])
    criterion.remove_hooks()
    assert student.config._attn_implementation == "eager"  # the second criterion still needs the maps
    assert torch.isfinite(step_loss(second, student, random_batch()))
    second.remove_hooks()
    assert teacher.config._attn_implementation == student.config._attn_implementation == "sdpa"
    assert student.bert.encoder.layer[0].attention.self.dropout.p == pytest.approx(0.1)


def test_a_rejected_mapping_leaves_no_hook_and_no_change_on_the_models():
    teacher = BertForSequenceClassification(tiny_bert_config(attn_implementation="sdpa")).eval()
    student = copy.deepcopy(teacher)
    bad = [SELF_ATTENTION, ("bert.encoder.layer.0.attention.self", "bert.encoder.layer.0.attention.self")]
    with pytest.raises(Exception, match="not a tensor"):
        IntermediateLayersKnowledgeDistillationLoss(student, teacher, bad, ["KL", "MSE"])
    assert student.config._attn_implementation == teacher.config._attn_implementation == "sdpa"
    assert student.bert.encoder.layer[0].attention.self.dropout.p == pytest.approx(0.1)
    assert not student._forward_pre_hooks and not student.bert.encoder.layer[0].attention.self._forward_hooks


def tiny_albert(seed: int) -> AlbertForSequenceClassification:
    torch.manual_seed(seed)
    config = AlbertConfig(
        vocab_size=100,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=3,
        num_hidden_groups=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return AlbertForSequenceClassification(config).eval()


def test_teacher_early_stop_is_off_for_a_module_that_runs_several_times_per_forward():
    teacher, student = tiny_albert(0), tiny_albert(1)
    shared = "albert.encoder.albert_layer_groups.0"
    criterion = IntermediateLayersKnowledgeDistillationLoss(student, teacher, [(shared, shared)], ["MSE"])
    batch = {k: v for k, v in random_batch().items() if k != "labels"}
    criterion.teacher_model_forward(batch)
    captured = criterion.teacher_features[(shared, "None")]
    with torch.no_grad():
        hidden_states = teacher(**batch, output_hidden_states=True).hidden_states
    assert torch.equal(captured, hidden_states[3])  # the last of the 3 calls, not hidden_states[1]
    assert not torch.equal(captured, hidden_states[1])
    assert criterion.teacher_stop_key is None


def test_teacher_early_stop_stays_on_after_a_module_that_runs_once(bert_teacher, mobilebert_student):
    mapping = [("mobilebert.encoder.layer.0.output", "bert.encoder.layer.0.output")]
    criterion = IntermediateLayersKnowledgeDistillationLoss(mobilebert_student, bert_teacher, mapping, ["MSE"])
    assert criterion.teacher_stop_key == ("bert.encoder.layer.0.output", "None")
    assert criterion.teacher_model_forward(random_batch()) is None


class TinySelfAttention(torch.nn.Module):
    """Attention maps with their dropout held under `dropout_name` (returns (hidden, maps) like Transformers):
    an ``nn.Dropout`` module, or a float probability given to the functional dropout."""

    def __init__(self, dropout_name: str, functional: bool):
        super().__init__()
        self.embed = torch.nn.Embedding(100, 8)
        self.query = torch.nn.Linear(8, 8)
        self.dropout_name, self.functional = dropout_name, functional
        setattr(self, dropout_name, 0.5 if functional else torch.nn.Dropout(0.5))

    def forward(self, input_ids, attention_mask=None):
        hidden = self.embed(input_ids)
        maps = torch.softmax(self.query(hidden) @ hidden.transpose(1, 2), -1)[:, None]
        dropout = getattr(self, self.dropout_name)
        if self.functional:
            return hidden, torch.nn.functional.dropout(maps, dropout, self.training)
        return hidden, dropout(maps)


class TinyAttentionModel(torch.nn.Module):
    def __init__(self, dropout_name: str, functional: bool = False):
        super().__init__()
        self.block = TinySelfAttention(dropout_name, functional)

    def forward(self, input_ids, attention_mask=None):
        return self.block(input_ids, attention_mask)


def test_a_dropout_that_cannot_be_switched_off_is_refused_naming_the_module():
    torch.manual_seed(0)
    student = TinyAttentionModel("drop_probs", functional=True).train()
    teacher = copy.deepcopy(student).eval()
    with pytest.raises(ConfigError, match="a dropout inside 'block' acts on them"):
        IntermediateLayersKnowledgeDistillationLoss(student, teacher, [("", "1", "", "1")], ["KL"])
    assert student.block.drop_probs == 0.5
    assert not student._forward_hooks and not student._forward_pre_hooks and not student.block._forward_hooks


@pytest.mark.parametrize("name, functional", [("drop_probs", False), ("attention_dropout", True)])
def test_the_dropout_on_the_maps_is_found_under_a_whole_model_mapping(name, functional):
    torch.manual_seed(0)
    student = TinyAttentionModel(name, functional).train()
    teacher = copy.deepcopy(student).eval()
    criterion = IntermediateLayersKnowledgeDistillationLoss(student, teacher, [("", "1", "", "1")], ["KL"])

    def probability():
        value = getattr(student.block, name)
        return value if functional else value.p

    assert probability() == 0.0
    batch = random_batch(with_labels=False)
    assert step_loss(criterion, student, batch).item() == pytest.approx(0.0, abs=1e-6)
    criterion.remove_hooks()
    assert probability() == 0.5


def test_set_up_leaves_the_global_random_state_as_it_was(bert_teacher, mobilebert_student):
    mobilebert_student.train()
    state = torch.get_rng_state()
    mappings = [("mobilebert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1"),
                ("mobilebert.encoder.layer.0.output", "bert.encoder.layer.0.output")]  # a seeded matcher too
    IntermediateLayersKnowledgeDistillationLoss(mobilebert_student, bert_teacher, mappings, ["KL", "MSE"])
    assert torch.equal(torch.get_rng_state(), state)
    assert mobilebert_student.training


def test_the_switch_to_eager_attention_is_warned_once_per_model_across_stages(caplog):
    teacher = BertForSequenceClassification(tiny_bert_config(attn_implementation="sdpa")).eval()
    student = copy.deepcopy(teacher)
    with caplog.at_level(logging.DEBUG, logger="autodistill_trainer.criterion_setup"):
        for _ in range(3):  # a schedule builds one criterion per stage, and each stage switches again
            IntermediateLayersKnowledgeDistillationLoss(student, teacher, [SELF_ATTENTION], ["KL"]).remove_hooks()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "eager attention" in r.getMessage()]
    assert [r.getMessage().split(" model")[0] for r in warnings] == ["The student", "The teacher"]
    assert teacher.config._attn_implementation == "sdpa"
