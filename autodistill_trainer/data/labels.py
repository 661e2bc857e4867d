"""Class labels of text classification data: empty cells refused, labels encoded from their string form, and
class coverage checked (at least two classes; no class seen only in validation).

Encoding rules (:func:`encode_labels`):

* a ``ClassLabel`` column keeps its names;
* every other label is compared by its string form (:func:`label_text`: ``str(value)``, surrounding spaces
  stripped, integral numbers without ``.0``), so ``1``, ``1.0`` and ``"1"`` are one class whether a reader gives
  a number or a string (CSV cells are read as text; JSON keeps its types, possibly mixed in one column);
* when every label is a non-negative integer, the labels keep their ids: class ``i`` is named ``str(i)``, for
  ``i`` in ``0..max`` (ids without examples are warned about);
* otherwise the class names are sorted: integer literals first by value, then the other names alphabetically
  (``neg`` / ``pos`` / ``1`` -> ``["1", "neg", "pos"]``);
* numbers that are not integers (e.g. ``0.5``: regression targets) are refused.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Mapping

import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Value

from ..errors import ConfigError
from .splits import arrow_column, class_counts, column

logger = logging.getLogger(__name__)

_INTEGER = re.compile(r"[+-]?\d+")
_INTEGRAL = re.compile(r"([+-]?\d+)(\.0*)?")
_SHOWN_NAMES = 10
_MAX_INTEGER_LABEL = 10_000


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _empty_rows(ds: Dataset, name: str) -> list[int]:
    """Row positions (0-based) whose cell is missing, NaN or only whitespace."""
    feature = ds.features[name]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        values = arrow_column(ds, name)
        empty = pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(values)), 0))
        mask = pc.fill_null(empty, True).to_numpy(zero_copy_only=False)
        return mask.nonzero()[0].tolist()
    return [i for i, value in enumerate(column(ds, name)) if _is_empty(value)]


def check_empty_cells(dataset: DatasetDict, columns: Mapping[str, str], sources: Mapping[str, str]) -> None:
    """Refuse rows whose text, text pair or label cell is empty.

    Args:
        columns: column name in ``dataset`` -> the name to show (the user's column name).
        sources: split -> where it came from, e.g. ``"data file 'train.csv'"``.

    Raises:
        ConfigError: with the count of such rows and the first one (1-based, header not counted).
    """
    for split, ds in dataset.items():
        for name, shown in columns.items():
            rows = _empty_rows(ds, name)
            if rows:
                raise ConfigError(
                    f"{sources[split]}: {len(rows)} rows with an empty {shown!r} cell (first at row {rows[0] + 1}); "
                    "drop or fill them."
                )


def label_text(value: Any) -> str:
    """The string form a label is compared by: stripped, integral numbers (also as text) without ``.0``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if not isinstance(value, (int, float, str)):
        raise ConfigError(f"label_column holds {type(value).__name__} values such as {str(value)[:60]!r}; "
                          "labels must be strings or integers.")
    text = str(value).strip()
    integral = _INTEGRAL.fullmatch(text)
    return str(int(integral.group(1))) if integral else text


def _is_fraction(name: str) -> bool:
    try:
        return math.isfinite(float(name))
    except ValueError:
        return False


def _name_order(name: str) -> tuple[int, int, str]:
    return (0, int(name), name) if _INTEGER.fullmatch(name) else (1, 0, name)


def _label_ids(values: set) -> tuple[list[str], Any]:
    """Class names and a function value -> class id, for the distinct label values of all splits."""
    texts = {label_text(v) for v in values}
    if all(_INTEGER.fullmatch(name) for name in texts):
        low, high = min(int(n) for n in texts), max(int(n) for n in texts)
        if low < 0:
            raise ConfigError(
                f"Integer labels must be 0..n-1; found {low} (unlabelled test rows use -1: do not pass them)."
            )
        if high >= _MAX_INTEGER_LABEL:
            raise ConfigError(f"Integer labels are class ids 0..n-1; found {high} among {len(texts)} distinct "
                              "values: is label_column an id column? Use class ids or class names.")
        return [str(i) for i in range(high + 1)], lambda value: int(label_text(value))
    if all(_is_fraction(name) for name in texts):
        fractional = next(name for name in sorted(texts) if not _INTEGER.fullmatch(name))
        raise ConfigError(
            f"label_column holds non-integer numbers such as {fractional}; only classification is supported: "
            "use class names or integer ids 0..n-1."
        )
    names = sorted(texts, key=_name_order)
    index = {name: i for i, name in enumerate(names)}
    return names, lambda value: index[label_text(value)]


def encode_labels(dataset: DatasetDict) -> tuple[DatasetDict, list[str]]:
    """Make ``label`` a :class:`~datasets.ClassLabel` (rules in the module docstring); return it and the names.

    The ids are written in one pass with the ClassLabel feature, so names that look like integers ("1") are never
    confused with ids.
    """
    feature = next(iter(dataset.values())).features["label"]
    if isinstance(feature, ClassLabel):
        return dataset, list(feature.names)
    values = {split: column(ds, "label") for split, ds in dataset.items()}
    try:
        distinct = {v for split_values in values.values() for v in split_values}
    except TypeError as exc:  # lists or dicts (JSON) are not hashable
        raise ConfigError("label_column holds lists or objects; labels must be strings or integers.") from exc
    names, to_id = _label_ids(distinct)
    out = {}
    for split, ds in dataset.items():
        features = ds.features.copy()
        features["label"] = ClassLabel(names=names)
        out[split] = ds.map(
            lambda batch: {"label": [to_id(v) for v in batch["label"]]}, batched=True, features=features,
            desc="Encoding labels",
        )
    if not all(_INTEGER.fullmatch(name) for name in names):
        shown = ", ".join(f"{i}={name!r}" for i, name in enumerate(names[:_SHOWN_NAMES]))
        logger.info("Label ids (from the labels' string form, sorted): %s%s", shown,
                    ", ..." if len(names) > _SHOWN_NAMES else "")
    return DatasetDict(out), names


def _counts_text(name: str, per_split: Mapping[str, int]) -> str:
    parts = ", ".join(f"{count} {split}" for split, count in per_split.items() if count)
    return f"{name!r}: {sum(per_split.values())} examples ({parts})"


def check_label_coverage(
    dataset: DatasetDict, label_names: list[str], sources: Mapping[str, str], warn_unused: bool = True
) -> None:
    """Refuse data a classifier cannot learn from; warn about classes without examples.

    * fewer than two classes with examples (a one-label model would report 100% accuracy): refused;
    * a class with validation examples but no training example (the student never sees it): refused;
    * a class with no example in any split (e.g. an unused integer id, or ClassLabel name): a warning; the model
      keeps an output for it (unless ``warn_unused`` is false).

    Raises:
        ConfigError: with the counts per class and split.
    """
    counts = {split: class_counts(ds, len(label_names), sources[split]) for split, ds in dataset.items()}
    per_class = [{split: counts[split][i] for split in counts} for i in range(len(label_names))]
    present = [i for i, split_counts in enumerate(per_class) if sum(split_counts.values())]
    where = " and ".join(dict.fromkeys(sources[split] for split in dataset))
    if len(present) < 2:
        found = "; ".join(_counts_text(label_names[i], per_class[i]) for i in present) or "no examples"
        raise ConfigError(
            f"{where}: only one class ({found}); text classification needs at least 2 classes: check label_column "
            "and the data."
        )
    if "validation" in counts:
        unseen = [i for i in present if per_class[i].get("train", 0) == 0]
        if unseen:
            listed = ", ".join(f"{label_names[i]!r} ({per_class[i]['validation']} validation examples)"
                               for i in unseen[:_SHOWN_NAMES])
            raise ConfigError(
                f"{sources['validation']}: label(s) {listed} have 0 training examples in {sources['train']}; the "
                "student cannot learn a class it never sees: add training examples or drop those rows."
            )
    unused = [name for i, name in enumerate(label_names) if not sum(per_class[i].values())]
    if unused and warn_unused:
        logger.warning("Labels %s have no examples in any split (%s); the model keeps an output for each.",
                       ", ".join(repr(name) for name in unused[:_SHOWN_NAMES]), where)
