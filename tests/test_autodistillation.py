"""DistillationTrainer.autodistillation(): OOB and advanced modes of the design, and 2 processes."""

from __future__ import annotations

import json
import os

import pytest
from transformers import MobileBertForSequenceClassification, TrainingArguments

from autodistill_trainer import ConfigError, DistillationTrainer, InvalidArchitectureError
from helpers import tiny_mobilebert_config
from helpers import RandomTextClassification
from launch import accelerate_launch_two_cpu_processes

SPACE = {"hidden_size": [16, 24], "intra_bottleneck_size": [8], "num_attention_heads": [2, 3],
         "intermediate_size": [32], "num_feedforward_networks": [1]}


def make_trainer(tmp_path, student, teacher):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=RandomTextClassification(16),
                               eval_dataset=RandomTextClassification(8, seed=1),
                               compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})


def oob_config(max_trials=2):
    return {
        "search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["accuracy", "latency"],
                   "higher_is_better": [True, False], "max_trials": max_trials, "seed": 1},
        "flash_distillation": {"knowledge_transfer": {"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto",
                                                      "train_steps": 2}},
        "regular_distillation": {"layer_mappings_for_knowledge_transfer": [[("classifier", "classifier")]],
                                 "loss_types": [["KL"]], "add_origin_loss": [True], "train_steps": [2]},
    }


def fake_profile(model):
    return {"params": sum(p.numel() for p in model.parameters()), "flops": 1, "latency": model.config.hidden_size / 10}


def test_oob_mode_builds_distils_and_evaluates_every_valid_arch(tmp_path, bert_teacher, mobilebert_student):
    trainer = make_trainer(tmp_path, mobilebert_student, bert_teacher)
    trainer.autodistillation_config = oob_config()
    best = trainer.autodistillation(bert_teacher, model_cls=MobileBertForSequenceClassification, profile_func=fake_profile)
    agent = trainer.autodistillation_agent
    trained = [r for r in agent.search_result if r["state"] == "COMPLETE"]
    assert sorted(r["arch"]["hidden_size"] for r in trained) == [16, 24]
    assert all(r["arch"]["num_attention_heads"] == 2 for r in trained)  # 3 heads never divide 8: never trained
    assert any(r["status"] == "invalid" for r in agent.search_result)
    assert best in [r["arch"] for r in trained]
    for row in trained:  # each trial's distilled student is saved as a plain model
        slug = "_".join(f"{k}-{row['arch'][k]}" for k in SPACE)
        assert os.path.isfile(os.path.join(trainer.args.output_dir, "trials", slug, "model", "model.safetensors"))
    assert json.loads(open(os.path.join(trainer.args.output_dir, "search_results.json")).read())["best_model_arch"] == best


def test_advanced_mode_uses_the_user_builder_train_and_eval_functions(tmp_path, bert_teacher, mobilebert_student):
    trainer = make_trainer(tmp_path, mobilebert_student, bert_teacher)
    trainer.autodistillation_config = oob_config()
    calls = {"build": [], "train": 0, "eval": 0}

    def model_builder(arch):
        calls["build"].append(dict(arch))
        if arch["num_attention_heads"] == 3:
            raise InvalidArchitectureError("3 heads do not divide 8")
        return MobileBertForSequenceClassification(tiny_mobilebert_config(hidden_size=arch["hidden_size"]))

    def train_func(model):
        calls["train"] += 1
        return model

    def eval_func(model):
        calls["eval"] += 1
        return {"accuracy": model.config.hidden_size / 100}

    best = trainer.autodistillation(bert_teacher, model_builder, train_func=train_func, eval_func=eval_func,
                                    profile_func=fake_profile)
    assert calls["train"] == calls["eval"] == 2
    assert best["hidden_size"] in (16, 24)


def test_autodistillation_without_a_config_says_how_to_set_it(tmp_path, bert_teacher, mobilebert_student):
    trainer = make_trainer(tmp_path, mobilebert_student, bert_teacher)
    with pytest.raises(ConfigError, match="autodistillation_config"):
        trainer.autodistillation(bert_teacher)


def test_two_processes_search_together(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "scripts", "ddp_autodistill.py")
    run = accelerate_launch_two_cpu_processes(script, str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["archs"] == ranks[1]["archs"] and len(ranks[0]["archs"]) == 2
    assert ranks[0]["best"] == ranks[1]["best"]
    assert ranks[0]["weights_equal"]
    rows = json.loads((tmp_path / "out" / "search_results.json").read_text())["trials"]
    assert sum(r["state"] == "COMPLETE" for r in rows) == 2
