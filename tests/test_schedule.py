"""Flash distillation (progressive, block by block) and regular distillation stages."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    MobileBertForSequenceClassification,
    TrainingArguments,
)

from autodistill_trainer import DistillationTrainer
from autodistill_trainer.stage_trainer import StageTrainer
from autodistill_trainer.auto_mappings import auto_flash_config, uniform_layer_map
from autodistill_trainer.configs.distillation import (
    FlashDistillationConfig,
    RegularDistillationConfig,
    parse_distillation,
)
from autodistill_trainer.errors import ConfigError
from autodistill_trainer.schedule import matches_prefix, run_distillation
from helpers import tiny_bert_config, tiny_mobilebert_config
from helpers import RandomTextClassification, mobilebert_block_mappings
from launch import accelerate_launch_two_cpu_processes


def make_args(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                  logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def flash(blocks, steps=2, **extra):
    return {
        "block_names": [f"mobilebert.encoder.layer.{b}" for b in blocks],
        "layer_mappings_for_knowledge_transfer": [mobilebert_block_mappings(b) for b in blocks],
        "loss_types": [["KL", "MSE"] for _ in blocks],
        "train_steps": [steps] * len(blocks),
        **extra,
    }


def test_block_prefix_matching_is_exact():
    assert matches_prefix("mobilebert.encoder.layer.1.attention.self.query.weight", "mobilebert.encoder.layer.1")
    assert matches_prefix("mobilebert.encoder.layer.1", "mobilebert.encoder.layer.1")
    assert not matches_prefix("mobilebert.encoder.layer.10.output.dense.weight", "mobilebert.encoder.layer.1")


def test_flash_stage_trains_its_block_and_not_layer_ten(tmp_path):
    teacher = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=11)).eval()
    student = MobileBertForSequenceClassification(tiny_mobilebert_config(num_hidden_layers=11))
    before = snapshot(student)
    run_distillation(student, teacher, make_args(tmp_path), RandomTextClassification(16), flash_distillation=flash([1]))
    touched = changed(before, student)
    assert touched, "the stage trained nothing"
    assert all(n.startswith("mobilebert.encoder.layer.1.") for n in touched), touched
    assert not any(n.startswith("mobilebert.encoder.layer.10.") for n in touched)
    # each parameter's requires_grad flag is as before the schedule (all trainable here)
    assert all(p.requires_grad for p in student.parameters())


def test_each_stage_builds_a_fresh_optimizer_over_exactly_what_it_trains(
    tmp_path, bert_teacher, mobilebert_student, monkeypatch
):
    recorded = []
    original = StageTrainer.create_optimizer

    def record(self, model=None):
        optimizer = original(self, model)
        names = {id(p): n for n, p in self.model.named_parameters()}
        recorded.append((optimizer, {names[id(p)] for g in optimizer.param_groups for p in g["params"]}))
        return optimizer

    monkeypatch.setattr(StageTrainer, "create_optimizer", record)
    stage_before = snapshot(mobilebert_student)
    results = run_distillation(mobilebert_student, bert_teacher, make_args(tmp_path), RandomTextClassification(16),
                               flash_distillation=flash([0, 1], steps=3))
    assert [r.kind for r in results] == ["flash", "flash"]
    assert [r.train_steps for r in results] == [3, 3]
    assert len(recorded) == 2 and recorded[0][0] is not recorded[1][0]
    for (optimizer, names), block in zip(recorded, (0, 1)):
        model_params = {n for n in names if not n.startswith("distillation_feature_matchers")}
        assert model_params and all(n.startswith(f"mobilebert.encoder.layer.{block}.") for n in model_params)
        assert any(n.startswith("distillation_feature_matchers") for n in names)
    # the later stage really trained its block
    touched = changed(stage_before, mobilebert_student)
    assert any(n.startswith("mobilebert.encoder.layer.1.") for n in touched)
    assert any(n.startswith("mobilebert.encoder.layer.0.") for n in touched)
    assert all(n.startswith("mobilebert.encoder.layer.") for n in touched)


def test_soft_freeze_keeps_earlier_blocks_training_at_a_reduced_rate(
    tmp_path, bert_teacher, mobilebert_student, monkeypatch
):
    groups = []
    original = StageTrainer.create_optimizer

    def record(self, model=None):
        optimizer = original(self, model)
        names = {id(p): n for n, p in self.model.named_parameters()}
        groups.append([
            (g["lr"], {names[id(p)].split(".")[3] for p in g["params"] if names[id(p)].startswith("mobilebert")})
            for g in optimizer.param_groups
        ])
        return optimizer

    monkeypatch.setattr(StageTrainer, "create_optimizer", record)
    run_distillation(mobilebert_student, bert_teacher, make_args(tmp_path), RandomTextClassification(16),
                     flash_distillation=flash([0, 1], soft_freeze=0.1))
    second = groups[1]
    lr_of_block = {block: lr for lr, blocks in second for block in blocks}
    assert lr_of_block["0"] == pytest.approx(1e-3)
    assert lr_of_block["1"] == pytest.approx(1e-2)


def test_regular_stage_trains_the_whole_student_with_origin_loss(tmp_path, bert_teacher, mobilebert_student):
    before = snapshot(mobilebert_student)
    results = run_distillation(
        mobilebert_student, bert_teacher, make_args(tmp_path), RandomTextClassification(16),
        regular_distillation={"layer_mappings_for_knowledge_transfer": [["classifier", "classifier"]],
                              "loss_types": ["KL"], "add_origin_loss": True, "train_steps": 2},
    )
    assert [r.kind for r in results] == ["regular"]
    assert "origin_loss" in results[0].loss_terms and "KL:classifier" in results[0].loss_terms
    assert changed(before, mobilebert_student) == set(before)


def test_trainer_distill_runs_flash_then_regular_and_reports_each_stage(tmp_path, bert_teacher, mobilebert_student):
    trainer = DistillationTrainer(model=mobilebert_student, teacher_model=bert_teacher, args=make_args(tmp_path),
                                  train_dataset=RandomTextClassification(16))
    results = trainer.distill(
        flash_distillation={"knowledge_transfer": flash([0, 1])},
        regular_distillation={"layer_mappings_for_knowledge_transfer": [[("classifier", "classifier")]],
                              "loss_types": [["KL"]], "add_origin_loss": [True], "train_steps": [2]},
    )
    assert [(r.kind, r.index, r.total) for r in results] == [("flash", 0, 3), ("flash", 1, 3), ("regular", 2, 3)]
    assert all(r.runtime_s > 0 and r.train_loss > 0 for r in results)
    assert os.path.isdir(os.path.join(trainer.args.output_dir, "stage-02-regular-whole_student"))
    # the trainer's own criterion captured nothing meanwhile
    assert trainer.criterion.student_features == {}


def design_trainer_usage_config():
    """The design's Trainer-usage autodistillation_config (advanced mode), verbatim."""
    return {
        "knowledge_transfer": {
            "block_names": ["mobilebert.encoder.layer.{}".format(i) for i in range(24)],
            "layer_mappings_for_knowledge_transfer": [
                [
                    ("mobilebert.encoder.layer.{}.attention.self".format(i), "1",
                     "bert.encoder.layer.{}.attention.self".format(i), "1"),
                    ("mobilebert.encoder.layer.{}.output".format(i), "bert.encoder.layer.{}.output".format(i)),
                ]
                for i in range(24)
            ],
            "loss_types": [["KL", "MSE"] for i in range(24)],
            "loss_weights": [[0.5, 0.5] for i in range(24)],
            "train_steps": [500 for i in range(24)],
        },
        "regular_distillation": {
            "layer_mappings_for_knowledge_transfer": [[("cls", "0", "cls", "0")]],
            "loss_types": [["KL"]],
            "add_origin_loss": [True],
            "train_steps": [25000],
        },
    }


