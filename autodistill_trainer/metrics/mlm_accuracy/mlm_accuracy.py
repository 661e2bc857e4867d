"""Masked-token accuracy metric shipped with autodistill-trainer so pretraining evaluation works offline.

Load it by local path: ``evaluate.load("/path/to/autodistill_trainer/metrics/mlm_accuracy")``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Masked-language-model accuracy: the share of masked tokens whose predicted token id (argmax of the MLM logits)
equals the original token id. Positions whose reference is -100 (not masked, padding) are ignored.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted token ids, one per position (flattened).
    references (`list` of `int`): original token ids at the same positions; -100 marks positions to ignore.

Returns:
    mlm_accuracy (`float`): accuracy over the positions whose reference is not -100 (0.0 when there are none).

Examples:
    >>> metric = evaluate.load("path/to/metrics/mlm_accuracy")
    >>> metric.compute(predictions=[5, 7, 9, 1], references=[5, -100, 8, 1])
    {'mlm_accuracy': 0.6666666666666666}
"""

_CITATION = """
@inproceedings{devlin2019bert,
  title={{BERT}: Pre-training of Deep Bidirectional Transformers for Language Understanding},
  author={Devlin, Jacob and Chang, Ming-Wei and Lee, Kenton and Toutanova, Kristina},
  booktitle={NAACL},
  year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MlmAccuracy(evaluate.Metric):
    """Accuracy over masked tokens (references of -100 ignored)."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
        scored = references != -100
        if not scored.any():
            return {"mlm_accuracy": 0.0}
        return {"mlm_accuracy": float(np.mean(predictions[scored] == references[scored]))}
