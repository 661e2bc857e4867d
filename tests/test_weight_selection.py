"""Weight selection (model.select_teacher_weights): students initialised from leading slices of the teacher."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    MobileBertConfig,
    MobileBertForSequenceClassification,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autodistill_trainer.errors import ConfigError  # noqa: E402
from autodistill_trainer.recipe import build_recipe  # noqa: E402
from autodistill_trainer.weight_selection import (  # noqa: E402
    BERT_LAYOUT,
    check_teacher_for_selection,
    select_teacher_weights,
    student_initialisation,
    try_select_teacher_weights,
)


def teacher(layers: int = 4, num_labels: int = 3) -> BertForSequenceClassification:
    # MobileBERT's LayerNorm has torch's default eps (1e-5, not configurable): the teacher uses it too, so that
    # a full-size student's outputs match to fp32 precision.
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, num_labels=num_labels, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def student(hidden: int = 32, heads: int = 4, ffn: int = 64, layers: int = 4, num_labels: int = 3,
            **overrides) -> MobileBertForSequenceClassification:
    fields = dict(vocab_size=100, hidden_size=hidden, embedding_size=hidden, intra_bottleneck_size=hidden,
                  num_attention_heads=heads, intermediate_size=ffn, num_hidden_layers=layers, hidden_act="gelu",
                  max_position_embeddings=40, num_labels=num_labels, **BERT_LAYOUT)
    fields.update(overrides)
    torch.manual_seed(1)
    return MobileBertForSequenceClassification(MobileBertConfig(**fields)).eval()


def test_a_student_as_large_as_its_teacher_computes_the_teachers_logits():
    t, s = teacher(), student()
    ids = torch.randint(1, 100, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        before = (s(input_ids=ids, attention_mask=mask).logits - t(input_ids=ids, attention_mask=mask).logits).abs()
        report = select_teacher_weights(s, t)
        after = (s(input_ids=ids, attention_mask=mask).logits - t(input_ids=ids, attention_mask=mask).logits).abs()
    assert before.max() > 1e-2
    assert after.max() < 1e-5
    assert report["layers"] == [0, 1, 2, 3] and report["skipped"] == []


def test_a_narrower_shallower_student_gets_leading_slices_of_uniformly_mapped_teacher_layers():
    t, s = teacher(layers=4), student(hidden=16, heads=2, ffn=24, layers=2)
    report = select_teacher_weights(s, t)
    assert report["layers"] == [1, 3]  # uniform_layer_map(2, 4): the last student layer starts from the last
    for i, j in enumerate(report["layers"]):
        s_layer, t_layer = s.mobilebert.encoder.layer[i], t.bert.encoder.layer[j]
        assert torch.equal(s_layer.attention.self.query.weight, t_layer.attention.self.query.weight[:16, :16])
        assert torch.equal(s_layer.attention.self.value.bias, t_layer.attention.self.value.bias[:16])
        assert torch.equal(s_layer.intermediate.dense.weight, t_layer.intermediate.dense.weight[:24, :16])
        assert torch.equal(s_layer.output.dense.weight, t_layer.output.dense.weight[:16, :24])
        assert torch.equal(s_layer.output.LayerNorm.weight, t_layer.output.LayerNorm.weight[:16])
    embeddings = s.mobilebert.embeddings
    assert torch.equal(embeddings.word_embeddings.weight, t.bert.embeddings.word_embeddings.weight[:, :16])
    assert torch.equal(embeddings.position_embeddings.weight, t.bert.embeddings.position_embeddings.weight[:, :16])
    assert torch.equal(s.mobilebert.pooler.dense.weight, t.bert.pooler.dense.weight[:16, :16])
    assert torch.equal(s.classifier.weight, t.classifier.weight[:, :16])


def test_a_classifier_for_another_label_count_keeps_its_initialisation():
    t, s = teacher(num_labels=3), student(num_labels=5)
    initial = s.classifier.weight.clone()
    report = select_teacher_weights(s, t)
    assert report["skipped"] == ["classifier"]
    assert torch.equal(s.classifier.weight, initial)
    assert torch.equal(s.mobilebert.encoder.layer[0].attention.self.key.weight,
                       t.bert.encoder.layer[0].attention.self.key.weight)


def test_a_student_outside_berts_layout_is_refused_naming_each_field_and_its_value():
    s = student(use_bottleneck=True, trigram_input=True, embedding_size=8, hidden_act="relu")
    with pytest.raises(ValueError) as info:
        select_teacher_weights(s, teacher())
    message = str(info.value)
    for expected in ("use_bottleneck is True; set False", "trigram_input is True; set False",
                     "embedding_size is 8; set it equal to hidden_size (32)", "hidden_act is 'relu'; set the "
                     "teacher's 'gelu'"):
        assert expected in message


def test_a_student_wider_than_its_teacher_is_refused():
    with pytest.raises(ValueError, match="hidden_size is 48, more than the teacher's 32"):
        select_teacher_weights(student(hidden=48, heads=4), teacher())


def test_try_select_leaves_a_student_outside_the_layout_untouched():
    s = student(use_bottleneck=True)
    initial = copy.deepcopy(s.state_dict())
    assert try_select_teacher_weights(s, teacher()) is False
    assert all(torch.equal(initial[k], v) for k, v in s.state_dict().items())
    assert try_select_teacher_weights(student(), teacher()) is True


def test_the_teacher_check_names_the_base_config_key_unless_the_search_decides_it():
    base = student(hidden_act="relu").config
    with pytest.raises(ConfigError, match="model.base_config hidden_act is 'relu'; set the teacher's 'gelu'"):
        check_teacher_for_selection(base, teacher())
    check_teacher_for_selection(base, teacher(), searched={"hidden_act"})
    narrow = student(hidden=16, heads=2, embedding_size=64).config  # embedding_size follows a searched hidden_size
    check_teacher_for_selection(narrow, teacher(), searched={"hidden_size"})


def test_the_teacher_check_refuses_a_teacher_without_bert_modules():
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=100, dim=32, n_layers=1, n_heads=4,
                                                                  hidden_dim=64, max_position_embeddings=40))
    with pytest.raises(ConfigError, match="needs a BERT-family teacher; DistilBertForSequenceClassification"):
        check_teacher_for_selection(student().config, distil)


def _smoke_recipe(**base_config) -> dict:
    recipe = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    recipe["model"]["select_teacher_weights"] = True
    recipe["model"]["base_config"] = {"num_hidden_layers": 2, **base_config}
    space = recipe["auto_distillation"]["search"]["search_space"]
    space.pop("intra_bottleneck_size")
    space["hidden_size"] = [64, 96]
    return recipe


LAYOUT = {"use_bottleneck": False, "trigram_input": False, "embedding_size": 64, "hidden_act": "gelu"}


def test_a_recipe_selecting_teacher_weights_with_berts_layout_is_accepted():
    recipe = build_recipe(_smoke_recipe(**LAYOUT))
    assert recipe.model.select_teacher_weights is True


def test_a_recipe_selecting_teacher_weights_without_berts_layout_names_each_base_config_key():
    with pytest.raises(ConfigError) as info:
        build_recipe(_smoke_recipe(embedding_size=32))
    message = str(info.value)
    assert "model.select_teacher_weights" in message and "model.base_config" in message
    assert "use_bottleneck: False (now True)" in message and "trigram_input: False (now True)" in message
    assert "embedding_size equal to hidden_size (now [32] and [64, 96])" in message


def test_a_recipe_refuses_teacher_weights_for_the_supernet_strategy():
    recipe = _smoke_recipe(**LAYOUT)
    recipe["auto_distillation"]["search"]["strategy"] = "supernet"
    recipe["auto_distillation"]["search"]["search_space"].pop("num_feedforward_networks")
    recipe["auto_distillation"].pop("flash_distillation")
    with pytest.raises(ConfigError, match="model.select_teacher_weights does not apply to search.strategy: supernet"):
        build_recipe(recipe)


def test_a_recipe_refuses_a_non_boolean_select_teacher_weights():
    recipe = _smoke_recipe(**LAYOUT)
    recipe["model"]["select_teacher_weights"] = "yes"
    with pytest.raises(ConfigError, match="model.select_teacher_weights"):
        build_recipe(recipe)


def test_the_model_card_names_the_initialisation_the_best_student_had():
    from autodistill_trainer.configs.sections import ModelArguments

    teacher_config = teacher().config
    selecting = ModelArguments(select_teacher_weights=True)  # selection_order: importance by default
    assert student_initialisation(selecting, student().config, teacher_config).startswith(
        "the teacher's most important heads, feed-forward units and residual dimensions")
    leading = ModelArguments(select_teacher_weights=True, selection_order="leading")
    assert student_initialisation(leading, student().config, teacher_config).startswith(
        "leading slices of the teacher's weights")
    # a searched architecture outside BERT's layout fell back to the embeddings' initialisation
    assert student_initialisation(selecting, student(use_bottleneck=True).config, teacher_config).startswith(
        "word embeddings from the teacher's")
    plain = ModelArguments(init_embeddings_from_teacher=False)
    assert student_initialisation(plain, student().config, teacher_config) == "random"


def test_a_recipe_refuses_a_selection_order_it_would_not_use_or_does_not_know():
    recipe = _smoke_recipe(**LAYOUT)
    recipe["model"]["selection_order"] = "random"
    with pytest.raises(ConfigError, match="model.selection_order 'random' is not one of 'importance', 'leading'"):
        build_recipe(recipe)
    recipe["model"].update(select_teacher_weights=False, selection_order="leading")
    with pytest.raises(ConfigError, match="model.selection_order applies only to students initialised from the "
                                          "teacher's weights: set model.select_teacher_weights: true"):
        build_recipe(recipe)
    recipe["model"]["select_teacher_weights"] = True
    assert build_recipe(recipe).model.selection_order == "leading"


def test_the_cli_selects_the_teachers_most_important_weights_for_searched_students_and_the_baseline(tmp_path):
    recipe = _smoke_recipe(**LAYOUT)
    recipe["auto_distillation"].pop("flash_distillation")
    recipe["auto_distillation"]["search"]["search_space"].update(hidden_size=[64], num_attention_heads=[2],
                                                                 intermediate_size=[64, 128])
    recipe["data"]["max_train_samples"] = 128
    path = tmp_path / "select.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "run_autodistill.py"), str(path), "--output_dir", str(out)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stderr.count("teacher rewired by importance") == 1  # once for every student of the run
    card = (out / "best_model" / "README.md").read_text()
    assert ("- initialisation: the teacher's most important heads, feed-forward units and residual dimensions"
            in card)
    marker = json.loads((out / ".autodistill.json").read_text())
    assert marker["fingerprint"]["student"]["selection_order"] == "importance"
