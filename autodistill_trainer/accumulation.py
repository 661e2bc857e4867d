"""The student's own (label) loss split by unit, and the counts that make gradient accumulation exact.

A mean over a micro-batch becomes its share of the accumulated window's mean once multiplied by
``local_count * n_micro_batches / window_count`` of its own unit. Each loss must therefore be weighted
by the unit it averages over: distillation terms by real tokens or samples, a classification loss by
labelled samples, an MLM loss by masked tokens, a next-sentence loss by labelled sentence pairs.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch.nn import functional as F

#: Label inputs whose items (entries other than -100) are counted per micro-batch.
LABEL_KEYS = ("labels", "next_sentence_label")

#: Composite student losses: ``(label key, output logits key)`` for each cross-entropy that the model sums into
#: ``outputs.loss`` (``...ForPreTraining``: masked-LM loss + next-sentence loss, each a mean over its own items).
COMPOSITE_LOSS_PARTS = (("labels", "prediction_logits"), ("next_sentence_label", "seq_relationship_logits"))


#: The scales without gradient accumulation: every micro-batch mean is already the step's mean.
UNIT_SCALES = {"sample": 1.0, "token": 1.0, **{key: 1.0 for key in LABEL_KEYS}}


def batch_counts(batch: Mapping[str, Any]) -> dict[str, int]:
    """Samples, real tokens (attention mask) and label items of each label key (entries != -100) of one batch.

    A label key that the batch lacks counts its samples (a per-sample mean).
    """
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0), None)
    samples = int(first.shape[0]) if first is not None else 0
    mask = batch.get("attention_mask")
    counts = {"sample": samples, "token": int(mask.sum()) if isinstance(mask, torch.Tensor) else samples}
    for key in LABEL_KEYS:
        labels = batch.get(key)
        counts[key] = int(labels.ne(-100).sum()) if isinstance(labels, torch.Tensor) else samples
    return counts


def has_labelled_rows(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch["labels"]`` holds at least one entry other than -100 (unlabelled rows carry -100 only).

    Without any, the student's own loss is skipped: a mean over zero rows is NaN, and such a micro-batch
    contributes nothing to the window's label loss (its share of the window's labelled samples is 0).
    """
    labels = batch.get("labels")
    return isinstance(labels, torch.Tensor) and bool(labels.ne(-100).any())


def may_hold_unlabelled_rows(dataset: Any) -> bool:
    """Whether a training set can yield a micro-batch without labelled rows: its flat ``labels``/``label`` column
    holds -100 (``data.unlabeled_file``, augmented copies). Read once from the Arrow column, so that training on a
    fully labelled set checks no batch (the per-batch check syncs an accelerator). True when it cannot be told
    (not a ``datasets.Dataset``, nested labels such as masked-LM ones)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = getattr(dataset, "column_names", None)
    name = next((n for n in ("labels", "label") if names and n in names), None)
    if name is None:
        return names is None  # a labelled column is what tells; a dataset without one has no label loss at all
    column = dataset.data.column(name)
    if not pa.types.is_integer(column.type):
        return True
    return bool(pc.any(pc.equal(column, -100)).as_py())


def window_scales(local: Mapping[str, int], window: Mapping[str, int] | None, steps: int) -> dict[str, float]:
    """Factor per unit turning this micro-batch's means into its share of the window's mean (1.0 without one)."""
    if not window or steps <= 1:
        return {key: 1.0 for key in local}
    return {key: (local[key] * steps / window[key]) if window.get(key) else 1.0 for key in local}


def origin_loss_parts(outputs: Any, inputs: Mapping[str, Any]) -> list[tuple[torch.Tensor, str]]:
    """The student's own loss as ``[(mean loss, unit)]``; empty when the model computed no loss.

    A composite loss (see :data:`COMPOSITE_LOSS_PARTS`) is recomputed part by part from the logits, exactly as
    the model sums it, so that each part is weighted by its own unit; any other loss is one part over ``labels``.
    """
    loss = output_loss(outputs)
    if loss is None:
        return []
    present = [(key, logits) for key, logits in COMPOSITE_LOSS_PARTS if isinstance(inputs.get(key), torch.Tensor)]
    if len(present) == len(COMPOSITE_LOSS_PARTS) and all(_get(outputs, logits) is not None for _, logits in present):
        parts = []
        for key, logits_key in present:
            logits = _get(outputs, logits_key)
            parts.append((F.cross_entropy(logits.reshape(-1, logits.shape[-1]), inputs[key].reshape(-1)), key))
        return parts
    return [(loss, "labels")]


def output_loss(outputs: Any) -> torch.Tensor | None:
    """``outputs.loss`` of a model output (a ModelOutput, a dict, or a tuple starting with a scalar)."""
    if isinstance(outputs, Mapping) or hasattr(outputs, "keys"):
        return outputs.get("loss") if hasattr(outputs, "get") else None
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor) and outputs[0].ndim == 0:
        return outputs[0]
    return None


def _get(outputs: Any, key: str) -> Any:
    return outputs.get(key) if hasattr(outputs, "get") else None
