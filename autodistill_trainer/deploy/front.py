"""Export every student of the Pareto front (``evaluation.export_onnx: front``) next to its trial's model.

Each front student with a saved model (``model_dir`` in its row) gets ``<model_dir>/onnx/model.onnx`` and
``model_int8.onnx`` (:func:`~.onnx_export.export_onnx`), checked against the PyTorch model on the validation batches
(:func:`~.onnx_export.check_exports`: max logit difference and the task score per runtime). The entries are listed in
``summary.json`` under ``deployment.front_exports``::

    [{"number": 3, "arch": {...}, "model_dir": ".../trials/<arch>/model", "onnx_dir": ".../trials/<arch>/model/onnx",
      "files": {"onnxruntime": ".../model.onnx", "onnxruntime-int8": ".../model_int8.onnx"},
      "accuracy_by_runtime": {"pytorch": 0.8, "onnxruntime": 0.8, "onnxruntime-int8": 0.79},
      "max_abs_diff_by_runtime": {"onnxruntime": 1e-7, "onnxruntime-int8": 2e-3}, "export_s": 0.6}, ...]
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from torch import nn

from ..profiling import dummy_inputs
from . import ONNX_RUNTIMES
from .summary import LatencyProtocol

logger = logging.getLogger(__name__)

__all__ = ["FRONT_ONNX_DIR", "export_front"]

#: Sub-directory of a trial's model directory that receives its ONNX files.
FRONT_ONNX_DIR = "onnx"


def export_front(
    front: Sequence[Mapping[str, Any]],
    load_model: Callable[[str], nn.Module],
    batches: Callable[[], Iterable[Mapping[str, Any]]],
    protocol: LatencyProtocol,
    score_key: str,
    runtimes: Sequence[str] = ONNX_RUNTIMES,
    compute_metrics: Optional[Callable[[Any], dict[str, float]]] = None,
    preprocess_logits: Optional[Callable[[Any, Any], Any]] = None,
) -> list[dict[str, Any]]:
    """Export each row of ``front`` (Pareto-front rows of a search) to ``<row["model_dir"]>/onnx/``; return one
    entry per exported student (see the module docstring). Rows without a saved model are skipped with a log line.

    ``load_model(model_dir)`` gives the trained student (e.g. ``MobileBertForSequenceClassification.from_pretrained``);
    ``runtimes``: the ONNX runtimes to write and check (``onnxruntime-int8`` adds ``model_int8.onnx``).
    """
    from .onnx_export import check_exports, export_onnx  # the optional onnx extra: imported on use

    onnx_runtimes = [r for r in runtimes if r in ONNX_RUNTIMES]
    entries = []
    for row in front:
        model_dir = row.get("model_dir")
        if not model_dir or not os.path.isdir(model_dir):
            logger.info("Pareto-front trial #%s has no saved model (%s): not exported to ONNX", row.get("number"),
                        model_dir)
            continue
        model = load_model(model_dir)
        onnx_dir = os.path.join(model_dir, FRONT_ONNX_DIR)
        exported = export_onnx(model, onnx_dir, example_inputs=dummy_inputs(model, protocol.batch_size,
                                                                             protocol.seq_length),
                               quantize="onnxruntime-int8" in onnx_runtimes)
        paths = {r: exported.paths[r] for r in onnx_runtimes}
        checks = check_exports(model, paths, batches(), compute_metrics, preprocess_logits, protocol.num_threads)
        entries.append({
            "number": row.get("number"), "arch": dict(row.get("arch") or {}), "model_dir": model_dir,
            "onnx_dir": onnx_dir, "files": paths,
            "accuracy_by_runtime": {r: checks[r].get(score_key) for r in ("pytorch", *paths)},
            "max_abs_diff_by_runtime": {r: checks[r]["max_abs_diff"] for r in paths},
            "export_s": exported.export_s,
        })
        logger.info("Pareto-front trial #%s exported to %s (max |logit diff| %s)", row.get("number"), onnx_dir,
                    {r: f"{v:.2e}" for r, v in entries[-1]["max_abs_diff_by_runtime"].items()})
    return entries
