"""data.labelled_fraction: every distillation batch holds round(fraction * batch) labelled rows and unlabelled (-100)
rows fill the rest; deterministic under the seed; grouped by length under group_by_length; evaluation untouched."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from transformers import MobileBertForSequenceClassification, TrainingArguments

from autodistill_trainer import ConfigError
from autodistill_trainer.configs import DataArguments
from autodistill_trainer.labelled_share import MEGABATCH, LabelledShareSampler, labelled_rows_per_batch
from autodistill_trainer.schedule import run_distillation
from autodistill_trainer.stage_trainer import StageTrainer
from helpers import VOCAB_SIZE, pad_collator, tiny_mobilebert_config

LOGITS_KL = {"layer_mappings": [("classifier", "classifier")], "loss_types": ["KL"], "add_origin_loss": True}


def _batches(order: list[int], size: int) -> list[list[int]]:
    assert len(order) % size == 0
    return [order[i:i + size] for i in range(0, len(order), size)]


# ------------------------------------------------------------------------------------------------ sampler


def test_every_batch_holds_the_rounded_share_of_labelled_rows_and_each_labelled_row_once_an_epoch():
    mask = [i % 5 == 0 for i in range(50)]  # 10 labelled rows (0, 5, ..., 45) among 40 unlabelled ones
    sampler = LabelledShareSampler(mask, fraction=0.5, batch_size=4, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == 5 * 4  # ceil(10 labelled / 2 per batch) batches
    for batch in _batches(order, 4):
        assert [mask[i] for i in batch] == [True, True, False, False]
    labelled = [i for i in order if mask[i]]
    unlabelled = [i for i in order if not mask[i]]
    assert sorted(labelled) == list(range(0, 50, 5))  # each labelled row exactly once
    assert len(set(unlabelled)) == len(unlabelled) == 10  # distinct: drawn from one permutation


def test_an_epoch_whose_labelled_rows_do_not_fill_the_last_batch_takes_rows_of_the_next_permutation():
    mask = [True] * 5 + [False] * 3  # 5 labelled rows, 3 per batch: 2 batches; 2 unlabelled rows a batch
    sampler = LabelledShareSampler(mask, fraction=0.6, batch_size=5, seed=1)
    batches = _batches(list(sampler), 5)
    assert len(batches) == 2
    assert all(sum(mask[i] for i in batch) == 3 for batch in batches)
    labelled = [i for batch in batches for i in batch if mask[i]]
    assert set(labelled) == set(range(5)) and len(labelled) == 6  # every row, one of them twice
    unlabelled = [i for batch in batches for i in batch if not mask[i]]
    assert set(unlabelled[:3]) == {5, 6, 7}  # the unlabelled rows cycle through whole permutations


@pytest.mark.parametrize("fraction,batch_size,expected", [(0.5, 32, 16), (0.3, 5, 2), (0.25, 4, 1), (0.7, 3, 2),
                                                          (0.1, 32, 3)])
def test_the_labelled_rows_per_batch_are_the_product_rounded_half_up(fraction, batch_size, expected):
    assert labelled_rows_per_batch(fraction, batch_size) == expected == math.floor(fraction * batch_size + 0.5)


@pytest.mark.parametrize("fraction,batch_size", [(0.1, 4), (0.9, 4), (0.4, 1)])
def test_a_share_that_leaves_no_labelled_or_no_unlabelled_row_is_a_config_error(fraction, batch_size):
    with pytest.raises(ConfigError, match="data.labelled_fraction") as info:
        labelled_rows_per_batch(fraction, batch_size)
    assert str(batch_size) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("mask,which", [([True, True], "unlabelled"), ([False, False], "labelled")])
def test_a_train_set_without_labelled_or_without_unlabelled_rows_is_a_config_error(mask, which):
    with pytest.raises(ConfigError, match=f"no {which}"):
        LabelledShareSampler(mask, fraction=0.5, batch_size=2, seed=0)


def test_the_order_is_deterministic_under_the_seed_and_changes_with_the_seed_and_the_epoch():
    mask = [i % 3 == 0 for i in range(60)]

    def epochs(seed: int) -> list[list[int]]:
        sampler = LabelledShareSampler(mask, 0.5, 4, seed)
        return [list(sampler) for _ in range(2)]  # no set_epoch: the epoch counts up

    first, again, other = epochs(7), epochs(7), epochs(8)
    assert first == again
    assert first[0] != first[1] and first != other
    sampler = LabelledShareSampler(mask, 0.5, 4, 7)
    sampler.set_epoch(1)  # the Trainer's call gives that epoch's order
    assert list(sampler) == first[1]


def test_group_by_length_sorts_each_megabatch_longest_first_and_keeps_the_share():
    mask = [i % 2 == 0 for i in range(4 * (MEGABATCH + 10))]
    lengths = [(i * 37) % 101 + 1 for i in range(len(mask))]
    sampler = LabelledShareSampler(mask, 0.5, 4, seed=3, lengths=lengths)
    batches = _batches(list(sampler), 4)
    assert len(batches) == MEGABATCH + 10
    assert all([mask[i] for i in batch] == [True, True, False, False] for batch in batches)
    for group in (batches[:MEGABATCH], batches[MEGABATCH:]):
        for part in (slice(0, 2), slice(2, 4)):  # the labelled rows, then the unlabelled ones
            flat = [lengths[i] for batch in group for i in batch[part]]
            assert flat == sorted(flat, reverse=True)
    ungrouped = LabelledShareSampler(mask, 0.5, 4, seed=3)
    assert sorted(list(sampler)) == sorted(list(ungrouped))  # the same rows, grouped


# ------------------------------------------------------------------------------------------------ config


def test_data_labelled_fraction_is_a_share_in_the_open_unit_interval_with_unlabelled_rows():
    assert DataArguments(unlabeled_file="more.txt", labelled_fraction=0.5).labelled_fraction == 0.5
    assert DataArguments(augmentation={"copies": 2}, labelled_fraction=0.25).labelled_fraction == 0.25
    assert DataArguments(unlabeled_file="more.txt").labelled_fraction is None
    for bad in (0, 1, 1.5, -0.2, True, "0.5", float("nan")):
        with pytest.raises(ConfigError, match="data.labelled_fraction must be a share in") as info:
            DataArguments(unlabeled_file="more.txt", labelled_fraction=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="data.unlabeled_file or data.augmentation"):
        DataArguments(labelled_fraction=0.5)


# ------------------------------------------------------------------------------------------------ training


def _mixed_rows(labelled: int, unlabelled: int) -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(labelled + unlabelled):
        length = int(torch.randint(3, 12, (1,), generator=g))
        rows["input_ids"].append(torch.randint(1, VOCAB_SIZE, (length,), generator=g).tolist())
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(i % 2 if i < labelled else -100)
    return datasets.Dataset.from_dict(rows)


def _args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3,
                  logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    return TrainingArguments(**{**kwargs, **overrides})


def _student():
    torch.manual_seed(1)
    return MobileBertForSequenceClassification(tiny_mobilebert_config())


@pytest.mark.parametrize("strategy", ["random", "group_by_length"])
def test_a_stage_trainer_with_a_labelled_fraction_trains_on_batches_of_that_share(tmp_path, bert_teacher, strategy):
    data = _mixed_rows(labelled=6, unlabelled=30)
    trainer = StageTrainer(model=_student(), teacher_model=bert_teacher, criterion=LOGITS_KL, train_dataset=data,
                           eval_dataset=data, args=_args(tmp_path, train_sampling_strategy=strategy),
                           data_collator=pad_collator)
    assert not isinstance(trainer._get_train_sampler(), LabelledShareSampler)  # unset: the Trainer's own sampler
    trainer.labelled_fraction = 0.25
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == 6  # ceil(6 labelled / 1 per batch)
    assert all(int(b["labels"].ne(-100).sum()) == 1 and len(b["labels"]) == 4 for b in batches)
    if strategy == "group_by_length":  # one megabatch: the labelled rows come longest first
        widths = [int(b["attention_mask"][0].sum()) for b in batches]
        assert widths == sorted(widths, reverse=True)
    evaluated = torch.cat([b["labels"] for b in trainer.get_eval_dataloader()])
    assert sorted(evaluated.tolist()) == sorted(data["labels"])  # evaluation: every row once (the Trainer's order)


class LabelRecorder:
    """A collator that pads and keeps each batch's labels."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    def __call__(self, features):
        batch = pad_collator(features)
        self.seen.append(batch["labels"].tolist())
        return batch


