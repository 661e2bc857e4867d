"""Unlabelled rows (label -100: data.unlabeled_file, augmented copies) feed the KD terms only: no label loss, exact
under gradient accumulation, never in the validation split; the unlabelled file is checked like the train file."""

from __future__ import annotations

import copy

import datasets
import pytest
import torch
from torch.nn import functional as F
from transformers import TrainingArguments

from autodistill_trainer import ConfigError
from autodistill_trainer.data.unlabeled import (
    UNLABELED,
    distillation_train_set,
    load_unlabeled_texts,
)
from autodistill_trainer.stage_trainer import StageTrainer
from helpers import VOCAB_SIZE, random_batch, tiny_mobilebert_config

LOGITS_KL = {"layer_mappings": [("classifier", "classifier")], "loss_types": ["KL"], "add_origin_loss": True}


def make_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=1, learning_rate=0.5,
                  optim="sgd", lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to=[],
                  save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _student():
    from transformers import MobileBertForSequenceClassification

    torch.manual_seed(1)
    return MobileBertForSequenceClassification(
        tiny_mobilebert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def test_the_label_loss_is_the_mean_over_labelled_rows_and_kd_terms_cover_every_row(tmp_path, bert_teacher):
    with torch.no_grad():  # a confident teacher, so that the KD term is far from zero
        bert_teacher.classifier.weight.mul_(300.0)
    student = _student().train()
    trainer = StageTrainer(model=student, teacher_model=bert_teacher, criterion=LOGITS_KL, args=make_args(tmp_path))
    batch = random_batch(batch_size=4, seed=3)
    batch["labels"] = torch.tensor([1, UNLABELED, 0, UNLABELED])
    loss = trainer.compute_loss(student, dict(batch))
    terms = dict(trainer.criterion.last_loss_terms)
    kd_name = next(iter(terms))
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher_logits = bert_teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected_origin = F.cross_entropy(logits[[0, 2]], torch.tensor([1, 0]))
    # the KD term is the criterion's over all four rows: the same batch without any labels gives the same value
    unlabelled_only = dict(batch, labels=torch.full((4,), UNLABELED))
    loss_without_labels = trainer.compute_loss(student, unlabelled_only)
    assert trainer.criterion.last_loss_terms[kd_name].item() == pytest.approx(terms[kd_name].item(), rel=1e-5)
    assert loss.item() == pytest.approx(terms[kd_name].item() + expected_origin.item(), rel=1e-5)
    assert loss_without_labels.item() == pytest.approx(terms[kd_name].item(), rel=1e-5)
    assert torch.isfinite(loss_without_labels)
    t = trainer.criterion.temperature
    kl_all_rows = F.kl_div(F.log_softmax(logits / t, -1), F.softmax(teacher_logits / t, -1), reduction="batchmean")
    assert terms[kd_name].item() == pytest.approx(kl_all_rows.item() * t * t, rel=1e-4)
    kl_labelled_rows = F.kl_div(F.log_softmax(logits[[0, 2]] / t, -1), F.softmax(teacher_logits[[0, 2]] / t, -1),
                                reduction="batchmean")
    assert terms[kd_name].item() != pytest.approx(kl_labelled_rows.item() * t * t, rel=1e-2)


def test_the_logged_label_loss_averages_only_batches_with_labelled_rows(tmp_path, bert_teacher):
    student = _student().train()
    trainer = StageTrainer(model=student, teacher_model=bert_teacher, criterion=LOGITS_KL, args=make_args(tmp_path))
    labelled = random_batch(batch_size=4, seed=3)
    trainer.compute_loss(student, dict(labelled))
    origin = float(trainer._kd_term_sums["origin_loss"])
    trainer.compute_loss(student, dict(labelled, labels=torch.full((4,), UNLABELED)))
    logs = {"loss": 1.0}
    trainer.log(logs)
    assert logs["origin_loss"] == pytest.approx(origin, rel=1e-5)


class MixedRows(torch.utils.data.Dataset):
    """8 rows, 2 labelled: micro-batches differ in labelled rows, and some have none (small batches: always)."""

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.input_ids = torch.randint(1, VOCAB_SIZE, (8, 10), generator=g)
        self.labels = torch.tensor([1, UNLABELED, UNLABELED, UNLABELED, UNLABELED, 0, UNLABELED, UNLABELED])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones(10, dtype=torch.long),
                "labels": self.labels[i]}


def _one_update(tmp_path, student, teacher, batch_size, accumulation):
    args = make_args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
    trainer = StageTrainer(model=student, teacher_model=teacher, criterion=LOGITS_KL, args=args,
                           train_dataset=MixedRows())
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(torch.isfinite(torch.tensor([e["loss"], e["origin_loss"]])).all() for e in logged), logged
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


@pytest.mark.parametrize("batch_size,accumulation", [(4, 2), (2, 4)])
def test_accumulation_with_unlabelled_rows_matches_the_larger_batch(tmp_path, bert_teacher, batch_size,
                                                                    accumulation):
    base = _student()
    big = _one_update(tmp_path / "a", copy.deepcopy(base), bert_teacher, batch_size=8, accumulation=1)
    small = _one_update(tmp_path / "b", copy.deepcopy(base), bert_teacher, batch_size, accumulation)
    assert any(not torch.equal(big[k], base.state_dict()[k]) for k in big), "the update changed nothing"
    for key in big:
        assert torch.isfinite(small[key]).all(), key
        assert torch.allclose(big[key], small[key], atol=1e-6), (key, (big[key] - small[key]).abs().max())


