"""KD knobs (temperature, kd_weight, flash_share) in search.search_space: validated, kept off the student's config,
and applied to the stages of the trial that drew them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from transformers import MobileBertForSequenceClassification, TrainingArguments

from autodistill_trainer import ConfigError
from autodistill_trainer import schedule
from autodistill_trainer.builders import apply_architecture, build_model
from autodistill_trainer.configs import parse_distillation
from autodistill_trainer.configs.search import parse_search_config
from autodistill_trainer.recipe import build_recipe
from autodistill_trainer.schedule import plan_stages
from autodistill_trainer.search.oob import OOBContext, run_autodistillation
from helpers import RandomTextClassification, mobilebert_block_mappings, tiny_mobilebert_config

ROOT = Path(__file__).resolve().parent.parent


def _configs(flash_steps=(2, 4), regular_steps=6, regular=True, flash=True):
    flash_cfg = {
        "block_names": [f"mobilebert.encoder.layer.{b}" for b in range(len(flash_steps))],
        "layer_mappings_for_knowledge_transfer": [mobilebert_block_mappings(b) for b in range(len(flash_steps))],
        "loss_types": [["KL", "MSE"] for _ in flash_steps],
        "train_steps": list(flash_steps),
    }
    regular_cfg = {"layer_mappings_for_knowledge_transfer": [["classifier", "classifier"]], "loss_types": ["KL"],
                   "train_steps": regular_steps, "temperature": 2.0, "add_origin_loss": True}
    return parse_distillation(flash_cfg if flash else None, regular_cfg if regular else None)


def test_temperature_and_kd_weight_reach_the_regular_stage_only(bert_teacher, mobilebert_student):
    flash, regular = _configs()
    plain = plan_stages(flash, regular, mobilebert_student, bert_teacher)
    tuned = plan_stages(flash, regular, mobilebert_student, bert_teacher, {"temperature": 4.0, "kd_weight": 0.5})
    assert [s.kind for s in tuned] == ["flash", "flash", "regular"]
    assert tuned[-1].temperature == 4.0 and plain[-1].temperature == 2.0
    assert tuned[-1].loss_weights == [0.5]  # default 1/n for one mapping, times kd_weight
    assert tuned[:2] == plain[:2] and tuned[-1].steps == plain[-1].steps and tuned[-1].add_origin_loss


def test_flash_share_splits_the_same_total_steps_between_flash_and_regular(bert_teacher, mobilebert_student):
    flash, regular = _configs(flash_steps=(2, 4), regular_steps=6)  # 12 steps in all
    quarter = plan_stages(flash, regular, mobilebert_student, bert_teacher, {"flash_share": 0.25})
    assert [s.steps for s in quarter] == [1, 2, 9]  # 3 flash steps in the configured 1:2 ratio
    half = plan_stages(flash, regular, mobilebert_student, bert_teacher, {"flash_share": 0.5})
    assert [s.steps for s in half] == [2, 4, 6]
    none = plan_stages(flash, regular, mobilebert_student, bert_teacher, {"flash_share": 0.0})
    assert [(s.kind, s.steps) for s in none] == [("regular", 12)]
    with pytest.raises(ConfigError, match="leaves no step to the regular stage"):
        plan_stages(*_configs(flash_steps=(1, 1), regular_steps=1), mobilebert_student, bert_teacher,
                    {"flash_share": 0.9})


def test_knobs_need_the_stages_they_configure(bert_teacher, mobilebert_student):
    with pytest.raises(ConfigError, match="regular_distillation"):
        plan_stages(*_configs(regular=False), mobilebert_student, bert_teacher, {"temperature": 3.0})
    with pytest.raises(ConfigError, match="flash"):
        plan_stages(*_configs(flash=False), mobilebert_student, bert_teacher, {"flash_share": 0.2})


@pytest.mark.parametrize("space,message", [
    ({"hidden_size": [16], "temperature": [0.0]}, "temperature' holds 0.0; each value must be a number > 0"),
    ({"hidden_size": [16], "kd_weight": [-1]}, "kd_weight' holds -1"),
    ({"hidden_size": [16], "flash_share": [1.0]}, r"flash_share' holds 1.0; each value must be a number in \[0, 1\)"),
    ({"hidden_size": [16], "flash_share": ["half"]}, "flash_share' holds 'half'"),
])
def test_knob_values_are_checked_in_the_search_space(space, message):
    with pytest.raises(ConfigError, match=message):
        parse_search_config({"search": {"search_space": space}})


def _smoke_recipe(space_update):
    recipe = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    recipe["auto_distillation"]["search"]["search_space"].update(space_update)
    return recipe


def test_a_recipe_with_knobs_validates_and_an_unknown_key_names_the_knobs():
    recipe = build_recipe(_smoke_recipe({"temperature": [1.0, 4.0], "kd_weight": [0.5, 1.0],
                                         "flash_share": [0.0, 0.3]}), "smoke.yaml")
    assert recipe.autodistillation.search.search_space["flash_share"] == [0.0, 0.3]
    with pytest.raises(ConfigError, match=r"tempreature is not a field of the student config .*Did you mean: "
                                          r"'temperature'.* the KD knobs temperature, kd_weight, flash_share"):
        build_recipe(_smoke_recipe({"tempreature": [2.0]}), "smoke.yaml")


def test_the_student_config_never_holds_a_knob():
    base = tiny_mobilebert_config()
    config = apply_architecture(base, {"hidden_size": 24, "temperature": 3.0, "kd_weight": 0.5, "flash_share": 0.1})
    assert config.hidden_size == 24
    assert not any(k in config.to_dict() or hasattr(config, k) for k in ("temperature", "kd_weight", "flash_share"))
    with pytest.raises(ConfigError, match="Unknown architecture field 'kd_wieght'.*kd_weight"):
        apply_architecture(base, {"kd_wieght": 0.5})


def accuracy(prediction):
    return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}


def test_a_searched_knob_reaches_the_stage_of_its_trial_and_not_the_builder(tmp_path, bert_teacher, monkeypatch):
    seen = []

    class RecordingTrainer(schedule.StageTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((self.criterion.temperature, list(self.criterion.loss_weights), self.args.max_steps))

    monkeypatch.setattr(schedule, "StageTrainer", RecordingTrainer)
    built = []

    def builder(arch):
        built.append(dict(arch))
        return build_model(MobileBertForSequenceClassification, tiny_mobilebert_config(), arch)

    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    context = OOBContext(args=args, train_dataset=RandomTextClassification(8),
                         eval_dataset=RandomTextClassification(4, seed=1),
                         compute_metrics=accuracy)
    config = {
        "search": {"search_space": {"hidden_size": [16], "temperature": [3.0, 5.0], "kd_weight": [0.25],
                                    "flash_share": [0.5]},
                   "search_algorithm": "grid", "metrics": ["accuracy", "latency"], "higher_is_better": [True, False],
                   "max_trials": 2, "seed": 1},
        "flash_distillation": {"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto",
                               "train_steps": 1},
        "regular_distillation": {"layer_mappings_for_knowledge_transfer": [["classifier", "classifier"]],
                                 "loss_types": ["KL"], "train_steps": 2, "temperature": 1.0},
    }
    _, result = run_autodistillation(context, bert_teacher, config, model_builder=builder,
                                     profile_func=lambda model: {"params": 1, "flops": 1, "latency": 1.0})
    assert built == [{"hidden_size": 16}, {"hidden_size": 16}]  # the builder never sees a knob
    regular = [entry for entry in seen if entry[2] == 2]
    assert sorted(t for t, _, _ in regular) == [3.0, 5.0]  # each trial's regular stage got its own temperature
    assert all(weights == [0.25] for _, weights, _ in regular)
    # 2 flash blocks of 1 step + 2 regular steps = 4 steps; flash_share 0.5 gives 2 to flash, 2 to regular
    assert sorted(steps for _, _, steps in seen) == [1, 1, 1, 1, 2, 2]
    assert {row["arch"]["temperature"] for row in result.rows} == {3.0, 5.0}
