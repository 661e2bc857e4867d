"""data.task: pretraining (MLM + next-sentence distillation) and the GPU recipes: mobilebert_pretraining.yaml (the
design's 24-layer MobileBERT from BERT-large) and mobilebert_sst2.yaml. Offline: Hub names are never fetched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from autodistill_trainer.recipe import build_recipe, load_recipe, read_recipe
from autodistill_trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PRETRAINING = ROOT / "recipes" / "mobilebert_pretraining.yaml"
SST2 = ROOT / "recipes" / "mobilebert_sst2.yaml"
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


# ------------------------------------------------------------------------------------------------ shipped recipes


def test_pretraining_recipe_builds_a_24_layer_mobilebert_for_pretraining_student():
    from transformers import MobileBertForPreTraining

    from autodistill_trainer.builders import build_model
    from autodistill_trainer.validation import build_student_base_config

    recipe = load_recipe(str(PRETRAINING))  # the module-name check runs on a meta-device student, no Hub
    assert recipe.data.task == "pretraining" and recipe.teacher.model_name_or_path == "bert-large-uncased"
    space = recipe.autodistillation.search.search_space
    assert space["hidden_size"] == [128, 256, 384, 512]
    assert "246" in PRETRAINING.read_text() and "typo" in PRETRAINING.read_text()
    smallest = {key: min(values) for key, values in space.items()}
    student = build_model(MobileBertForPreTraining, build_student_base_config(recipe.model, recipe.data), smallest)
    assert isinstance(student, MobileBertForPreTraining)
    assert student.config.num_hidden_layers == 24 and len(student.mobilebert.encoder.layer) == 24
    assert student.config.hidden_size == 128 and student.config.true_hidden_size == 64


def test_pretraining_recipe_flash_distillation_is_the_designs_24_stages():
    recipe = load_recipe(str(PRETRAINING))
    flash, regular = recipe.autodistillation.flash_distillation, recipe.autodistillation.regular_distillation
    stages = flash.stages()
    assert len(stages) == 24
    for i, stage in enumerate(stages):
        attention, output = stage.layer_mappings
        assert (attention.student_layer, attention.student_process) == (
            f"mobilebert.encoder.layer.{i}.attention.self",
            "1",
        )
        assert (attention.teacher_layer, attention.teacher_process) == (f"bert.encoder.layer.{i}.attention.self", "1")
        assert (output.student_layer, output.teacher_layer) == (
            f"mobilebert.encoder.layer.{i}.output",
            f"bert.encoder.layer.{i}.output",
        )
        assert stage.loss_types == ["KL", "MSE"] and stage.loss_weights == [0.5, 0.5] and stage.train_steps == 500
        assert stage.block_prefixes[-1] == f"mobilebert.encoder.layer.{i}"
    assert stages[0].block_prefixes == ["mobilebert.embeddings", "mobilebert.encoder.layer.0"]
    (mapping,) = regular.mappings()
    assert (mapping.student_layer, mapping.student_process, mapping.teacher_layer, mapping.teacher_process) == (
        "cls",
        "0",
        "cls",
        "0",
    )
    assert regular.train_steps == 25000 and regular.add_origin_loss is True


def test_pretraining_recipe_module_names_are_checked_offline():
    data = read_recipe(str(PRETRAINING))
    data["auto_distillation"]["flash_distillation"]["block_names"][5] = "mobilebert.encoder.layers.5"
    with pytest.raises(ConfigError, match="has no module 'mobilebert.encoder.layers.5'"):
        build_recipe(data, str(PRETRAINING))


def test_sst2_recipe_validates_offline():
    recipe = load_recipe(str(SST2))
    assert recipe.data.task == "text-classification"
    assert (recipe.data.dataset_name, recipe.data.dataset_config_name, recipe.data.text_column) == (
        "glue",
        "sst2",
        "sentence",
    )
    assert recipe.teacher.model_name_or_path == "textattack/bert-base-uncased-SST-2"
    assert recipe.model.student_class == "MobileBertForSequenceClassification"
    assert recipe.model.base_config["num_hidden_layers"] == 12 and recipe.evaluation.metrics == ["accuracy"]
    assert "1 GPU" in SST2.read_text() and "Hardware and time" in SST2.read_text()


# ------------------------------------------------------------------------------------------------ data and metric


def test_nsp_pairs_are_next_lines_or_random_other_lines_half_and_half():
    from autodistill_trainer.data import build_nsp_pairs

    lines = [str(i) for i in range(2000)]
    pairs = build_nsp_pairs(lines, seed=3).to_dict()
    first = np.array(pairs["text"], dtype=int)
    second = np.array(pairs["text_pair"], dtype=int)
    labels = np.array(pairs["next_sentence_label"])
    assert len(first) == 1999 and (first == np.arange(1999)).all()
    assert ((second == first + 1) == (labels == 0)).all() and (second != first).all()
    assert 0.45 < labels.mean() < 0.55
    assert build_nsp_pairs(lines, seed=3).to_dict() == pairs  # seeded


def test_local_text_corpus_drops_empty_lines_and_holds_out_the_tail(tmp_path):
    from autodistill_trainer.data import load_pretraining_data

    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"line {i}\n   " for i in range(40)) + "\n")
    data = load_pretraining_data(train_file=str(path), validation_split_size=10)
    assert len(data["train"]) == 29 and len(data["validation"]) == 9
    assert data["train"][0]["text"] == "line 0" and data["validation"][0]["text"] == "line 30"
    assert all(t.strip() for t in data["train"]["text_pair"])
    with pytest.raises(ConfigError, match="validation_split_size"):
        load_pretraining_data(train_file=str(path))


def test_mlm_collator_keeps_next_sentence_label_and_model_returns_a_loss():
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, MobileBertForPreTraining

    from autodistill_trainer.builders import default_mobilebert_base_config
    from autodistill_trainer.data import offline_teacher_path

    tokenizer = AutoTokenizer.from_pretrained(offline_teacher_path())
    encoded = tokenizer(["a fine film", "so dull"], ["it is", "really"], truncation=True, max_length=16)
    examples = [{**{k: v[i] for k, v in encoded.items()}, "next_sentence_label": i} for i in range(2)]
    batch = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)(examples)
    assert batch["next_sentence_label"].tolist() == [0, 1] and batch["labels"].shape == batch["input_ids"].shape
    config = default_mobilebert_base_config(vocab_size=len(tokenizer), num_hidden_layers=1, embedding_size=32)
    assert MobileBertForPreTraining(config)(**batch).loss is not None


def test_mlm_accuracy_scores_masked_tokens_from_argmax_ids():
    from autodistill_trainer.metrics import build_compute_metrics, build_preprocess_logits_for_metrics

    preprocess = build_preprocess_logits_for_metrics(["mlm_accuracy"])
    assert build_preprocess_logits_for_metrics(["accuracy"]) is None
    logits = torch.zeros(2, 3, 10)
    logits[0, 0, 4] = logits[0, 1, 5] = logits[1, 2, 7] = 1.0
    ids = preprocess((logits, torch.zeros(2, 2)), None)
    assert ids.shape == (2, 3)
    labels = np.array([[4, 6, -100], [-100, -100, 7]])
    compute = build_compute_metrics(["mlm_accuracy"])
    assert compute((ids.numpy(), (labels, np.array([0, 1])))) == {"mlm_accuracy": pytest.approx(2 / 3)}
    with pytest.raises(ConfigError, match="cannot be mixed"):
        build_compute_metrics(["mlm_accuracy", "accuracy"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"task": "pretrain"}}, "data.task 'pretrain' is not supported"),
        (
            {"teacher": {"model_name_or_path": None, "pretrained_encoder": "offline:all-MiniLM-L6-v2"}},
            "teacher.pretrained_encoder",
        ),
        ({"auto_distillation": {"evaluation": {"metrics": ["accuracy"]}}}, "use metrics: \\[mlm_accuracy\\]"),
        ({"model": {"student_class": "MobileBertForSequenceClassification"}}, "does not take next_sentence_label"),
    ],
)
def test_pretraining_recipe_errors(change, message):
    data = read_recipe(str(PRETRAINING))
    for section, values in change.items():
        target = data[section]
        for key, value in values.items():
            if isinstance(value, dict):
                target[key].update(value)
            else:
                target[key] = value
    with pytest.raises(ConfigError, match=message):
        build_recipe(data, str(PRETRAINING))


def test_mlm_accuracy_needs_the_pretraining_task():
    data = read_recipe(str(ROOT / "recipes" / "smoke.yaml"))
    data["auto_distillation"]["evaluation"]["metrics"] = ["mlm_accuracy"]
    with pytest.raises(ConfigError, match="need data.task: pretraining"):
        build_recipe(data)


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def pretraining_run(tmp_path_factory):
    """A tiny pretraining search through the CLI: local BertForPreTraining teacher, local text corpus."""
    from transformers import AutoTokenizer, BertConfig, BertForPreTraining

    from autodistill_trainer.data import load_rotten_tomatoes_demo, offline_teacher_path

    tmp = tmp_path_factory.mktemp("pretraining")
    tokenizer = AutoTokenizer.from_pretrained(offline_teacher_path())
    torch.manual_seed(0)
    teacher = BertForPreTraining(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            attn_implementation="eager",
        )
    )
    teacher.save_pretrained(tmp / "teacher")
    tokenizer.save_pretrained(tmp / "teacher")
    snippets = load_rotten_tomatoes_demo()["train"].select(range(300))["text"]
    (tmp / "corpus.txt").write_text("\n\n".join(snippets) + "\n")

    recipe = {
        "model": {
            "name": "tiny_pretraining",
            "student_class": "MobileBertForPreTraining",
            "base_config": {"num_hidden_layers": 2, "embedding_size": 32},
        },
        "teacher": {"model_name_or_path": str(tmp / "teacher")},
        "data": {
            "task": "pretraining",
            "train_file": str(tmp / "corpus.txt"),
            "validation_split_size": 0.1,
            "max_length": 32,
            "max_eval_samples": 32,
        },
        "auto_distillation": {
            "search": {
                "search_space": {
                    "hidden_size": [64, 96],
                    "intra_bottleneck_size": [32],
                    "num_attention_heads": [2],
                    "intermediate_size": [64],
                    "num_feedforward_networks": [1],
                },
                "search_algorithm": "random",
                "metrics": ["mlm_accuracy", "latency"],
                "higher_is_better": [True, False],
                "max_trials": 2,
                "seed": 0,
            },
            "flash_distillation": {  # the design's hand-written form, for 2 layers
                "block_names": [["mobilebert.embeddings", "mobilebert.encoder.layer.0"], "mobilebert.encoder.layer.1"],
                "layer_mappings_for_knowledge_transfer": [
                    [
                        [
                            f"mobilebert.encoder.layer.{i}.attention.self",
                            "1",
                            f"bert.encoder.layer.{i}.attention.self",
                            "1",
                        ],
                        [f"mobilebert.encoder.layer.{i}.output", f"bert.encoder.layer.{i}.output"],
                    ]
                    for i in range(2)
                ],
                "loss_types": [["KL", "MSE"]] * 2,
                "loss_weights": [[0.5, 0.5]] * 2,
                "train_steps": [2, 2],
            },
            "regular_distillation": {
                "layer_mappings_for_knowledge_transfer": [[["cls", "0", "cls", "0"]]],
                "loss_types": [["KL"]],
                "add_origin_loss": [True],
                "train_steps": [3],
            },
            "train": {
                "per_device_train_batch_size": 8,
                "per_device_eval_batch_size": 16,
                "learning_rate": 1e-3,
                "report_to": [],
                "save_strategy": "no",
                "disable_tqdm": True,
                "seed": 0,
                "logging_steps": 50,
            },
            "evaluation": {"metrics": ["mlm_accuracy"], "latency_repeats": 3, "latency_warmup": 1},
        },
        "baseline": {"enabled": True, "train_steps": 2},
        "output_dir": str(tmp / "out"),
    }
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run = subprocess.run(
        [sys.executable, str(ROOT / "run_autodistill.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return tmp / "out", run


def test_tiny_pretraining_search_runs_end_to_end(pretraining_run):
    out, run = pretraining_run
    results = json.loads((out / "search_results.json").read_text())
    trained = [t for t in results["trials"] if t["state"] == "COMPLETE"]
    assert len(trained) == 2
    for trial in trained:
        assert 0 <= trial["metrics"]["mlm_accuracy"] <= 1 and trial["metrics"]["latency"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert "mlm_accuracy" in summary["teacher"] and "mlm_accuracy" in summary["best_student"]
    assert summary["baseline_without_distillation"]["mlm_accuracy"] is not None
    assert "Distillation stage 3/3 (regular)" in run.stderr and "mlm acc" in run.stdout
    card = (out / "best_model" / "README.md").read_text()
    assert "pipeline_tag: fill-mask" in card and 'pipeline("fill-mask"' in card
    assert json.loads((out / "best_model" / "config.json").read_text())["architectures"] == ["MobileBertForPreTraining"]


def test_pretraining_best_model_fills_masks_with_a_plain_pipeline(pretraining_run, tmp_path):
    out, _ = pretraining_run
    code = (
        "import sys\n"
        "from transformers import pipeline\n"
        "fill = pipeline('fill-mask', model=sys.argv[1])\n"
        "print(type(fill.model).__name__, len(fill(f'the movie was {fill.tokenizer.mask_token} .')))\n"
        "assert not any(m.startswith('autodistill_trainer') for m in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(out / "best_model")],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-2:] == ["MobileBertForMaskedLM", "5"]