def test_run_distillation_gives_every_stage_batches_of_the_labelled_fraction(tmp_path, bert_teacher):
    recorder = LabelRecorder()
    data = _mixed_rows(labelled=8, unlabelled=40)
    run_distillation(_student(), bert_teacher, _args(tmp_path, max_steps=1), data,
                     regular_distillation={"train_steps": 5}, data_collator=recorder, labelled_fraction=0.5)
    assert len(recorder.seen) >= 5  # 5 steps (the dataloader may collate one batch ahead)
    assert all(sum(label != -100 for label in labels) == 2 for labels in recorder.seen)


def test_distill_gives_its_stages_the_trainers_labelled_fraction(tmp_path, bert_teacher):
    from autodistill_trainer import DistillationTrainer

    recorder = LabelRecorder()
    data = _mixed_rows(labelled=8, unlabelled=40)
    trainer = DistillationTrainer(model=_student(), teacher_model=bert_teacher, criterion=LOGITS_KL,
                                  args=_args(tmp_path), train_dataset=data, data_collator=recorder)
    trainer.labelled_fraction = 0.5
    trainer.distill(regular_distillation={"train_steps": 4})
    assert len(recorder.seen) >= 4 and all(sum(label != -100 for label in labels) == 2 for labels in recorder.seen)
