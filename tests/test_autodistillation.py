"""DistillationTrainer.autodistillation(): OOB and advanced modes of the design, and 2 processes."""

from __future__ import annotations

import json
import os

import pytest
from transformers import MobileBertForSequenceClassification, TrainerCallback, TrainingArguments

from autodistill_trainer import (
    AutoDistillation,
    AutoDistillationResult,
    ConfigError,
    DistillationTrainer,
    InvalidArchitectureError,
)
from autodistill_trainer.search.oob import OOBContext, run_autodistillation
from helpers import tiny_mobilebert_config
from helpers import RandomTextClassification
from launch import accelerate_launch_two_cpu_processes

SPACE = {
    "hidden_size": [16, 24],
    "intra_bottleneck_size": [8],
    "num_attention_heads": [2, 3],
    "intermediate_size": [32],
    "num_feedforward_networks": [1],
}


def make_trainer(tmp_path, student, teacher):
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=RandomTextClassification(16),
        eval_dataset=RandomTextClassification(8, seed=1),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )


def oob_config(max_trials=2):
    return {
        "search": {
            "search_space": SPACE,
            "search_algorithm": "grid",
            "metrics": ["accuracy", "latency"],
            "higher_is_better": [True, False],
            "max_trials": max_trials,
            "seed": 1,
        },
        "flash_distillation": {
            "knowledge_transfer": {
                "block_names": "auto",
                "layer_mappings_for_knowledge_transfer": "auto",
                "train_steps": 2,
            }
        },
        "regular_distillation": {
            "layer_mappings_for_knowledge_transfer": [[("classifier", "classifier")]],
            "loss_types": [["KL"]],
            "add_origin_loss": [True],
            "train_steps": [2],
        },
    }


def fake_profile(model):
    return {"params": sum(p.numel() for p in model.parameters()), "flops": 1, "latency": model.config.hidden_size / 10}


def test_oob_mode_builds_distils_and_evaluates_every_valid_arch(tmp_path, bert_teacher, mobilebert_student):
    trainer = make_trainer(tmp_path, mobilebert_student, bert_teacher)
    trainer.autodistillation_config = oob_config()
    result = trainer.autodistillation(
        bert_teacher, model_cls=MobileBertForSequenceClassification, profile_func=fake_profile
    )
    assert isinstance(result, AutoDistillationResult)
    agent = trainer.autodistillation_agent
    assert result.rows == agent.search_result and result.n_trained == 2
    trained = [r for r in result.rows if r["state"] == "COMPLETE"]
    assert sorted(r["arch"]["hidden_size"] for r in trained) == [16, 24]
    assert all(r["arch"]["num_attention_heads"] == 2 for r in trained)  # 3 heads never divide 8: never trained
    invalid = [r for r in result.rows if r["status"] == "invalid"]
    assert invalid and all(r["arch"]["num_attention_heads"] == 3 for r in invalid)
    assert len(result.rows) == len(invalid) + 2
    for row in trained:  # each trial's distilled student is saved as a plain model, and its row says where
        slug = "_".join(f"{k}-{row['arch'][k]}" for k in SPACE)
        model_dir = os.path.join(trainer.args.output_dir, "trials", slug, "model")
        assert row["model_dir"] == model_dir and os.path.isfile(os.path.join(model_dir, "model.safetensors"))
    assert result.best_model_dir == result.best_row["model_dir"] and result.best_row["arch"] == result.best_model_arch
    saved = json.loads(open(os.path.join(trainer.args.output_dir, "search_results.json")).read())
    assert saved["best_model_arch"] == result.best_model_arch and saved["best_model_dir"] == result.best_model_dir


def test_callbacks_given_to_the_trainer_see_the_stages_of_every_trial(tmp_path, bert_teacher, mobilebert_student):
    class StageCounter(TrainerCallback):
        def __init__(self):
            self.train_begins, self.steps = 0, 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begins += 1

        def on_step_end(self, args, state, control, **kwargs):
            self.steps += 1

    trainer = make_trainer(tmp_path, mobilebert_student, bert_teacher)
    counter = StageCounter()
    trainer.add_callback(counter)
    trainer.autodistillation_config = oob_config()
    result = trainer.autodistillation(bert_teacher, model_cls=MobileBertForSequenceClassification,
                                      profile_func=fake_profile)
    stages_per_trial = 2 + 1  # two flash blocks (auto: one per student layer) and the regular stage
    assert result.n_trained == 2
    assert counter.train_begins == 2 * stages_per_trial
    assert counter.steps == 2 * (2 + 2 + 2)  # 2 steps per flash block, 2 regular steps, per trial


