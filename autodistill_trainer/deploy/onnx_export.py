"""Export a Transformers model to ONNX (fp32 + dynamic int8) and check the files against the PyTorch model.

* :func:`export_onnx`: ``model.onnx`` (dynamic batch and sequence axes) and ``model_int8.onnx`` (weights quantized
  to int8 by ONNX Runtime's ``quantize_dynamic``).
* :func:`onnx_session`: an ONNX Runtime session with the latency protocol's thread settings.
* :func:`check_exports`: one pass over validation batches running PyTorch and every exported file on the same
  batch: the max absolute logit difference to PyTorch, and the task metrics of each runtime.

Needs the ``onnx`` extra (see :mod:`autodistill_trainer.deploy`); the imports happen here, not in the package.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from torch import nn
from transformers import EvalPrediction

from ..profiling import dummy_inputs

logger = logging.getLogger(__name__)

__all__ = ["ONNX_FILE", "INT8_FILE", "OnnxExport", "export_onnx", "onnx_session", "run_session", "check_exports"]

ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
#: The opset of the exported graphs (ONNX Runtime >= 1.18 runs it; int8 dynamic quantization supports it).
OPSET = 17
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: Label columns, in the order ``Trainer`` passes them (classification: labels; pretraining: MLM labels + NSP).
_LABEL_NAMES = ("labels", "next_sentence_label")


@dataclass
class OnnxExport:
    """The files :func:`export_onnx` wrote: ``paths`` maps a runtime (``onnxruntime``, ``onnxruntime-int8``) to
    its file; ``input_names``/``output_names`` are the graph's; ``export_s`` the seconds it took."""

    paths: dict[str, str]
    input_names: list[str]
    output_names: list[str]
    export_s: float = 0.0
    sizes_mb: dict[str, float] = field(default_factory=dict)


class _DropQuantizationAdvice(logging.Filter):
    """``quantize_dynamic`` logs on the root logger, at every call, advice about pre-processing, a graph dump for
    each tensor it leaves in float (index arithmetic such as embedding slices) and an INFO line per tensor and
    MatMul it skips: drop those records (the filter sits on the root logger only while it quantizes)."""

    _NOISE = ("Please consider to run pre-processing", "Inference failed or unsupported type to quantize")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and not str(record.msg).startswith(self._NOISE)


def _model_inputs(model: nn.Module, example_inputs: Optional[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    inputs = dict(example_inputs) if example_inputs is not None else dummy_inputs(model, batch_size=2, seq_length=16)
    kept = {k: v for k, v in inputs.items() if k in _INPUT_NAMES}
    if "input_ids" not in kept:
        raise ValueError(f"export_onnx needs `input_ids` in example_inputs, got {sorted(inputs)}.")
    device = next(iter(model.parameters())).device
    return {k: v.to(device) for k, v in kept.items()}


def export_onnx(
    model: nn.Module,
    directory: str,
    example_inputs: Optional[Mapping[str, torch.Tensor]] = None,
    quantize: bool = True,
) -> OnnxExport:
    """Write ``directory/model.onnx`` and (``quantize``) ``directory/model_int8.onnx`` for ``model``.

    The graph takes the ``input_ids``/``attention_mask``/``token_type_ids`` of ``example_inputs`` (default: the
    profiler's dummy batch, 2 x 16) with dynamic ``batch`` and ``sequence`` axes, and returns the model's outputs
    (``logits``, or e.g. ``prediction_logits`` and ``seq_relationship_logits`` for pretraining heads).

    The exporter is torch's TorchScript-based one (``torch.onnx.export(..., dynamo=False)``): with Transformers 5 it
    exports MobileBERT and BERT with dynamic axes and outputs equal to PyTorch's to ~1e-8, in ~0.5 s for a small
    student, quietly; the dynamo exporter also works but took ~12 s on the same tiny model and prints its progress,
    which matters when every trial of a search is exported (runtime objective). ``optimum`` is not needed.
    The model is put in eval mode for the export and its training mode restored.

    The int8 file is ONNX Runtime's dynamic quantization (``quantize_dynamic``, QInt8 weights, activations
    quantized at run time): no calibration data needed.
    """
    os.makedirs(directory, exist_ok=True)
    inputs = _model_inputs(model, example_inputs)
    names = list(inputs)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            outputs = model(**inputs)
        output_names = [k for k, v in outputs.items() if isinstance(v, torch.Tensor)]
        seq_len = inputs["input_ids"].shape[1]
        dynamic_axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "sequence"} for n in names}
        for name in output_names:
            shape = outputs[name].shape
            per_token = len(shape) >= 2 and shape[1] == seq_len
            dynamic_axes[name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
        fp32 = os.path.join(directory, ONNX_FILE)
        with warnings.catch_warnings():
            # tracer and deprecation notices of the TorchScript exporter: the checks below verify the graph instead
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (), fp32, kwargs=inputs, input_names=names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)
    finally:
        model.train(was_training)
    paths = {"onnxruntime": fp32}
    if quantize:
        int8 = os.path.join(directory, INT8_FILE)
        advice = _DropQuantizationAdvice()
        logging.getLogger().addFilter(advice)
        try:
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().removeFilter(advice)
        paths["onnxruntime-int8"] = int8
    elapsed = time.perf_counter() - start
    sizes = {runtime: os.path.getsize(path) / 1e6 for runtime, path in paths.items()}
    logger.debug("exported %s to %s in %.1fs (%s)", type(model).__name__, directory, elapsed, sizes)
    return OnnxExport(paths=paths, input_names=names, output_names=output_names, export_s=elapsed, sizes_mb=sizes)


