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
    ARCH_KEYS,
    apply_architecture,
    build_model,
    check_architecture,
    default_mobilebert_base_config,
    enumerate_valid_architectures,
)
from autodistill_trainer.errors import ConfigError, InvalidArchitectureError


def test_arch_keys_are_mobilebert_config_fields():
    fields = tiny_mobilebert_config().to_dict()
    assert set(ARCH_KEYS) <= set(fields)


def test_heads_not_dividing_true_hidden_size_raise_with_numbers():
    with pytest.raises(InvalidArchitectureError, match=r"num_attention_heads=3 .*true_hidden_size=8"):
        apply_architecture(tiny_mobilebert_config(), {"num_attention_heads": 3})


def test_rejected_heads_really_fail_at_forward_time_in_mobilebert():
    config = tiny_mobilebert_config(num_attention_heads=3)  # MobileBERT builds it without complaint
    with pytest.raises(InvalidArchitectureError):
        check_architecture(config)
    with pytest.raises(RuntimeError):
        MobileBertForSequenceClassification(config)(input_ids=torch.ones(1, 4, dtype=torch.long))


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
