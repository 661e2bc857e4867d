"""Model builder and architecture validity."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    MobileBertForMaskedLM,
    MobileBertForSequenceClassification,
)

from helpers import random_batch, tiny_bert_config, tiny_mobilebert_config
from autodistill_trainer.builders import (
    apply_architecture,
    build_model,
    check_architecture,
    default_mobilebert_base_config,
    enumerate_valid_architectures,
    student_base_config,
)
from autodistill_trainer.configs.sections import DataArguments, ModelArguments
from autodistill_trainer.embedding_init import TeacherEmbeddingProjection, init_embeddings_from_teacher
from autodistill_trainer.errors import ConfigError, InvalidArchitectureError


def test_heads_not_dividing_true_hidden_size_raise_with_numbers():
    with pytest.raises(InvalidArchitectureError, match=r"num_attention_heads=3 .*true_hidden_size=8"):
        apply_architecture(tiny_mobilebert_config(), {"num_attention_heads": 3})


def test_check_architecture_rejects_a_config_built_with_bad_heads():
    with pytest.raises(InvalidArchitectureError, match="valid head counts: \\[1, 2, 4, 8\\]"):
        check_architecture(tiny_mobilebert_config(num_attention_heads=3))


def test_heads_are_checked_against_bottleneck_not_hidden_size():
    # 4 heads divide the bottleneck (8) but not hidden 18: valid, since attention runs on the bottleneck.
    config = apply_architecture(tiny_mobilebert_config(), {"hidden_size": 18, "num_attention_heads": 4})
    model = MobileBertForSequenceClassification(config).eval()
    model(**random_batch(with_labels=False))
    # 3 heads divide hidden 12 but not the bottleneck 8: invalid.
    with pytest.raises(InvalidArchitectureError, match="true_hidden_size=8"):
        apply_architecture(tiny_mobilebert_config(), {"hidden_size": 12, "num_attention_heads": 3})


def test_without_bottleneck_heads_must_divide_hidden_size():
    base = tiny_mobilebert_config(use_bottleneck=False)
    assert apply_architecture(base, {"hidden_size": 12, "num_attention_heads": 3}).true_hidden_size == 12
    with pytest.raises(InvalidArchitectureError, match="true_hidden_size=16"):
        apply_architecture(base, {"num_attention_heads": 3})


def test_bottleneck_without_shared_or_bottleneck_attention_needs_equal_widths():
    base = tiny_mobilebert_config(key_query_shared_bottleneck=False, use_bottleneck_attention=False)
    with pytest.raises(InvalidArchitectureError, match="hidden_size == intra_bottleneck_size"):
        apply_architecture(base, {})
    assert apply_architecture(base, {"hidden_size": 8}).true_hidden_size == 8


@pytest.mark.parametrize("field", ["hidden_size", "intermediate_size", "num_feedforward_networks", "num_hidden_layers"])
def test_non_positive_sizes_are_invalid(field):
    with pytest.raises(InvalidArchitectureError, match=f"{field} must be a positive integer, got 0"):
        apply_architecture(tiny_mobilebert_config(), {field: 0})


def test_bert_heads_must_divide_hidden_size():
    with pytest.raises(InvalidArchitectureError, match=r"num_attention_heads=5 does not divide hidden_size=32"):
        apply_architecture(tiny_bert_config(), {"num_attention_heads": 5})
    assert apply_architecture(tiny_bert_config(), {"num_attention_heads": 8}).num_attention_heads == 8


def test_unknown_arch_key_raises_config_error_with_suggestion():
    with pytest.raises(ConfigError, match=r"'hiden_size'.*Did you mean: 'hidden_size'"):
        apply_architecture(tiny_mobilebert_config(), {"hiden_size": 32})


def test_apply_architecture_deep_copies_base_config():
    base = tiny_mobilebert_config()
    config = apply_architecture(base, {"intra_bottleneck_size": 4, "id2label": {0: "a", 1: "b"}})
    assert base.intra_bottleneck_size == 8 and base.true_hidden_size == 8
    assert config.intra_bottleneck_size == 4 and config is not base


def test_true_hidden_size_follows_intra_bottleneck_size():
    config = apply_architecture(tiny_mobilebert_config(), {"intra_bottleneck_size": 4})
    assert config.true_hidden_size == 4


def test_true_hidden_size_alone_sets_bottleneck_and_conflict_is_invalid():
    config = apply_architecture(tiny_mobilebert_config(), {"true_hidden_size": 4})
    assert config.intra_bottleneck_size == 4 and config.true_hidden_size == 4
    with pytest.raises(InvalidArchitectureError, match="true_hidden_size=6 disagrees with intra_bottleneck_size=4"):
        apply_architecture(tiny_mobilebert_config(), {"true_hidden_size": 6, "intra_bottleneck_size": 4})


def test_valid_arch_builds_and_runs_forward_with_requested_shapes():
    arch = {"hidden_size": 24, "intra_bottleneck_size": 12, "num_attention_heads": 3, "intermediate_size": 20,
            "num_feedforward_networks": 2, "num_hidden_layers": 1}
    model = build_model(MobileBertForSequenceClassification, tiny_mobilebert_config(), arch, seed=0)
    layer = model.mobilebert.encoder.layer[0]
    assert layer.attention.self.query.in_features == 12
    assert layer.attention.self.num_attention_heads == 3
    assert len(model.mobilebert.encoder.layer) == 1 and len(layer.ffn) == 1
    out = model(**random_batch())
    assert out.logits.shape == (4, 2) and torch.isfinite(out.loss)


def test_build_model_seed_makes_initialization_reproducible():
    a = build_model(MobileBertForSequenceClassification, tiny_mobilebert_config(), {}, seed=3)
    b = build_model(MobileBertForSequenceClassification, tiny_mobilebert_config(), {}, seed=3)
    c = build_model(MobileBertForSequenceClassification, tiny_mobilebert_config(), {}, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_build_model_accepts_auto_class_and_forces_attn_implementation():
    base = tiny_bert_config(attn_implementation="sdpa")
    model = build_model(AutoModelForSequenceClassification, base, {"hidden_size": 16}, attn_implementation="eager")
    assert isinstance(model, BertForSequenceClassification)
    assert model.config._attn_implementation == "eager"
    out = model(**random_batch(with_labels=False), output_attentions=True)
    assert out.attentions[0] is not None


def test_build_model_masked_lm_needs_embedding_not_wider_than_hidden():
    with pytest.raises(InvalidArchitectureError, match="embedding_size=32, hidden_size=16"):
        build_model(MobileBertForMaskedLM, tiny_mobilebert_config(), {"embedding_size": 32})


def test_default_base_config_is_small_layer_norm_mobilebert():
    config = default_mobilebert_base_config(num_labels=3, vocab_size=100)
    assert config.normalization_type == "layer_norm"
    assert (config.embedding_size, config.num_hidden_layers, config.use_bottleneck) == (64, 6, True)
    assert config.true_hidden_size == config.intra_bottleneck_size == 64
    assert config.num_labels == 3 and config.hidden_dropout_prob == 0.1
    check_architecture(config)


def test_enumerate_valid_architectures_splits_grid_with_reasons():
    space = {"intra_bottleneck_size": [8, 12], "num_attention_heads": [2, 3, 4]}
    valid, invalid = enumerate_valid_architectures(space, tiny_mobilebert_config())
    assert valid == [
        {"intra_bottleneck_size": 8, "num_attention_heads": 2},
        {"intra_bottleneck_size": 8, "num_attention_heads": 4},
        {"intra_bottleneck_size": 12, "num_attention_heads": 2},
        {"intra_bottleneck_size": 12, "num_attention_heads": 3},
        {"intra_bottleneck_size": 12, "num_attention_heads": 4},
    ]
    assert [a for a, _ in invalid] == [{"intra_bottleneck_size": 8, "num_attention_heads": 3}]
    assert "num_attention_heads=3" in invalid[0][1]


def test_enumerate_valid_architectures_rejects_unknown_key():
    with pytest.raises(ConfigError, match="num_heads"):
        enumerate_valid_architectures({"num_heads": [2]}, tiny_mobilebert_config())


def test_student_base_config_sets_overrides_labels_and_tokenizer_facts():
    config = student_base_config(ModelArguments(base_config={"num_hidden_layers": 2, "embedding_size": 32}),
                                 DataArguments(max_length=600), vocab_size=100, pad_token_id=3,
                                 label_names=["neg", "neutral", "pos"])
    assert (config.num_hidden_layers, config.embedding_size, config.vocab_size, config.pad_token_id) == (2, 32, 100, 3)
    assert config.max_position_embeddings == 600 and config.num_labels == 3
    assert config.id2label == {0: "neg", 1: "neutral", 2: "pos"} and config.label2id["pos"] == 2
    default = student_base_config(ModelArguments(), DataArguments(max_length=64))
    assert (default.num_labels, default.vocab_size, default.max_position_embeddings) == (2, 30522, 512)


@pytest.mark.parametrize("overrides,message", [
    ({"num_labels": 3}, "model.base_config.num_labels is set from the tokenizer"),
    ({"hiden_size": 64}, "'hiden_size' is not a MobileBertConfig field. Did you mean: 'hidden_size'"),
    ({"num_attention_heads": 3}, "model.base_config is not a valid MobileBERT config: num_attention_heads=3"),
])
def test_student_base_config_refuses_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(".", "\\.")):
        student_base_config(ModelArguments(base_config=overrides), DataArguments())


def test_student_base_config_resolves_offline_names_like_the_teacher():
    config = student_base_config(ModelArguments(base_config="offline:all-MiniLM-L6-v2"), DataArguments(),
                                 label_names=["a", "b", "c"])
    assert config.model_type == "bert" and config.num_labels == 3 and config.id2label[2] == "c"


def test_student_base_config_unreadable_name_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.base_config .*cannot be read"):
        student_base_config(ModelArguments(base_config=str(tmp_path / "missing")), DataArguments())


class _Teacher(torch.nn.Module):
    def __init__(self, seed: int, vocab: int = 50, width: int = 16):
        super().__init__()
        self.embeddings = torch.nn.Embedding(vocab, width)
        torch.nn.init.normal_(self.embeddings.weight, generator=torch.Generator().manual_seed(seed))

    def get_input_embeddings(self):
        return self.embeddings


def test_embedding_projection_is_computed_once_per_width_by_its_owner():
    teacher = _Teacher(0)
    projection = TeacherEmbeddingProjection(teacher)
    first = projection(4)
    assert first.shape == (50, 4) and projection(4) is first  # reused by every later trial
    assert projection(24).shape == (50, 24) and torch.equal(projection(24)[:, 16:], torch.zeros(50, 8))
    other = TeacherEmbeddingProjection(_Teacher(1))  # another teacher never gets this one's projection
    assert not torch.allclose(other(4).abs(), first.abs())


def test_projection_is_deterministic_and_leaves_the_global_rng_alone():
    projection = TeacherEmbeddingProjection(_Teacher(0))
    state = torch.random.get_rng_state()
    a = projection(4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.allclose(TeacherEmbeddingProjection(_Teacher(0))(4), a)


def test_init_embeddings_copies_the_projection_only_for_the_same_vocabulary():
    projection = TeacherEmbeddingProjection(_Teacher(0))
    student = MobileBertForSequenceClassification(tiny_mobilebert_config(vocab_size=50))
    assert init_embeddings_from_teacher(student, projection)
    assert torch.equal(student.get_input_embeddings().weight, projection(8))
    other = MobileBertForSequenceClassification(tiny_mobilebert_config())  # vocabulary of 100
    before = other.get_input_embeddings().weight.clone()
    assert not init_embeddings_from_teacher(other, projection)
    assert torch.equal(other.get_input_embeddings().weight, before)
