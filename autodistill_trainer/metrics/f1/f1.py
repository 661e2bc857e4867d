"""F1 metric shipped with autodistill-trainer so evaluation works offline.

Load it by local path: ``evaluate.load("/path/to/autodistill_trainer/metrics/f1")``.
Same inputs and output as the Hub's ``f1`` metric (``average`` defaults to ``"binary"``);
computed with numpy, following ``sklearn.metrics.f1_score`` (zero_division=0).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
The F1 score is the harmonic mean of precision and recall: F1 = 2 * (precision * recall) / (precision + recall).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    labels (`list` of `int`): Labels to include (for non-binary averages). Defaults to all labels present.
    pos_label (`int`): The positive class for `average="binary"`. Defaults to 1.
    average (`str`): One of `"binary"` (default; two classes), `"macro"` (unweighted mean of the per-class F1,
        use it for multiclass), `"micro"` (global counts), `"weighted"` (mean weighted by support), or None
        (the per-class scores as an array).
    sample_weight (`list` of `float`): Sample weights. Defaults to None.

Returns:
    f1 (`float` or `array` of `float`): F1 score(s) in [0, 1]. A class with no predicted and no true
    samples scores 0.

Examples:
    >>> f1_metric = evaluate.load("path/to/metrics/f1")
    >>> f1_metric.compute(predictions=[0, 1, 0, 1, 0], references=[0, 0, 1, 1, 0])
    {'f1': 0.5}
    >>> f1_metric.compute(predictions=[0, 2, 1, 0, 0, 1], references=[0, 1, 2, 0, 1, 2], average="macro")
    {'f1': 0.26666666666666666}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""

_AVERAGES = ("binary", "macro", "micro", "weighted", None)


def _safe_div(num, den):
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def f1_score(references, predictions, labels=None, pos_label=1, average="binary", sample_weight=None):
    """F1 score with numpy; matches sklearn.metrics.f1_score(zero_division=0) for single-label input."""
    if average not in _AVERAGES:
        raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}")
    y_true = np.asarray(references)
    y_pred = np.asarray(predictions)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"predictions {y_pred.shape} and references {y_true.shape} differ in shape")
    weights = np.ones(len(y_true)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    present = np.unique(np.concatenate([y_true, y_pred]))
    if average == "binary":
        if len(present) > 2:
            raise ValueError(
                f"Target is multiclass ({len(present)} labels) but average='binary'; "
                "choose average='macro', 'micro' or 'weighted'."
            )
        if len(present) == 2 and pos_label not in present:
            raise ValueError(f"pos_label={pos_label} is not a valid label; labels are {present.tolist()}")
        labels = np.asarray([pos_label])
    elif labels is None:
        labels = present
    else:
        labels = np.asarray(labels)

    tp = np.array([np.sum(weights * ((y_pred == c) & (y_true == c))) for c in labels])
    pred_pos = np.array([np.sum(weights * (y_pred == c)) for c in labels])
    true_pos = np.array([np.sum(weights * (y_true == c)) for c in labels])

    if average == "micro":
        tp, pred_pos, true_pos = tp.sum(keepdims=True), pred_pos.sum(keepdims=True), true_pos.sum(keepdims=True)
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (predicted positives + true positives)
    per_class = _safe_div(2 * tp, pred_pos + true_pos)
    if average is None:
        return per_class
    if average == "weighted":
        total = true_pos.sum()
        return float(np.sum(per_class * true_pos) / total) if total else 0.0
    return float(per_class.mean())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    """F1 score (binary by default; ``average="macro"`` for multiclass)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        score = f1_score(references, predictions, labels=labels, pos_label=pos_label, average=average,
                         sample_weight=sample_weight)
        return {"f1": score if average is None else float(score)}