def test_design_trainer_usage_dicts_parse():
    flash_config, regular = parse_distillation(design_trainer_usage_config())
    stages = flash_config.stages()
    assert len(stages) == 24 and stages[23].block_prefixes == ["mobilebert.encoder.layer.23"]
    assert stages[5].loss_types == ["KL", "MSE"] and stages[5].loss_weights == [0.5, 0.5]
    assert stages[5].layer_mappings[0].student_process == "1" and not stages[5].add_origin_loss
    assert regular.train_steps == 25000 and regular.add_origin_loss is True
    assert regular.validated().loss_types == ["KL"]
    assert regular.mappings()[0].student_layer == "cls" and regular.mappings()[0].teacher_process == "0"


def test_oob_dict_without_steps_or_weights_gets_the_advanced_defaults():
    config = design_trainer_usage_config()
    del config["knowledge_transfer"]["loss_weights"], config["knowledge_transfer"]["train_steps"]
    del config["regular_distillation"]["train_steps"]
    flash_config, regular = parse_distillation(config)
    stages = flash_config.stages()
    assert {s.train_steps for s in stages} == {500}
    assert stages[0].loss_weights is None  # the criterion then uses 1/len(mappings) each
    assert regular.train_steps == 25000


DESIGN_YAML = """
auto_distillation:
  flash_distillation:
    block_names: ['mobilebert.encoder.layer.0']
    layer_mappings_for_knowledge_transfer: [
        [
          ['mobilebert.encoder.layer.0.attention.self', '1', 'bert.encoder.layer.0.attention.self', '1'],
          ['mobilebert.encoder.layer.0.output', 'bert.encoder.layer.0.output'],
        ]
                        ]
    loss_types: [['KL', 'MSE']]
    train_steps: [5000]
  regular_distillation:
    layer_mappings_for_knowledge_transfer: [
          ['classifier', 'classifier'],
                        ]
    loss_types: ['KL']
    add_origin_loss: True
"""


