"""IntermediateLayersKnowledgeDistillationLoss and the feature losses."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, MobileBertForSequenceClassification

from autodistill_trainer import (
    ConfigError,
    FeatureLoss,
    IntermediateLayersKnowledgeDistillationLoss,
    LOSS_REGISTRY,
    register_loss,
)
from autodistill_trainer.criterion import average_heads
from autodistill_trainer.losses import KLDivergenceLoss, MSEFeatureLoss, SoftCrossEntropyLoss
from helpers import random_batch, tiny_bert_config, tiny_mobilebert_config
from helpers import mobilebert_block_mappings

BERT_SELF_MAPPINGS = [
    ("bert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1"),
    ("bert.encoder.layer.1.output", "bert.encoder.layer.1.output"),
    ("classifier", "classifier"),
]


def step_loss(criterion, student, batch):
    student(**batch)
    criterion.teacher_model_forward(batch)
    return criterion.loss_cal()


def test_identical_student_and_teacher_give_zero_loss(bert_teacher):
    student = copy.deepcopy(bert_teacher).eval()
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        student, bert_teacher, BERT_SELF_MAPPINGS, ["KL", "MSE", "KL"]
    )
    loss = step_loss(criterion, student, random_batch())
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert set(criterion.last_loss_terms) == set(criterion.loss_names)


def test_padding_does_not_change_the_loss(bert_teacher, mobilebert_student):
    mobilebert_student.eval()
    mappings = mobilebert_block_mappings(0) + [("classifier", "classifier")]
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mappings, ["KL", "MSE", "KL"]
    )
    batch = random_batch(batch_size=3, seq_len=8, pad_last=0, with_labels=False)
    padded = {
        "input_ids": torch.cat([batch["input_ids"], torch.zeros(3, 5, dtype=torch.long)], 1),
        "attention_mask": torch.cat([batch["attention_mask"], torch.zeros(3, 5, dtype=torch.long)], 1),
    }
    with torch.no_grad():
        plain = step_loss(criterion, mobilebert_student, batch)
        plain_terms = dict(criterion.last_loss_terms)
        with_padding = step_loss(criterion, mobilebert_student, padded)
    assert with_padding.item() == pytest.approx(plain.item(), rel=1e-5, abs=1e-7)
    for name, value in criterion.last_loss_terms.items():
        assert value.item() == pytest.approx(plain_terms[name].item(), rel=1e-5, abs=1e-7), name


def test_attention_kl_sums_over_keys_and_averages_real_query_rows():
    torch.manual_seed(0)
    s = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    t = torch.softmax(torch.randn(2, 3, 4, 4), -1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool()[:, None, :]
    loss = KLDivergenceLoss(inputs_are_probabilities=True)(s, t, mask)
    per_row = (t * (t.log() - s.log())).sum(-1)  # (B, H, L)
    expected = (per_row[0, :, :3].sum() + per_row[1].sum()) / (9 + 12)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Not the element-wise mean of torch's kl_div:
    elementwise = (t * (t.log() - s.log())).mean()
    assert loss.item() != pytest.approx(elementwise.item(), rel=1e-2)


def test_logit_kl_uses_temperature_and_scales_by_its_square():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    loss = KLDivergenceLoss(temperature=2.0)(s, t)
    expected = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    ce = SoftCrossEntropyLoss(temperature=2.0)(s, t)
    expected_ce = -(F.softmax(t / 2, -1) * F.log_softmax(s / 2, -1)).sum(-1).mean() * 4
    assert ce.item() == pytest.approx(expected_ce.item(), rel=1e-6)


def test_mse_ignores_padded_token_positions():
    s, t = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    t[0, 2] = 100.0  # a padded position with a huge error
    mask = torch.tensor([[1, 1, 0]]).bool()
    assert MSEFeatureLoss()(s, t, mask).item() == pytest.approx(1.0)


def test_probabilities_or_logits_is_decided_once_at_set_up(bert_teacher, mobilebert_student):
    mappings = mobilebert_block_mappings(0) + [("classifier", "classifier")]
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mappings, ["KL", "MSE", "KL"]
    )
    assert criterion.inputs_are_probabilities == [True, False, False]
    assert [f.inputs_are_probabilities for f in criterion.loss_funcs] == [True, False, False]


def test_width_mismatch_creates_a_trainable_linear_matcher_at_set_up(bert_teacher, mobilebert_student):
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mobilebert_block_mappings(1), ["KL", "MSE"]
    )
    assert list(criterion.feature_matchers.keys()) == ["1"]
    matcher = criterion.feature_matchers["1"]
    assert isinstance(matcher, torch.nn.Linear)
    assert (matcher.in_features, matcher.out_features) == (16, 32)  # student hidden 16, teacher hidden 32
    loss = step_loss(criterion, mobilebert_student, random_batch())
    loss.backward()
    assert matcher.weight.grad is not None and matcher.weight.grad.abs().sum() > 0


def test_head_mismatch_averages_the_larger_side_in_contiguous_groups():
    maps = torch.softmax(torch.randn(2, 4, 5, 5), -1)
    averaged = average_heads(maps, 2)
    assert torch.allclose(averaged[:, 0], maps[:, 0:2].mean(1))
    assert torch.allclose(averaged[:, 1], maps[:, 2:4].mean(1))
    assert torch.allclose(averaged.sum(-1), torch.ones(2, 2, 5))


def test_head_counts_that_do_not_divide_are_both_averaged_to_one_map(bert_teacher):
    student = BertForSequenceClassification(
        tiny_bert_config(num_attention_heads=8, hidden_size=24, intermediate_size=48)
    )
    teacher = BertForSequenceClassification(
        tiny_bert_config(num_attention_heads=2, hidden_size=24, intermediate_size=48)
    )
    # 8 student heads vs 2 teacher heads -> the student is averaged; 3 vs 2 -> both
    mapping = [("bert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1")]
    assert IntermediateLayersKnowledgeDistillationLoss(student, teacher, mapping, ["KL"]).head_alignment == ["student"]
    student3 = BertForSequenceClassification(
        tiny_bert_config(num_attention_heads=3, hidden_size=24, intermediate_size=48)
    )
    criterion = IntermediateLayersKnowledgeDistillationLoss(student3, teacher, mapping, ["KL"])
    assert criterion.head_alignment == ["both"]
    assert torch.isfinite(step_loss(criterion, student3, random_batch()))


def test_sdpa_model_is_switched_to_eager_for_attention_maps(caplog):
    teacher = BertForSequenceClassification(tiny_bert_config(attn_implementation="sdpa")).eval()
    student = copy.deepcopy(teacher)
    mapping = [("bert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1")]
    with caplog.at_level(logging.WARNING):
        criterion = IntermediateLayersKnowledgeDistillationLoss(student, teacher, mapping, ["KL"])
    assert teacher.config._attn_implementation == "eager"
    assert student.config._attn_implementation == "eager"
    assert "switched it to eager attention" in caplog.text
    assert torch.isfinite(step_loss(criterion, student, random_batch()))


def test_mapped_student_attention_has_no_dropout_until_hooks_are_removed(bert_teacher, mobilebert_student):
    module = mobilebert_student.mobilebert.encoder.layer[0].attention.self
    assert module.dropout.p == pytest.approx(0.1)
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mobilebert_block_mappings(0), ["KL", "MSE"]
    )
    assert module.dropout.p == 0.0
    assert mobilebert_student.mobilebert.encoder.layer[1].attention.self.dropout.p == pytest.approx(0.1)
    criterion.remove_hooks()
    assert module.dropout.p == pytest.approx(0.1)


def test_features_do_not_outlive_a_step_and_hooks_can_be_removed(bert_teacher, mobilebert_student):
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mobilebert_block_mappings(0), ["KL", "MSE"]
    )
    assert criterion.student_features == {} and criterion.teacher_features == {}
    batch = random_batch()
    mobilebert_student(**batch)
    criterion.teacher_model_forward(batch)
    # two raw student features plus the matched (Linear 16 -> 32) layer output
    assert len(criterion.student_features) == 3 and len(criterion.teacher_features) == 2
    criterion.loss_cal()
    assert criterion.student_features == {} and criterion.teacher_features == {}
    criterion.remove_hooks()
    mobilebert_student(**batch)
    assert criterion.student_features == {}


def test_teacher_forward_runs_in_eval_mode_without_grad(bert_teacher, mobilebert_student):
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, [("classifier", "classifier")], ["KL"]
    )
    bert_teacher.train()
    criterion.teacher_model_forward(random_batch())
    assert not bert_teacher.training
    (logits,) = criterion.teacher_features.values()
    assert not logits.requires_grad
    assert criterion.attention_mask is not None


def test_teacher_forward_stops_after_the_last_needed_layer(bert_teacher, mobilebert_student):
    ran = []
    bert_teacher.bert.encoder.layer[1].register_forward_hook(lambda *a: ran.append("layer1"))
    bert_teacher.classifier.register_forward_hook(lambda *a: ran.append("classifier"))
    early = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mobilebert_block_mappings(0), ["KL", "MSE"]
    )
    ran.clear()
    assert early.teacher_model_forward(random_batch()) is None
    assert ran == [] and len(early.teacher_features) == 2
    full = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mobilebert_block_mappings(0), ["KL", "MSE"], early_stop_teacher=False
    )
    ran.clear()
    assert full.teacher_model_forward(random_batch()).logits.shape == (4, 2)
    assert ran == ["layer1", "classifier"]


def test_default_weights_are_one_over_the_number_of_mappings(bert_teacher, mobilebert_student):
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mobilebert_block_mappings(0), ["KL", "MSE"]
    )
    assert criterion.loss_weights == [0.5, 0.5]
    loss = step_loss(criterion, mobilebert_student, random_batch())
    terms = list(criterion.last_loss_terms.values())
    assert loss.item() == pytest.approx(0.5 * terms[0].item() + 0.5 * terms[1].item(), rel=1e-5)


def test_the_three_mapping_forms_are_equivalent(bert_teacher, mobilebert_student):
    s, t = "mobilebert.encoder.layer.0.attention.self", "bert.encoder.layer.0.attention.self"
    forms = [[(s, "1", t, "1")], [[(s, "1"), (t, "1")]], [[s, "1", t, "1"]]]
    parsed = [
        IntermediateLayersKnowledgeDistillationLoss(mobilebert_student, bert_teacher, f, ["KL"]).layer_mappings
        for f in forms
    ]
    assert parsed[0] == parsed[1] == parsed[2]
    assert parsed[0][0].student_process == "1"


def test_output_process_can_be_a_key_or_a_callable(bert_teacher, mobilebert_student):
    by_key = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, [("", "logits", "", "logits")], ["KL"]
    )
    by_fn = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, [("classifier", lambda o: o * 1.0, "classifier", None)], ["KL"]
    )
    batch = random_batch()
    mobilebert_student.eval()
    assert step_loss(by_key, mobilebert_student, batch).item() == pytest.approx(
        step_loss(by_fn, mobilebert_student, batch).item(), rel=1e-5
    )


def test_user_registered_loss_is_usable_by_name(bert_teacher, mobilebert_student):
    @register_loss("Zero")
    class ZeroLoss(FeatureLoss):
        def per_position(self, student, teacher):
            return (student - teacher).sum(-1) * 0.0

    try:
        criterion = IntermediateLayersKnowledgeDistillationLoss(
            mobilebert_student, bert_teacher, [("classifier", "classifier")], ["zero"]
        )
        assert isinstance(criterion.loss_funcs[0], ZeroLoss)
        assert step_loss(criterion, mobilebert_student, random_batch()).item() == 0.0
    finally:
        LOSS_REGISTRY.pop("ZERO")


@pytest.mark.parametrize(
    "mappings, loss_types, weights, message",
    [
        (
            [("mobilebert.encoder.layer.0.atention.self", "bert.encoder.layer.0.attention.self")],
            ["MSE"],
            None,
            "student has no module named 'mobilebert.encoder.layer.0.atention.self'",
        ),
        (
            [("classifier", "bert.encoder.layer.7.output")],
            ["MSE"],
            None,
            "Did you mean: 'bert.encoder.layer.1.output', 'bert.encoder.layer.0.output'",
        ),
        (
            [("mobilebert.encoder.layer.0.attention.self", "5", "bert.encoder.layer.0.attention.self", "1")],
            ["KL"],
            None,
            "output index 5 does not exist; the module returns a tuple of 2 items",
        ),
        ([("", "logitz", "", "logits")], ["KL"], None, "output key 'logitz' does not exist"),
        ([("classifier", "classifier")], ["KL", "MSE"], None, "loss_types has 2 entries but layer_mappings has 1"),
        ([("classifier", "classifier")], ["KL"], [0.5, 0.5], "loss_weights has 2 entries but layer_mappings has 1"),
        ([("classifier", "classifier")], ["KLD"], None, "unknown loss type 'KLD'"),
        (
            [("mobilebert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.output", None)],
            ["MSE"],
            None,
            "no matcher can bridge a different number of dimensions",
        ),
        (
            [("mobilebert.encoder.layer.0.attention.self", "bert.encoder.layer.0.attention.self")],
            ["MSE"],
            None,
            "is a tuple, not a tensor",
        ),
        ([("classifier",)], ["MSE"], None, "a mapping has 2 items"),
        ([], ["MSE"], None, "expected a non-empty list of layer mappings"),
    ],
)
def test_bad_input_fails_at_construction_with_a_clear_message(
    bert_teacher, mobilebert_student, mappings, loss_types, weights, message
):
    with pytest.raises(ConfigError) as error:
        IntermediateLayersKnowledgeDistillationLoss(mobilebert_student, bert_teacher, mappings, loss_types, weights)
    assert message in str(error.value)


def test_shapes_no_matcher_can_bridge_are_rejected(bert_teacher):
    student = MobileBertForSequenceClassification(tiny_mobilebert_config(num_labels=3))
    with pytest.raises(ConfigError, match="only bridges the last"):
        IntermediateLayersKnowledgeDistillationLoss(
            student,
            bert_teacher,
            [
                ("mobilebert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1"),
                (
                    "mobilebert.encoder.layer.1.attention.self",
                    "1",
                    "bert.encoder.layer.1.attention.self",
                    lambda o: o[1][..., :4],
                ),
            ],
            ["KL", "KL"],
        )


def test_matchers_and_losses_work_on_real_positions_only(bert_teacher, mobilebert_student):
    criterion = IntermediateLayersKnowledgeDistillationLoss(
        mobilebert_student, bert_teacher, mobilebert_block_mappings(0), ["KL", "MSE"]
    )
    seen = []
    criterion.feature_matchers["1"].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    batch = random_batch(batch_size=4, seq_len=10, pad_last=3)  # 40 positions, 3 of them padding
    criterion.teacher_model_forward(batch)
    mobilebert_student(**batch)
    criterion.loss_cal()
    assert seen == [(37, 16)]
