"""Texts without labels for the teacher to teach on (``data.unlabeled_file``), and the distillation train set.

Unlabelled rows carry the label :data:`UNLABELED` (-100, the value a cross-entropy ignores): the
:class:`~autodistill_trainer.stage_trainer.StageTrainer` computes the student's label loss over the labelled rows
of a batch only (exact under gradient accumulation: each micro-batch is weighted by its share of the window's
labelled rows) and the KD terms over every row. They are appended to the tokenized train split for distillation
only: the teacher's fine-tuning, the labels-only baseline and the validation split never see them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import datasets
from datasets import Dataset, DatasetDict, Value

from ..errors import ConfigError
from .augmentation import augment_dataset
from .files import PRETRAINING_FORMATS, check_data_file, load_local_files
from .tokenization import tokenize_dataset

logger = logging.getLogger(__name__)

#: Label of a row without one: ignored by the label loss, used by the KD terms.
UNLABELED = -100

__all__ = ["UNLABELED", "distillation_train_data", "distillation_train_set", "load_unlabeled_texts"]


def load_unlabeled_texts(
    path: str, text_column: str = "text", text_pair_column: Optional[str] = None, cache_dir: Optional[str] = None
) -> Dataset:
    """In-domain texts without labels: a .txt file (one text per line) or csv/tsv/json/jsonl with a text column.

    Returns a Dataset with the column ``text`` (and ``text_pair`` when ``text_pair_column`` is given); rows whose
    text is empty are dropped (a .txt file's blank lines). Other columns (a label column too) are ignored.

    Raises:
        ConfigError: the file is missing, a directory, of another extension, empty, without rows, unreadable, or
            without the text column (the message lists its columns); a .txt file with ``text_pair_column``.
    """
    try:
        builder, _ = check_data_file(path, PRETRAINING_FORMATS)
        if builder == "text" and text_pair_column:
            raise ConfigError(f"data file {path!r} is a .txt file, which has no {text_pair_column!r} column for the "
                              "sentence pairs of text_pair_column; give a csv/tsv/json/jsonl file with both columns.")
        dataset = load_local_files({"unlabeled": path}, cache_dir, PRETRAINING_FORMATS)["unlabeled"]
        wanted = {"text": "text"} if builder == "text" else {text_column: "text"}
        if text_pair_column:
            wanted[text_pair_column] = "text_pair"
        for column in wanted:
            if column not in dataset.column_names:
                raise ConfigError(f"data file {path!r} has no column {column!r} (columns: {dataset.column_names}); "
                                  "name the text column in data.text_column, or give a .txt file with one text a line.")
    except ConfigError as error:
        raise ConfigError(f"data.unlabeled_file: {error}") from None
    dataset = dataset.select_columns(list(wanted))
    renames = {old: new for old, new in wanted.items() if old != new}
    if renames:
        dataset = dataset.rename_columns(renames)
    for name in dataset.column_names:
        if dataset.features[name] != Value("string"):
            dataset = dataset.cast_column(name, Value("string"))
    before = len(dataset)
    dataset = dataset.filter(lambda row: all(row[c] is not None and str(row[c]).strip() for c in dataset.column_names),
                             desc="Dropping empty unlabelled texts")
    if len(dataset) < before and builder != "text":
        logger.warning("data.unlabeled_file %s: %d rows with an empty text dropped.", path, before - len(dataset))
    if len(dataset) == 0:
        raise ConfigError(f"data.unlabeled_file: data file {path!r} has no non-empty text; give a file with texts.")
    logger.info("Unlabelled texts for distillation: %d from %s", len(dataset), Path(path).name)
    return dataset


def _as_plain_labels(dataset: Dataset) -> Dataset:
    """``labels`` as int64 (a ClassLabel column cannot hold -100), or a new column of :data:`UNLABELED`."""
    if "labels" not in dataset.column_names:
        return dataset.add_column("labels", [UNLABELED] * len(dataset), feature=Value("int64"))
    if dataset.features["labels"] != Value("int64"):
        dataset = dataset.cast_column("labels", Value("int64"))
    return dataset


def distillation_train_set(train: Dataset, unlabelled: Sequence[Dataset]) -> Dataset:
    """The tokenized ``train`` split followed by tokenized unlabelled sets (their rows labelled :data:`UNLABELED`).

    Without unlabelled sets, ``train`` itself. The result's fingerprint depends only on its parts', so the teacher
    cache computes the teacher outputs of every row once and reruns read them.

    Raises:
        ConfigError: an unlabelled set's columns differ from the train split's (another tokenizer).
    """
    extra = [d for d in unlabelled if d is not None and len(d)]
    if not extra:
        return train
    parts = [_as_plain_labels(train)]
    for dataset in extra:
        if "labels" in dataset.column_names:
            dataset = dataset.remove_columns("labels")
        dataset = _as_plain_labels(dataset)
        if set(dataset.column_names) != set(parts[0].column_names):
            raise ConfigError(f"unlabelled rows have the columns {dataset.column_names}, the train split "
                              f"{parts[0].column_names}; tokenize both with the teacher's tokenizer.")
        parts.append(dataset.cast(parts[0].features) if dataset.features != parts[0].features else dataset)
    merged = datasets.concatenate_datasets(parts)
    logger.info("Distillation train set: %d labelled + %d unlabelled rows (KD terms only)", len(train),
                len(merged) - len(train))
    return merged


def distillation_train_data(raw: Mapping[str, Dataset], tokenized: Mapping[str, Dataset], data_args: Any,
                            tokenizer: Any, teacher: Any, cache_dir: Optional[str] = None) -> Dataset:
    """The rows the distillation stages train on: the tokenized train split, then the tokenized ``unlabeled``
    split (``data.unlabeled_file``) and, with ``data.augmentation``, augmented copies of the raw train and
    unlabelled texts (tokenized with ``data.max_length``, cached under `cache_dir`), all unlabelled rows -100.

    The validation split is never read. Without unlabelled data or augmentation: ``tokenized["train"]``.
    """
    extra = [tokenized["unlabeled"]] if "unlabeled" in tokenized else []
    augmentation = getattr(data_args, "augmentation", None)
    if augmentation is not None:
        for name in ("train", "unlabeled"):
            if name in raw:
                copies = augment_dataset(raw[name], augmentation, tokenizer, teacher)
                if len(copies):
                    split = f"augmented_{name}"
                    extra.append(tokenize_dataset(DatasetDict({split: copies}), tokenizer, data_args.max_length,
                                                  cache_dir=cache_dir)[split])
    return distillation_train_set(tokenized["train"], extra)