def onnx_session(path: str, num_threads: int = 1) -> ort.InferenceSession:
    """A CPU ONNX Runtime session for ``path``: ``intra_op_num_threads = num_threads``, one inter-op thread,
    sequential execution, all graph optimizations (the latency protocol's settings)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def session_feed(session: ort.InferenceSession, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The graph's inputs from ``batch`` (tensors or arrays) as int64 numpy arrays; missing token types are zeros."""
    feed = {}
    for node in session.get_inputs():
        value = batch.get(node.name)
        if value is None and node.name == "token_type_ids":
            value = np.zeros_like(np.asarray(feed["input_ids"]))
        if value is None:
            raise ValueError(f"the ONNX graph needs input {node.name!r}; the batch has {sorted(batch)}.")
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feed[node.name] = array.astype(np.int64, copy=False)
    return feed


def run_session(session: ort.InferenceSession, batch: Mapping[str, Any]) -> list[np.ndarray]:
    """The graph's outputs for ``batch`` (see :func:`session_feed`), in output order."""
    return session.run(None, session_feed(session, batch))


def _pad_concat(arrays: Sequence[np.ndarray], pad_value: float = -100) -> np.ndarray:
    """Concatenate along axis 0, right-padding axis 1 to the longest (batches of different sequence lengths)."""
    if arrays[0].ndim < 2:
        return np.concatenate(arrays)
    width = max(a.shape[1] for a in arrays)
    padded = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=pad_value)
              for a in arrays]
    return np.concatenate(padded)


def _predictions(outputs: Sequence[torch.Tensor], labels: Optional[torch.Tensor],
                 preprocess_logits: Optional[Callable[[Any, Any], Any]]) -> np.ndarray:
    logits: Any = outputs[0] if len(outputs) == 1 else tuple(outputs)
    if preprocess_logits is not None:
        logits = preprocess_logits(logits, labels)
    first = logits[0] if isinstance(logits, tuple) else logits
    return first.detach().cpu().numpy()


def check_exports(
    model: nn.Module,
    paths: Mapping[str, str],
    batches: Iterable[Mapping[str, torch.Tensor]],
    compute_metrics: Optional[Callable[[EvalPrediction], dict[str, float]]] = None,
    preprocess_logits: Optional[Callable[[Any, Any], Any]] = None,
    num_threads: int = 1,
) -> dict[str, dict[str, float]]:
    """Run PyTorch and every ONNX file of ``paths`` (runtime -> file) on the same ``batches``.

    Returns ``{runtime: metrics}`` for ``pytorch`` and each runtime of ``paths``. Each ONNX runtime's metrics hold
    ``max_abs_diff``: the largest absolute difference of any output to PyTorch's over all batches (logits). With
    ``compute_metrics`` (and ``labels``, pretraining: also ``next_sentence_label``, in the batches) each runtime also
    gets the task metrics on the same
    predictions pipeline as ``Trainer.evaluate`` (``preprocess_logits`` then ``compute_metrics``), so
    ``accuracy`` of each runtime is comparable with PyTorch's. The model runs on CPU in eval mode; its training
    mode is restored.
    """
    sessions = {runtime: onnx_session(path, num_threads) for runtime, path in paths.items()}
    runtimes = ["pytorch", *sessions]
    predictions: dict[str, list[np.ndarray]] = {r: [] for r in runtimes}
    diffs = dict.fromkeys(sessions, 0.0)
    labels: dict[str, list[np.ndarray]] = {name: [] for name in _LABEL_NAMES}
    device = next(iter(model.parameters())).device
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k in _INPUT_NAMES}
            label = batch.get("labels")
            with torch.no_grad():
                out = model(**inputs)
            reference = [v.float().cpu() for v in out.values() if isinstance(v, torch.Tensor)]
            predictions["pytorch"].append(_predictions(reference, label, preprocess_logits))
            for runtime, session in sessions.items():
                got = [torch.from_numpy(a) for a in run_session(session, inputs)]
                diffs[runtime] = max(diffs[runtime], *(float((g - r).abs().max()) for g, r in zip(got, reference)))
                predictions[runtime].append(_predictions(got, label, preprocess_logits))
            for name in _LABEL_NAMES:
                if batch.get(name) is not None:
                    labels[name].append(batch[name].cpu().numpy())
    finally:
        model.train(was_training)
    results: dict[str, dict[str, float]] = {r: {} for r in runtimes}
    for runtime in sessions:
        results[runtime]["max_abs_diff"] = diffs[runtime]
    given = [_pad_concat(arrays) for arrays in labels.values() if arrays]
    if compute_metrics is not None and given:
        label_ids = given[0] if len(given) == 1 else tuple(given)  # as Trainer passes several label columns
        for runtime in runtimes:
            scores = compute_metrics(EvalPrediction(predictions=_pad_concat(predictions[runtime]), label_ids=label_ids))
            results[runtime].update({k: float(v) for k, v in scores.items()})
    for runtime in sessions:
        logger.info("%s: max |logit - PyTorch| %.2e; %s", runtime, diffs[runtime],
                    {k: round(v, 4) for k, v in results[runtime].items() if k != "max_abs_diff"})
    return results
