"""Local data files: checked before the ``datasets`` library reads them, and its failures turned into one line.

A file that cannot be used raises a :class:`~autodistill_trainer.errors.ConfigError` naming the file, what is wrong
(missing, a directory, empty, no rows, not UTF-8, invalid JSON at line N) and the fix, instead of a traceback from
the dataset library. The full scan of a file only runs when the library failed to read it.
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import datasets
import pyarrow as pa
from datasets import DatasetDict
from datasets.exceptions import DatasetGenerationError

from ..errors import ConfigError

logger = logging.getLogger(__name__)

# Extension -> (datasets builder, csv delimiter).
LOCAL_FORMATS: dict[str, tuple[str, Optional[str]]] = {
    ".csv": ("csv", ","), ".tsv": ("csv", "\t"), ".json": ("json", None), ".jsonl": ("json", None),
}
PRETRAINING_FORMATS: dict[str, tuple[str, Optional[str]]] = {**LOCAL_FORMATS, ".txt": ("text", None)}
_HEAD_BYTES = 1 << 16
_CHUNK_BYTES = 1 << 24
_MAX_CAUSE_CHARS = 300
# What the dataset library raises for an unreadable file (parse errors arrive wrapped in DatasetGenerationError;
# a file without rows is a ValueError "Instruction 'train' corresponds to no data!").
_READ_ERRORS = (DatasetGenerationError, ValueError, UnicodeDecodeError, pa.ArrowInvalid)


def check_data_file(path: str, formats: Mapping[str, tuple[str, Optional[str]]] = LOCAL_FORMATS) -> tuple[str, Any]:
    """Check a local data file before it is read; return its ``(builder, delimiter)``.

    Raises:
        ConfigError: the path is missing or a directory, its extension is not one of ``formats``, it is empty, or
            it is not UTF-8 (the JSON reader would otherwise store the bytes as broken strings).
    """
    extensions = ", ".join(sorted(formats))
    if os.path.isdir(path):
        raise ConfigError(f"data file {path!r} is a directory; give the path of a file ({extensions}) in it.")
    if not os.path.exists(path):
        raise ConfigError(f"data file {path!r} does not exist; give the path of a local {extensions} file.")
    suffix = Path(path).suffix.lower()
    if suffix not in formats:
        raise ConfigError(f"data file {path!r}: unsupported extension {suffix!r}; use one of {extensions}.")
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head.strip() and os.path.getsize(path) <= _HEAD_BYTES:
        raise ConfigError(f"data file {path!r} is empty (no header and no rows); give a file with data.")
    problem = _utf8_check(path)
    if problem:
        raise ConfigError(f"data file {path!r} {problem}")
    return formats[suffix]


def load_local_files(
    files: Mapping[str, str],
    cache_dir: Optional[str],
    formats: Mapping[str, tuple[str, Optional[str]]] = LOCAL_FORMATS,
) -> DatasetDict:
    """Load local data files (``{split: path}``) with the ``datasets`` builder of their extension.

    Raises:
        ConfigError: a file fails :func:`check_data_file`, the files have different formats, the library cannot
            read a file (the message says why: not UTF-8 or invalid JSON with the line, or no rows), or a split
            has no rows.
    """
    kinds = {split: check_data_file(path, formats) for split, path in files.items()}
    if len(set(kinds.values())) > 1:
        shown = {split: Path(path).suffix for split, path in files.items()}
        raise ConfigError(f"train_file and validation_file must have the same format; got {shown}.")
    builder, delimiter = next(iter(kinds.values()))
    kwargs: dict[str, Any] = _csv_as_text(files, delimiter) if builder == "csv" else {}
    logger.info("Loading local %s files %s", builder, dict(files))
    try:
        loaded = datasets.load_dataset(builder, data_files=dict(files), cache_dir=cache_dir, **kwargs)
    except _READ_ERRORS as error:
        raise unreadable_file_error(files, builder, error) from error
    for split, ds in loaded.items():
        if len(ds) == 0:
            raise ConfigError(f"data file {files[split]!r} has no rows; give a file with at least one example.")
    return loaded


def _csv_as_text(files: Mapping[str, str], delimiter: str) -> dict[str, Any]:
    """csv builder arguments reading every cell as text, so that a column's type never depends on which rows a
    chunk holds (pandas reads ``1`` as a number and ``neg`` as text); only an empty cell is empty ("NA" is text)."""
    columns: dict[str, None] = {}
    for path in files.values():
        with open(path, encoding="utf-8-sig", newline="") as f:  # pandas drops a byte-order mark too
            columns.update(dict.fromkeys(next(csv.reader(f, delimiter=delimiter), [])))
    features = datasets.Features({name: datasets.Value("string") for name in columns})
    return {"delimiter": delimiter, "features": features, "keep_default_na": False}


def unreadable_file_error(files: Mapping[str, str], builder: str, error: BaseException) -> ConfigError:
    """A one-line ConfigError for files the dataset library failed to read: the first problem found by scanning
    them, else the library's innermost message."""
    for path in files.values():
        problem = diagnose_file(path, builder)
        if problem:
            return ConfigError(f"data file {path!r} {problem}")
    cause, seen = error, {id(error)}
    while (cause.__cause__ or cause.__context__) is not None and id(cause.__cause__ or cause.__context__) not in seen:
        cause = cause.__cause__ or cause.__context__
        seen.add(id(cause))
    detail = " ".join(str(cause).split())[:_MAX_CAUSE_CHARS] or type(cause).__name__
    return ConfigError(f"cannot read the data file(s) {sorted(files.values())} as {builder}: {detail}")


