"""Evaluation metrics that work offline, and a ``compute_metrics`` builder for the Trainer.

``accuracy``, ``f1`` and ``mlm_accuracy`` (masked-token accuracy, for pretraining) ship with the package as
``evaluate`` metric scripts (``metrics/accuracy/accuracy.py``, ``metrics/f1/f1.py``,
``metrics/mlm_accuracy/mlm_accuracy.py``) and are loaded by local path, so the default evaluation needs no Hub access
(``evaluate.load("accuracy")`` would download the script from the Hub and fails offline; loading a local path
works with ``HF_HUB_OFFLINE=1`` in evaluate 0.4.6).

Any other name is a metric *script* (a local path, or a Hub metric) that ``evaluate.load`` imports, running its
code: it is loaded only when ``trust_remote_code`` is true (in a recipe:
``auto_distillation.evaluation.trust_remote_code``).
A metric with a configuration is written ``"name:config"`` in lists (e.g. ``"glue:sst2"``) or passed as
``load_metric("glue", "sst2")``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)

METRICS_DIR = Path(__file__).resolve().parent
#: Metric names served from this package (no Hub access needed), mapped to their module directories.
SHIPPED_METRICS: dict[str, str] = {
    "accuracy": str(METRICS_DIR / "accuracy"),
    "f1": str(METRICS_DIR / "f1"),
    "mlm_accuracy": str(METRICS_DIR / "mlm_accuracy"),
}
#: Metrics scored per token on masked-language-model predictions (``data.task: pretraining``): their
#: ``compute_metrics`` reads token ids kept by :func:`preprocess_mlm_logits` and the MLM labels.
TOKEN_LEVEL_METRICS = frozenset({"mlm_accuracy"})


def split_metric_name(spec: str) -> tuple[str, Optional[str]]:
    """Split ``"glue:sst2"`` into ``("glue", "sst2")``; ``"accuracy"`` gives ``("accuracy", None)``."""
    if not spec or not isinstance(spec, str):
        raise ConfigError(f"A metric name must be a non-empty string, got {spec!r}.")
    name, sep, config = spec.partition(":")
    if sep and (not name or not config):
        raise ConfigError(f"Metric {spec!r}: write a configuration as 'name:config', e.g. 'glue:sst2'.")
    return name, (config or None)


def load_metric(name: str, config_name: Optional[str] = None, *, trust_remote_code: bool = False, **kwargs: Any):
    """Load an ``evaluate`` metric, preferring the copies shipped with this package.

    Args:
        name: a shipped name (see :data:`SHIPPED_METRICS`), a local metric directory or script, or a Hub metric
            name (``"glue"``, ``"matthews_correlation"``, ``"org/metric"``). ``"name:config"`` is accepted too.
        config_name: the metric configuration (e.g. ``"sst2"`` for ``"glue"``).
        trust_remote_code: allow a metric that is not shipped (a local script or a Hub metric), whose code
            ``evaluate.load`` imports and runs. Off by default.
        **kwargs: passed to ``evaluate.load`` (e.g. ``cache_dir``, ``experiment_id``).

    Raises:
        ConfigError: a metric that is not shipped without ``trust_remote_code``, or a Hub metric that could not be
            loaded (offline, or a misspelt name); the message lists the shipped metrics.
    """

    if config_name is None and ":" in name and not os.path.exists(name):
        name, config_name = split_metric_name(name)
    if name in SHIPPED_METRICS:
        path = SHIPPED_METRICS[name]
        logger.debug("Loading shipped metric %s from %s", name, path)
        import evaluate

        return evaluate.load(path, config_name, **kwargs) if config_name else evaluate.load(path, **kwargs)
    if not trust_remote_code:
        raise ConfigError(
            f"metric {name[:80]!r} is not shipped ({', '.join(SHIPPED_METRICS)}); loading it imports and runs its "
            "script: pass trust_remote_code (recipe: auto_distillation.evaluation.trust_remote_code: true) to "
            "allow it." + did_you_mean(name, SHIPPED_METRICS)
        )
    import evaluate

    try:
        return evaluate.load(name, config_name, **kwargs) if config_name else evaluate.load(name, **kwargs)
    except (OSError, ConnectionError, ValueError, ImportError) as exc:  # evaluate's errors for missing scripts
        raise ConfigError(
            f"Could not load metric {name!r}" + (f" (config {config_name!r})" if config_name else "")
            + f": {str(exc).rstrip('.')}. Metrics available offline: {sorted(SHIPPED_METRICS)}."
            + did_you_mean(name, SHIPPED_METRICS)
            + " Other metrics come from the Hub (needs network) or a local metric script path."
        ) from exc


def build_compute_metrics(
    metric_names: list[str],
    metric_kwargs: Optional[dict[str, dict[str, Any]]] = None,
    *,
    trust_remote_code: bool = False,
) -> Callable[[Any], dict[str, float]]:
    """A ``compute_metrics`` function for ``transformers.Trainer``.

    It takes the argmax of the logits (for a single-column output, the squeezed values: regression), computes every
    metric in ``metric_names`` and merges their result dicts. ``f1`` uses ``average="binary"`` for two classes and
    ``"macro"`` when the logits have more columns, unless ``metric_kwargs["f1"]`` says otherwise. A key returned by
    two metrics is kept under ``"<metric>_<key>"`` for the later ones.

    Args:
        metric_names: e.g. ``["accuracy", "f1"]`` or ``["glue:sst2"]``. Loaded once, here.
        metric_kwargs: per metric spec, extra keyword arguments for ``compute`` (e.g. ``{"f1": {"average": "micro"}}``).
        trust_remote_code: allow metrics that are not shipped (their scripts run when loaded); see :func:`load_metric`.
    """
    if not metric_names:
        raise ConfigError("metric_names is empty: give at least one metric, e.g. ['accuracy'].")
    metric_kwargs = dict(metric_kwargs or {})
    unknown = set(metric_kwargs) - set(metric_names)
    if unknown:
        raise ConfigError(f"metric_kwargs has entries {sorted(unknown)} that are not in metric_names {metric_names}.")
    token_level = [spec for spec in metric_names if split_metric_name(spec)[0] in TOKEN_LEVEL_METRICS]
    if token_level and len(token_level) != len(metric_names):
        raise ConfigError(
            f"metrics {token_level} score masked tokens (pretraining) and cannot be mixed with sequence-level "
            f"metrics {[m for m in metric_names if m not in token_level]}."
        )
    loaded = [(spec, load_metric(spec, trust_remote_code=trust_remote_code)) for spec in metric_names]

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        logits = eval_pred.predictions if hasattr(eval_pred, "predictions") else eval_pred[0]
        labels = eval_pred.label_ids if hasattr(eval_pred, "label_ids") else eval_pred[1]
        if isinstance(logits, (tuple, list)):  # models that also return hidden states / attentions
            logits = logits[0]
        logits = np.asarray(logits)
        if token_level:  # (N, L) token ids from preprocess_mlm_logits (or (N, L, vocab) logits); labels: MLM first
            if isinstance(labels, (tuple, list)):
                labels = labels[0]
            labels = np.asarray(labels)
            token_ids = logits.argmax(axis=-1) if logits.ndim == labels.ndim + 1 else logits
            scored = labels != -100
            predictions, labels = token_ids[scored], labels[scored]
            num_classes = 0
        elif logits.ndim > 1 and logits.shape[-1] > 1:
            predictions = logits.argmax(axis=-1)
            num_classes = logits.shape[-1]
        else:
            predictions = logits.reshape(-1)
            num_classes = 1
        if not token_level:
            labels = np.asarray(labels)
        results: dict[str, float] = {}
        for spec, metric in loaded:
            kwargs = dict(metric_kwargs.get(spec, {}))
            if split_metric_name(spec)[0] == "f1" and "average" not in kwargs and num_classes > 2:
                kwargs["average"] = "macro"
            values = metric.compute(predictions=predictions, references=labels, **kwargs) or {}
            for key, value in values.items():
                out_key = key if key not in results else f"{split_metric_name(spec)[0]}_{key}"
                if isinstance(value, np.ndarray):
                    value = value.tolist()
                elif isinstance(value, np.generic):
                    value = value.item()
                results[out_key] = value
        return results

    return compute_metrics


def preprocess_mlm_logits(logits: Any, labels: Any) -> Any:
    """``Trainer(preprocess_logits_for_metrics=...)`` for masked-LM models: keep the argmax token ids only.

    The MLM logits are the first output (``prediction_logits`` of ``*ForPreTraining``, ``logits`` of
    ``*ForMaskedLM``); keeping ``(batch, length)`` ids instead of ``(batch, length, vocab)`` logits lets evaluation
    of a large set fit in memory.
    """
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(dim=-1)


def build_preprocess_logits_for_metrics(metric_names: list[str]) -> Optional[Callable[[Any, Any], Any]]:
    """:func:`preprocess_mlm_logits` when the metrics are token-level (``mlm_accuracy``), else None."""
    if any(split_metric_name(spec)[0] in TOKEN_LEVEL_METRICS for spec in metric_names):
        return preprocess_mlm_logits
    return None


__all__ = [
    "SHIPPED_METRICS", "TOKEN_LEVEL_METRICS", "METRICS_DIR", "load_metric", "build_compute_metrics",
    "build_preprocess_logits_for_metrics", "preprocess_mlm_logits", "split_metric_name",
]
