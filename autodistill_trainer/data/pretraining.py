"""Text corpora as next-sentence-prediction pairs for MLM + NSP pretraining."""

from __future__ import annotations

import logging
import math
from typing import Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher
from datasets.table import InMemoryTable

from ..errors import ConfigError
from .demo import DEMO_DATASET_NAME, load_rotten_tomatoes_demo
from .files import PRETRAINING_FORMATS, load_local_files
from .splits import arrow_column, check_column, load_hub_splits

logger = logging.getLogger(__name__)

# Bump when load_pretraining_data's pairs change, so datasets cached under their fingerprint are not reused.
_PRETRAINING_PAIRS_VERSION = "1"


def _nonempty_lines(ds: Dataset, text_column: str) -> pa.ChunkedArray:
    """The text column stripped of surrounding whitespace, without missing and empty lines (pyarrow, no copy
    through Python)."""
    values = arrow_column(ds, text_column)
    if not (values.type == "string" or values.type == "large_string"):
        raise ConfigError(f"text_column={text_column!r} holds {values.type}, not text.")
    stripped = pc.utf8_trim_whitespace(values)
    keep = pc.and_(pc.is_valid(stripped), pc.greater(pc.utf8_length(stripped), 0))
    return pc.filter(stripped, pc.fill_null(keep, False))


def build_nsp_pairs(lines: Union[list, pa.ChunkedArray], seed: int, fingerprint: Optional[str] = None) -> Dataset:
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


def _held_out_lines(
    lines: dict[str, pa.ChunkedArray], validation_split_size: Optional[Union[int, float]]
) -> dict[str, pa.ChunkedArray]:
    """Train and validation lines: the given splits, or the end of the train lines held out for validation."""
    if "validation" in lines:
        if validation_split_size is not None:
            logger.warning("validation_split_size=%s is ignored: the data already has a validation split.",
                           validation_split_size)
        return lines
    if validation_split_size is None:
        raise ConfigError(
            "No validation data: give validation_file, or validation_split_size (an int count or a float "
            "share of the lines) to hold out the end of the train split."
        )
    n = len(lines["train"])
    size = validation_split_size
    n_val = int(size) if float(size) >= 1 else math.ceil(size * n)
    if not 3 <= n_val <= n - 3:
        raise ConfigError(f"validation_split_size={size!r} leaves {n_val} of {n} lines for "
                          "validation; both parts need at least 3 lines.")
    return {"train": lines["train"].slice(0, n - n_val), "validation": lines["train"].slice(n - n_val)}


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
    (``.txt``: one line per row; ``.csv`` / ``.tsv`` / ``.json`` / ``.jsonl`` with a ``text_column``; UTF-8).

    Lines are stripped and empty ones dropped (wikitext separates paragraphs with empty lines), then each split
    becomes :func:`build_nsp_pairs` (validation with ``seed + 1``). Without a validation split,
    ``validation_split_size`` lines (an int) or that share of them (a float) are cut from the *end* of the train
    lines, so consecutive lines stay consecutive in both parts.

    Returns:
        ``DatasetDict`` with ``train`` and ``validation``, columns ``text``, ``text_pair``, ``next_sentence_label``
        (0: the second segment is the next line, 1: a random line). Tokenize it with
        :func:`~autodistill_trainer.data.tokenize_dataset` and collate with ``DataCollatorForLanguageModeling``
        (which masks tokens and keeps ``next_sentence_label``).

    Raises:
        ConfigError: no source; a missing, empty or unreadable file (the message says why); a missing text column
            (the message lists the columns); too few lines; or no validation data.
    """
    if dataset_name == DEMO_DATASET_NAME:
        raw = load_rotten_tomatoes_demo(seed=seed).remove_columns("label")
        text_column = "text"
    elif dataset_name:
        raw = load_hub_splits(dataset_name, dataset_config_name, cache_dir, train_file or validation_file)
    elif train_file:
        files = {split: path for split, path in (("train", train_file), ("validation", validation_file)) if path}
        raw = load_local_files(files, cache_dir, PRETRAINING_FORMATS)
        if all(path.lower().endswith(".txt") for path in files.values()):
            text_column = "text"  # the text builder's column
    else:
        raise ConfigError(
            f"No data: set dataset_name (a Hub corpus, or {DEMO_DATASET_NAME!r} offline) or train_file "
            "(e.g. a .txt file)."
        )
    check_column(raw, text_column, "text_column")

    lines = _held_out_lines({split: _nonempty_lines(ds, text_column) for split, ds in raw.items()},
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
