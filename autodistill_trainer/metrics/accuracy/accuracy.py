"""Accuracy metric shipped with autodistill-trainer so evaluation works offline.

Load it by local path: ``evaluate.load("/path/to/autodistill_trainer/metrics/accuracy")``.
Same inputs and output as the Hub's ``accuracy`` metric.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among the total number of cases processed:
Accuracy = (TP + TN) / (TP + TN + FP + FN).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): Predicted labels.
    references (`list` of `int`): Ground truth labels.
    normalize (`bool`): If False, return the number of correctly classified samples. Defaults to True.
    sample_weight (`list` of `float`): Sample weights. Defaults to None.

Returns:
    accuracy (`float` or `int`): Accuracy score in [0, 1] (or a count if normalize=False).

Examples:
    >>> accuracy_metric = evaluate.load("path/to/metrics/accuracy")
    >>> accuracy_metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0])
    {'accuracy': 0.5}
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
(The computation follows sklearn.metrics.accuracy_score, reimplemented with numpy.)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    """Classification accuracy."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
                if self.config_name == "multilabel"
                else {
                    "predictions": datasets.Value("int32"),
                    "references": datasets.Value("int32"),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        # numpy only (same result as sklearn.metrics.accuracy_score), so the package needs no scikit-learn.
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
        correct = predictions == references
        if correct.ndim > 1:  # multilabel: a sample counts only when every label matches
            correct = correct.all(axis=tuple(range(1, correct.ndim)))
        weights = np.ones(len(correct)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        if normalize:
            return {"accuracy": float(np.sum(weights * correct) / np.sum(weights))}
        score = np.sum(weights * correct)
        return {"accuracy": int(score) if sample_weight is None else float(score)}
