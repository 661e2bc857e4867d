"""``search.strategy`` and ``search.supernet``: defaults, contradictions and bad input, refused before any training."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autodistill_trainer.configs import parse_search_config  # noqa: E402
from autodistill_trainer.configs.search_supernet import (  # noqa: E402
    MAX_SUPERNET_CANDIDATES,
    SUPERNET_STEPS_MULTIPLE,
    SupernetConfig,
)
from autodistill_trainer.errors import ConfigError  # noqa: E402
from autodistill_trainer.recipe import build_recipe  # noqa: E402

SPACE = {"hidden_size": [64, 128], "num_hidden_layers": [2, 3, 4]}


def search(**extra):
    return parse_search_config({"search": {"search_space": dict(SPACE), **extra}})


def test_strategy_defaults_to_plain_or_multi_fidelity_by_the_sections_given():
    assert search().strategy == "plain"
    assert search().supernet is None
    assert search(multi_fidelity={"min_fraction": 0.25}, max_trials=6).strategy == "multi_fidelity"
    assert search(supernet={"finalists": 2}).strategy == "supernet"


def test_strategy_supernet_without_its_section_gets_the_defaults():
    cfg = search(strategy="supernet")
    assert cfg.supernet == SupernetConfig()
    assert cfg.supernet.finalists == 3 and cfg.supernet.num_random == 2
    assert cfg.supernet.inplace_distillation == "teacher"


def test_strategy_multi_fidelity_without_its_section_gets_the_defaults():
    cfg = search(strategy="multi_fidelity", max_trials=20)
    assert cfg.multi_fidelity is not None and cfg.multi_fidelity.min_fraction == 0.111


def test_num_candidates_default_is_the_space_up_to_the_cap():
    cfg = SupernetConfig()
    assert cfg.candidates(6) == 6
    assert cfg.candidates(50_000) == MAX_SUPERNET_CANDIDATES
    assert SupernetConfig(num_candidates=10).candidates(6) == 6
    assert SupernetConfig(num_candidates=10).candidates(600) == 10


def test_supernet_and_finalist_steps_follow_the_regular_stage():
    assert SupernetConfig().supernet_steps(100) == SUPERNET_STEPS_MULTIPLE * 100
    assert SupernetConfig(train_steps=7).supernet_steps(100) == 7
    assert SupernetConfig(finalist_budget=0.25).finalist_steps(10) == 3
    assert SupernetConfig().finalist_steps(10) == 10


CONTRADICTIONS = [
    ({"strategy": "plain", "supernet": {}}, "'search.supernet' is given but search.strategy is 'plain'"),
    ({"strategy": "supernet", "multi_fidelity": {}}, "'search.multi_fidelity' is given but search.strategy is"),
    ({"supernet": {}, "multi_fidelity": {}}, "'search.supernet' and 'search.multi_fidelity' are both given"),
    ({"strategy": "plain", "multi_fidelity": {}}, "'search.multi_fidelity' is given but search.strategy is 'plain'"),
    ({"strategy": "supernets"}, "'search.strategy' is 'supernets'; choose one of"),
]


@pytest.mark.parametrize("extra,expected", CONTRADICTIONS, ids=[e for e, _ in enumerate(CONTRADICTIONS)])
def test_contradicting_strategy_and_sections_are_refused(extra, expected):
    with pytest.raises(ConfigError, match=None) as info:
        search(**extra)
    assert expected in str(info.value), str(info.value)


BAD_SUPERNET = [
    ({"finalists": 0}, "'search.supernet.finalists'"),
    ({"num_candidates": -3}, "'search.supernet.num_candidates'"),
    ({"num_random": -1}, "'search.supernet.num_random'"),
    ({"inplace_distillation": "student"}, "'search.supernet.inplace_distillation' is 'student'"),
    ({"finalist_budget": 0}, "'search.supernet.finalist_budget'"),
    ({"finalist_budget": 1.5}, "'search.supernet.finalist_budget'"),
    ({"train_steps": 2.5}, "'search.supernet.train_steps'"),
    ({"eval_samples": 0}, "'search.supernet.eval_samples'"),
    ({"latency_measurements": 1}, "'search.supernet.latency_measurements'"),
    ({"finalist": 2}, "Unknown key 'search.supernet.finalist'"),
]


@pytest.mark.parametrize("value,expected", BAD_SUPERNET, ids=[str(v) for v, _ in BAD_SUPERNET])
def test_bad_supernet_values_are_refused_naming_the_key(value, expected):
    with pytest.raises(ConfigError) as info:
        search(supernet=value)
    assert expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_supernet_search_space_holds_only_elastic_fields():
    with pytest.raises(ConfigError, match=r"'search.search_space.temperature' cannot be searched"):
        parse_search_config({"search": {"search_space": {**SPACE, "temperature": [1.0, 2.0]}, "strategy": "supernet"}})
    with pytest.raises(ConfigError, match=r"'search.search_space.hidden_act' cannot be searched"):
        parse_search_config({"search": {"search_space": {**SPACE, "hidden_act": ["gelu"]}, "supernet": {}}})


# ------------------------------------------------------------------------------------------ recipes

def smoke_recipe() -> dict:
    recipe = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    space = recipe["auto_distillation"]["search"]["search_space"]
    space.pop("num_feedforward_networks", None)
    recipe["auto_distillation"]["search"]["strategy"] = "supernet"
    recipe["auto_distillation"].pop("flash_distillation", None)
    return recipe


def test_a_supernet_recipe_with_a_mobilebert_classifier_is_accepted():
    recipe = build_recipe(smoke_recipe())
    assert recipe.autodistillation.search.strategy == "supernet"


def test_a_supernet_recipe_needs_a_mobilebert_classifier_student():
    recipe = smoke_recipe()
    recipe["model"]["student_class"] = "MobileBertForMaskedLM"
    with pytest.raises(ConfigError) as info:
        build_recipe(recipe)
    message = str(info.value)
    assert "search.strategy: supernet needs model.student_class: MobileBertForSequenceClassification" in message
    assert "'MobileBertForMaskedLM'" in message and "\n" not in message


def test_a_supernet_recipe_needs_regular_distillation():
    recipe = copy.deepcopy(smoke_recipe())
    recipe["auto_distillation"].pop("regular_distillation")
    recipe["auto_distillation"]["flash_distillation"] = {"block_names": "auto",
                                                         "layer_mappings_for_knowledge_transfer": "auto",
                                                         "train_steps": 3}
    with pytest.raises(ConfigError, match="add auto_distillation.regular_distillation"):
        build_recipe(recipe)


AUTO_FLASH = {"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto", "train_steps": 3}


def test_a_supernet_recipe_takes_automatic_flash_stages_with_one_step_count_per_layer():
    recipe = smoke_recipe()
    recipe["auto_distillation"]["flash_distillation"] = dict(AUTO_FLASH, learning_rate=5e-4)
    flash = build_recipe(recipe).autodistillation.flash_distillation
    assert flash.train_steps == 3 and flash.learning_rate == 5e-4


@pytest.mark.parametrize("key, value", [
    ("block_names", ["mobilebert.encoder.layer.0"]),
    ("layer_mappings_for_knowledge_transfer", [[["mobilebert.encoder.layer.0", "0", "bert.encoder.layer.0", "0"]]]),
    ("loss_types", [["MSE"]]),
    ("soft_freeze", 0.1),
    ("add_origin_loss", True),
    ("train_steps", [3, 3]),
])
def test_a_supernet_recipe_refuses_flash_settings_its_flash_stages_would_not_apply(key, value):
    recipe = smoke_recipe()
    recipe["auto_distillation"]["flash_distillation"] = dict(AUTO_FLASH, **{key: value})
    with pytest.raises(ConfigError) as info:
        build_recipe(recipe)
    assert f"auto_distillation.flash_distillation.{key}" in str(info.value)


def test_a_supernet_recipe_refuses_a_labelled_fraction_it_would_not_apply():
    recipe = smoke_recipe()
    recipe["data"]["augmentation"] = {"copies": 1, "methods": ["mask"]}
    recipe["data"]["labelled_fraction"] = 0.5
    with pytest.raises(ConfigError, match="data.labelled_fraction is not applied by search.strategy: supernet"):
        build_recipe(recipe)