def diagnose_file(path: str, builder: str) -> Optional[str]:
    """What makes a data file unreadable, as the end of a sentence starting with its path; None if nothing is."""
    problem = _utf8_problem(path)
    if problem is None and builder == "json":
        problem = _json_problem(path)
    if problem is None and builder == "csv":
        problem = _csv_problem(path)
    if problem is None and builder == "text":
        with open(path, encoding="utf-8") as f:
            if not any(line.strip() for line in f):
                problem = "has no lines of text; give a file with one text per line."
    return problem


def _utf8_check(path: str) -> Optional[str]:
    """:func:`_utf8_problem`, after a fast chunked decode finds that there is one."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        try:
            while chunk := f.read(_CHUNK_BYTES):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return _utf8_problem(path) or "is not UTF-8; re-save it as UTF-8."
    return None


def _utf8_problem(path: str) -> Optional[str]:
    """The first line that is not UTF-8, found line by line (slower than :func:`_utf8_check`)."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):  # a newline byte never occurs inside a UTF-8 sequence
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                byte = line[error.start]
                return (
                    f"is not UTF-8 (byte 0x{byte:02x} at line {number}, column {error.start + 1}); "
                    "re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 old > new` for a latin-1 file)."
                )
    return None


def _json_problem(path: str) -> Optional[str]:
    """Invalid JSON (JSON Lines, or one JSON document: a list of records or a dict of columns), or no records."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return "is empty; give a file with data."
    records = 0
    for number, line in enumerate(lines[first:], first + 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            if number - 1 == first and line.lstrip()[:1] in "[{":
                return _json_document_problem("".join(lines))
            return f"has invalid JSON at line {number} ({error.msg}, column {error.colno}); fix that line."
        records += 1
    return None if records else "has no rows; give a file with at least one example."


def _json_document_problem(text: str) -> Optional[str]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        return f"has invalid JSON at line {error.lineno} ({error.msg}, column {error.colno}); fix that line."
    if not document:
        return "has no rows; give a file with at least one example."
    return None


def _csv_problem(path: str) -> Optional[str]:
    with open(path, encoding="utf-8") as f:
        non_empty = sum(1 for line in f if line.strip())
    if non_empty <= 1:
        return "has a header but no rows; give a file with at least one example."
    return None
