"""Text classification data: the offline demo, a Hub data set, or local csv/tsv/json/jsonl files."""

from __future__ import annotations

import logging
from typing import Optional, Union

from datasets import Dataset, DatasetDict, Value

from ..errors import ConfigError
from .demo import DEMO_DATASET_NAME, DEMO_LABEL_NAMES, load_rotten_tomatoes_demo
from .files import load_local_files
from .labels import check_empty_cells, check_label_coverage, encode_labels
from .splits import check_column, load_hub_splits, log_splits, stratified_split

logger = logging.getLogger(__name__)


def _canonical_columns(
    dataset: DatasetDict, text_column: str, text_pair_column: Optional[str], label_column: str
) -> DatasetDict:
    """Keep only the chosen columns and rename them to text / text_pair / label."""
    mapping = {text_column: "text", label_column: "label"}
    if text_pair_column:
        mapping[text_pair_column] = "text_pair"
    if len(mapping) < (3 if text_pair_column else 2):
        raise ConfigError(f"text_column, text_pair_column and label_column must differ; got {list(mapping)}.")
    for argument, name in (("text_column", text_column), ("text_pair_column", text_pair_column),
                           ("label_column", label_column)):
        if name:
            check_column(dataset, name, argument)
    out = {}
    for split, ds in dataset.items():
        ds = ds.remove_columns([c for c in ds.column_names if c not in mapping])
        renames = {old: new for old, new in mapping.items() if old != new}
        out[split] = _text_as_string(ds.rename_columns(renames) if renames else ds, mapping)
    return DatasetDict(out)


def _text_as_string(ds: Dataset, mapping: dict[str, str]) -> Dataset:
    """Text columns as strings: numbers (a JSON text column of numbers) are cast; anything else is refused."""
    for original, name in mapping.items():
        if name == "label":
            continue
        feature = ds.features[name]
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
            continue
        if isinstance(feature, Value) and feature.dtype.startswith(("int", "uint", "float", "bool")):
            ds = ds.cast_column(name, Value("string"))
        else:
            raise ConfigError(
                f"The column {original!r} holds {feature}, not text; choose a text column (a .json file holds one "
                "record per example: JSON Lines, or a list of objects)."
            )
    return ds


def load_text_classification_data(
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    train_file: Optional[str] = None,
    validation_file: Optional[str] = None,
    text_column: str = "text",
    text_pair_column: Optional[str] = None,
    label_column: str = "label",
    validation_split_size: Optional[Union[int, float]] = None,
    seed: int = 42,
    cache_dir: Optional[str] = None,
) -> tuple[DatasetDict, list[str]]:
    """Load a text classification data set with splits ``train`` and ``validation``.

    Sources, by priority:

    * ``dataset_name="rotten_tomatoes_demo"``: the offline demo (:func:`load_rotten_tomatoes_demo`;
      ``validation_split_size`` defaults to 1,280 examples).
    * ``dataset_name`` (+ ``dataset_config_name``): a Hub data set, e.g. ``("glue", "sst2")`` with
      ``text_column="sentence"``. Its evaluation split is the first of validation / validation_matched / valid /
      val / dev; without one, ``validation_split_size`` carves it out of train.
    * ``train_file`` / ``validation_file``: local ``.csv``, ``.tsv``, ``.json`` or ``.jsonl`` files (UTF-8).

    The chosen columns are renamed to ``text``, ``text_pair`` (when ``text_pair_column`` is given) and ``label``;
    other columns are dropped. Labels are encoded as described in :mod:`autodistill_trainer.data.labels`: string
    labels (also strings mixed with numbers, compared by their string form) become a ``ClassLabel`` with sorted
    names; integer labels keep their ids (names "0".."n-1"); a data set's own ``ClassLabel`` names are kept.
    The class counts of each split are logged.

    Args:
        validation_split_size: when there is no validation split (only a train file, or a Hub data set without
            one), hold out this many examples (int) or this fraction (float), stratified by label with ``seed``.
        cache_dir: the ``datasets`` cache directory.

    Returns:
        ``(dataset, label_names)``; ``label_names[i]`` is the name of class ``i``.

    Raises:
        ConfigError: no source; a missing, empty, unreadable (not UTF-8, invalid JSON) or row-less file; a missing
            column (the message lists the available ones); rows with an empty text or label cell; unusable
            labels; fewer than two classes, or a class with validation but no training examples (with the
            counts); no validation data.
    """
    if dataset_name == DEMO_DATASET_NAME:
        size = 1280 if validation_split_size is None else validation_split_size
        if text_column != "text" or label_column != "label" or text_pair_column:
            logger.warning("%s has fixed columns text/label; the column arguments are ignored.", DEMO_DATASET_NAME)
        return load_rotten_tomatoes_demo(validation_size=size, seed=seed), list(DEMO_LABEL_NAMES)

    if dataset_name:
        raw = load_hub_splits(dataset_name, dataset_config_name, cache_dir, train_file or validation_file)
        sources = {split: f"data set {dataset_name!r} ({split} split)" for split in raw}
    elif train_file:
        files = {split: path for split, path in (("train", train_file), ("validation", validation_file)) if path}
        raw = load_local_files(files, cache_dir)
        sources = {split: f"data file {path!r}" for split, path in files.items()}
    else:
        raise ConfigError(
            f"No data: set dataset_name (a Hub data set, or {DEMO_DATASET_NAME!r} for the offline demo) or train_file."
        )

    dataset = _canonical_columns(raw, text_column, text_pair_column, label_column)
    shown = {"text": text_column, "label": label_column}
    if text_pair_column:
        shown["text_pair"] = text_pair_column
    check_empty_cells(dataset, shown, sources)
    dataset, label_names = encode_labels(dataset)

    if "validation" not in dataset:
        if validation_split_size is None:
            raise ConfigError(
                "No validation data: give validation_file, or validation_split_size (an int count or a float "
                "fraction) to hold out part of the train split."
            )
        check_label_coverage(dataset, label_names, sources, warn_unused=False)
        split = stratified_split(dataset["train"], validation_split_size, seed)
        dataset = DatasetDict({"train": split["train"], "validation": split["test"]})
        sources = {"train": sources["train"], "validation": f"{sources['train']} (held-out validation part)"}
    elif validation_split_size is not None:
        logger.warning("validation_split_size=%s is ignored: the data already has a validation split.",
                       validation_split_size)
    check_label_coverage(dataset, label_names, sources)
    log_splits(dataset, label_names, f"Data {dataset_name or train_file}")
    return dataset, label_names