# ------------------------------------------------------------------------------------------------ data


def _tokenized(n: int, labels: bool):
    rows = {"input_ids": [[2, 5 + i, 3] for i in range(n)], "attention_mask": [[1, 1, 1]] * n}
    features = {"input_ids": datasets.Sequence(datasets.Value("int32")),
                "attention_mask": datasets.Sequence(datasets.Value("int8"))}
    if labels:
        rows["labels"] = [i % 2 for i in range(n)]
        features["labels"] = datasets.ClassLabel(names=["neg", "pos"])
    return datasets.Dataset.from_dict(rows, features=datasets.Features(features))


def test_the_distillation_train_set_appends_unlabelled_rows_with_label_minus_100():
    train, unlabelled = _tokenized(4, labels=True), _tokenized(3, labels=False)
    merged = distillation_train_set(train, [unlabelled])
    assert len(merged) == 7
    assert list(merged["labels"]) == [0, 1, 0, 1, UNLABELED, UNLABELED, UNLABELED]
    assert list(merged["input_ids"]) == list(train["input_ids"]) + list(unlabelled["input_ids"])
    assert distillation_train_set(train, []) is train
    again = distillation_train_set(train, [unlabelled])
    assert again._fingerprint == merged._fingerprint  # the teacher cache finds the same file on a rerun


def test_unlabelled_text_files_load_from_txt_csv_and_jsonl(tmp_path):
    (tmp_path / "u.txt").write_text("first text\n\nsecond text\n", encoding="utf-8")
    (tmp_path / "u.csv").write_text("id,sentence\n1,a csv text\n2,another\n", encoding="utf-8")
    (tmp_path / "u.jsonl").write_text('{"text": "json one"}\n{"text": "json two"}\n', encoding="utf-8")
    assert list(load_unlabeled_texts(str(tmp_path / "u.txt"))["text"]) == ["first text", "second text"]
    csv = load_unlabeled_texts(str(tmp_path / "u.csv"), text_column="sentence")
    assert list(csv["text"]) == ["a csv text", "another"] and csv.column_names == ["text"]
    assert list(load_unlabeled_texts(str(tmp_path / "u.jsonl"))["text"]) == ["json one", "json two"]


@pytest.mark.parametrize("name,content,message", [
    ("missing.csv", None, "does not exist"),
    ("empty.txt", "", "is empty"),
    ("blank.txt", "\n  \n", "is empty"),
    ("blank.jsonl", "{\"text\": \"  \"}\n", "no non-empty text"),
    ("header.csv", "text\n", "no rows"),
    ("other.csv", "sentence\nhello\n", "has no column 'text'"),
    ("data.parquet", "x", "unsupported extension"),
])
def test_a_bad_unlabelled_file_is_a_one_line_config_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as info:
        load_unlabeled_texts(str(path))
    assert "data.unlabeled_file" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ CLI


def test_the_cli_distils_on_unlabelled_and_augmented_rows_at_the_labelled_share_and_evaluates_on_validation(tmp_path):
    import json
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    recipe = yaml.safe_load((root / "recipes" / "smoke.yaml").read_text())
    texts = [f"an unlabelled review number {i}, quite good" for i in range(40)]
    (tmp_path / "unlabelled.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    recipe["data"].update(unlabeled_file=str(tmp_path / "unlabelled.txt"), max_train_samples=64,
                          augmentation={"copies": 1, "methods": ["mask", "delete"], "seed": 3}, labelled_fraction=0.5)
    recipe["auto_distillation"]["search"]["max_trials"] = 1
    recipe["baseline"]["enabled"] = False
    recipe["output_dir"] = str(tmp_path / "out")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(root / "run_autodistill.py"), str(tmp_path / "recipe.yaml")],
                         capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = re.search(r"Distillation train set: (\d+) labelled \+ (\d+) unlabelled rows", run.stderr)
    assert found, run.stderr[-3000:]
    labelled, unlabelled = int(found.group(1)), int(found.group(2))
    # 40 unlabelled texts, plus at most one copy of each of the 64 train and 40 unlabelled texts
    assert labelled == 64 and 40 < unlabelled <= 40 + 64 + 40
    batch = recipe["auto_distillation"]["train"]["per_device_train_batch_size"]
    share = f"Training batches: {batch // 2} labelled + {batch - batch // 2} unlabelled rows each"
    assert share in run.stderr, run.stderr[-3000:]  # data.labelled_fraction reaches the search's stages
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert 0.0 <= summary["best_student"]["accuracy"] <= 1.0


def test_only_a_training_set_with_unlabelled_rows_is_checked_batch_by_batch():
    from datasets import Dataset

    from autodistill_trainer.accumulation import may_hold_unlabelled_rows

    assert not may_hold_unlabelled_rows(Dataset.from_dict({"labels": [0, 1, 1]}))
    assert may_hold_unlabelled_rows(Dataset.from_dict({"labels": [0, -100, 1]}))
    assert may_hold_unlabelled_rows(Dataset.from_dict({"label": [-100, -100]}))
    assert may_hold_unlabelled_rows(Dataset.from_dict({"labels": [[0, -100], [1, 2]]}))  # nested: cannot tell
    assert may_hold_unlabelled_rows([{"labels": 0}])  # not a datasets.Dataset: cannot tell
    assert not may_hold_unlabelled_rows(Dataset.from_dict({"text": ["a"]}))  # no label column, no label loss
