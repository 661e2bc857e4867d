"""Tokenization of the loaded splits, cached by fingerprint."""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

from datasets import DatasetDict
from datasets.fingerprint import Hasher

from ..errors import ConfigError

logger = logging.getLogger(__name__)

# Bump when tokenize_dataset's output changes, so stale cache files are not reused.
_TOKENIZE_CACHE_VERSION = "1"


def tokenize_dataset(
    dataset: DatasetDict, tokenizer: Any, max_length: int, cache_dir: Optional[str] = None
) -> DatasetDict:
    """Tokenize every split once (batched ``map``), truncated to ``max_length`` and not padded.

    The collator (e.g. ``DataCollatorWithPadding``) pads each batch dynamically. Raw text columns are removed and
    ``label`` is renamed ``labels`` (the name the models' forward expects); ``next_sentence_label`` (pretraining
    pairs, see :func:`~autodistill_trainer.data.load_pretraining_data`) is kept as it is.

    Caching: a data set backed by cache files (loaded from the Hub or from local files) uses ``datasets``'
    fingerprint cache next to its files. An in-memory data set (e.g. the demo) is cached under ``cache_dir`` in a
    file named after the split's fingerprint, the tokenizer's hash and ``max_length``, so a rerun reuses it; with
    ``cache_dir=None`` it is tokenized in memory every time.
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be positive, got {max_length}.")
    tok_hash = Hasher.hash(tokenizer)  # vocabulary and settings
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