def test_design_flat_yaml_form_parses():
    section = yaml.safe_load(DESIGN_YAML)["auto_distillation"]
    flash_config, regular = parse_distillation(section["flash_distillation"], section["regular_distillation"])
    (stage,) = flash_config.stages()
    assert stage.train_steps == 5000 and stage.loss_types == ["KL", "MSE"]
    assert stage.layer_mappings[1].teacher_layer == "bert.encoder.layer.0.output"
    regular = regular.validated()
    assert regular.loss_types == ["KL"] and regular.add_origin_loss and regular.train_steps == 25000


def test_typed_configs_are_accepted(tmp_path, bert_teacher, mobilebert_student):
    results = run_distillation(
        mobilebert_student, bert_teacher, make_args(tmp_path), RandomTextClassification(16),
        flash_distillation=FlashDistillationConfig(train_steps=1),
        regular_distillation=RegularDistillationConfig(train_steps=1),
    )
    assert [r.name for r in results] == [
        "mobilebert.embeddings+mobilebert.encoder.layer.0", "mobilebert.encoder.layer.1", "whole student"
    ]


@pytest.mark.parametrize(
    "config, message",
    [
        ({"block_names": ["a", "b"], "layer_mappings_for_knowledge_transfer": [[("x", "y")]], "loss_types": [["MSE"]]},
         "layer_mappings_for_knowledge_transfer has 1 entries but block_names has 2"),
        ({"block_names": ["a"], "layer_mappings_for_knowledge_transfer": [[("x", "y")]], "train_steps": [0]},
         "flash_distillation.train_steps[0] must be a positive integer"),
        ({"block_names": ["a"], "layer_mappings_for_knowledge_transfer": [[("x", "y")]], "loss_typs": [["MSE"]]},
         "unknown key 'loss_typs'. Did you mean: 'loss_types'"),
        ({"block_names": ["a"], "layer_mappings_for_knowledge_transfer": [[("x", "y")]], "loss_types": [["MSE", "KL"]]},
         "flash_distillation.loss_types[0] has 2 entries but there are 1 mappings"),
    ],
)
def test_bad_flash_configs_fail_before_training(config, message):
    with pytest.raises(ConfigError) as error:
        flash_config, _ = parse_distillation(config)
        flash_config.stages()
    assert message in str(error.value)


def test_unknown_block_is_reported_with_close_names(tmp_path, bert_teacher, mobilebert_student):
    config = flash([0])
    config["block_names"] = ["mobilebert.encoder.layers.0"]
    with pytest.raises(ConfigError, match="no module 'mobilebert.encoder.layers.0'. Did you mean"):
        run_distillation(mobilebert_student, bert_teacher, make_args(tmp_path), RandomTextClassification(8),
                         flash_distillation=config)


def test_uniform_layer_map_spreads_student_layers_over_the_teacher():
    assert uniform_layer_map(24, 24) == list(range(24))
    assert uniform_layer_map(4, 12) == [2, 5, 8, 11]
    assert uniform_layer_map(6, 6) == list(range(6))


def test_auto_mappings_for_24_to_24_and_4_to_12_layers():
    def bert(layers):
        return BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=layers,
                                                        num_attention_heads=2, intermediate_size=8))

    student = MobileBertForSequenceClassification(tiny_mobilebert_config(num_hidden_layers=24))
    auto = auto_flash_config(student, bert(24), train_steps=500)
    assert len(auto["block_names"]) == 24 and auto["train_steps"] == [500] * 24
    assert auto["block_names"][0] == ["mobilebert.embeddings", "mobilebert.encoder.layer.0"]
    assert auto["layer_mappings_for_knowledge_transfer"][23] == [
        ("mobilebert.encoder.layer.23.attention.self", "1", "bert.encoder.layer.23.attention.self", "1"),
        ("mobilebert.encoder.layer.23.output", "bert.encoder.layer.23.output"),
    ]
    assert auto["loss_types"][0] == ["KL", "MSE"]
    small = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=4,
                                                     num_attention_heads=2, intermediate_size=8))
    auto = auto_flash_config(small, bert(12))
    teacher_layers = [m[1][1] for m in auto["layer_mappings_for_knowledge_transfer"]]
    assert teacher_layers == [f"bert.encoder.layer.{t}.output" for t in (2, 5, 8, 11)]
    assert auto["block_names"][1] == "bert.encoder.layer.1"


def test_auto_mappings_reject_models_without_bert_layers(bert_teacher):
    with pytest.raises(ConfigError, match="auto supports BERT-family teachers"):
        auto_flash_config(torch.nn.Linear(2, 2), bert_teacher)


def test_two_process_schedule_keeps_ranks_identical(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "scripts", "ddp_schedule.py")
    run = accelerate_launch_two_cpu_processes(script, str(tmp_path / "result.json"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["stages"] == ["flash", "flash", "regular"]
    assert result["max_abs_diff"] == 0.0
    assert result["changed"]