def test_oob_multi_fidelity_trains_each_rung_for_its_share_of_the_steps(tmp_path, bert_teacher, mobilebert_student):
    class StepCounter(TrainerCallback):
        def __init__(self):
            self.steps: list[int] = []

        def on_train_end(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    trainer = make_trainer(tmp_path, mobilebert_student, bert_teacher)
    counter = StepCounter()
    trainer.add_callback(counter)
    config = oob_config(max_trials=2)
    config["search"]["multi_fidelity"] = {"min_fraction": 0.5, "reduction_factor": 2}  # rungs 0.5 and 1
    config["flash_distillation"]["knowledge_transfer"]["train_steps"] = 4
    config["regular_distillation"]["train_steps"] = [3]
    trainer.autodistillation_config = config
    result = trainer.autodistillation(bert_teacher, model_cls=MobileBertForSequenceClassification,
                                      profile_func=fake_profile)
    # two valid archs at rung 0 (half the steps: 2 + 2 flash, ceil(1.5) = 2 regular), the better one promoted to 1
    assert counter.steps == [2, 2, 2] * 2 + [4, 4, 3]
    rows = [r for r in result.rows if r["status"] == "trained"]
    assert sorted((r["rung"], r["budget"]) for r in rows) == [(0, 0.5), (0, 0.5), (1, 1.0)]
    full = next(r for r in rows if r["budget"] == 1.0)
    slug = "_".join(f"{k}-{full['arch'][k]}" for k in SPACE)
    assert result.best_model_dir == full["model_dir"] == os.path.join(trainer.args.output_dir, "trials", slug, "model")
    low = next(r for r in rows if r["budget"] == 0.5 and r["arch"] == full["arch"])
    assert low["model_dir"] == os.path.join(trainer.args.output_dir, "trials", slug + "_budget-0.5", "model")
    assert [r["number"] for r in result.pareto_front] == [full["number"]]


def test_oob_search_runs_from_a_context_without_a_trainer(tmp_path, bert_teacher, mobilebert_student):
    args = TrainingArguments(
        output_dir=str(tmp_path / "ctx"),
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    context = OOBContext(
        args=args,
        train_dataset=RandomTextClassification(8),
        eval_dataset=RandomTextClassification(4, seed=1),
        student_config=mobilebert_student.config,
        student_cls=MobileBertForSequenceClassification,
    )
    config = oob_config(max_trials=1)
    config["search"].update(metrics=["loss"], higher_is_better=[False])  # evaluate() reports it without compute_metrics
    agent, result = run_autodistillation(context, bert_teacher, config, profile_func=fake_profile)
    assert isinstance(agent, AutoDistillation) and result.n_trained == 1
    assert result.best_model_dir == os.path.join(
        args.output_dir, "trials", "_".join(f"{k}-{result.best_model_arch[k]}" for k in SPACE), "model"
    )
    assert os.path.isfile(os.path.join(result.best_model_dir, "config.json"))
    assert result.best_row["metrics"]["loss"] > 0


def test_oob_mode_without_compute_metrics_fails_before_training(tmp_path, bert_teacher, mobilebert_student):
    trainer = make_trainer(tmp_path, mobilebert_student, bert_teacher)
    trainer.compute_metrics = None
    trainer.autodistillation_config = oob_config()
    with pytest.raises(ConfigError, match=r"compute_metrics.*'accuracy'|'accuracy'.*compute_metrics"):
        trainer.autodistillation(bert_teacher, model_cls=MobileBertForSequenceClassification, profile_func=fake_profile)
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "trials"))
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "search_results.json"))


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

    def eval_func(model):  # hidden 16 is both more accurate and faster (fake_profile): it dominates hidden 24
        calls["eval"] += 1
        return {"accuracy": 0.9 if model.config.hidden_size == 16 else 0.5}

    result = trainer.autodistillation(
        bert_teacher, model_builder, train_func=train_func, eval_func=eval_func, profile_func=fake_profile
    )
    assert calls["train"] == calls["eval"] == 2 and len(calls["build"]) >= 3
    assert result.best_model_arch == {**{k: v[0] for k, v in SPACE.items()}, "num_attention_heads": 2}
    assert [r["arch"]["hidden_size"] for r in result.pareto_front] == [16]
    assert result.best_model_dir is None  # the user's train_func saved nothing


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


def test_the_reports_the_cli_writes_are_one_call_away_from_python(tmp_path, bert_teacher, mobilebert_student):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification

    from autodistill_trainer.report import write_search_reports

    trainer = make_trainer(tmp_path, mobilebert_student, bert_teacher)
    trainer.autodistillation_config = oob_config()
    result = trainer.autodistillation(bert_teacher, model_cls=MobileBertForSequenceClassification,
                                      profile_func=fake_profile)
    reports = tmp_path / "reports"
    written = write_search_reports(result, reports, teacher={"accuracy": 0.9, "latency": 5.0, "params": 1000})
    assert {p.name for p in written.values()} == {"search_results.csv", "search_results.md", "pareto_front.png",
                                                  "best_model"}
    assert (reports / "search_results.csv").read_text().count("\n") == len(result.rows) + 1  # header + one per row
    model = AutoModelForSequenceClassification.from_pretrained(reports / "best_model")
    assert model.config.hidden_size == result.best_model_arch["hidden_size"]
    card = ModelCard.load(reports / "best_model" / "README.md")
    assert card.data.eval_results[0].metric_value == result.best_row["metrics"]["accuracy"]
