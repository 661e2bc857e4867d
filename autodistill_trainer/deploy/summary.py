"""The deployment summary of one model: score, latency and size on disk per runtime, and speed-ups vs the teacher.

One entry per model (teacher, best student, baseline)::

    {"latency_by_runtime": {"pytorch": 2.9, "onnxruntime": 1.1, "onnxruntime-int8": 1.0},   # ms, median
     "accuracy_by_runtime": {"pytorch": 0.81, "onnxruntime": 0.81, "onnxruntime-int8": 0.80},
     "size_mb_by_runtime": {"pytorch": 11.2, "onnxruntime": 11.3, "onnxruntime-int8": 3.1},  # files on disk, MB
     "max_abs_diff_by_runtime": {"onnxruntime": 1e-6, "onnxruntime-int8": 2e-3},              # logits vs PyTorch
     "speedup_by_runtime": {"pytorch": 6.4, ...}}                                             # teacher / model

``accuracy_by_runtime`` holds the task's score (``accuracy``, or ``mlm_accuracy`` for pretraining) computed on the
same validation batches for every runtime. Only ``pytorch`` is reported without the ``onnx`` extra.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from torch import nn

from ..profiling import dummy_inputs
from .runtimes import measure_runtime_latency

logger = logging.getLogger(__name__)

__all__ = ["LatencyProtocol", "MODEL_LABELS", "directory_size_mb", "measure_deployment", "add_speedups",
           "deployment_rows", "deployment_card_lines"]


@dataclass(frozen=True)
class LatencyProtocol:
    """The latency measurement settings (the recipe's ``evaluation.latency_*``), the same for every model/runtime."""

    batch_size: int = 1
    seq_length: int = 64
    num_threads: int = 1
    warmup: int = 10
    repeats: int = 30
    estimator: str = "min"
    rounds: int = 3

    def timing(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~.runtimes.measure_runtime_latency` for this protocol."""
        return dict(batch_size=self.batch_size, seq_length=self.seq_length, num_threads=self.num_threads,
                    warmup=self.warmup, repeats=self.repeats, estimator=self.estimator, rounds=self.rounds)

    def text(self) -> str:
        """The protocol in words, e.g. ``batch 1 x 64 tokens, 1 thread(s), 10 warm-up runs, fastest of 30 in 3
        rounds``."""
        rounds = f" in {self.rounds} rounds" if self.rounds > 1 else ""
        how = "fastest" if self.estimator == "min" else "median"
        return (f"batch {self.batch_size} x {self.seq_length} tokens, {self.num_threads} thread(s), "
                f"{self.warmup} warm-up runs, {how} of {self.repeats}{rounds}")

    def describe(self, runtime: str) -> str:
        """The protocol in one runtime, e.g. ``onnxruntime, batch 1 x 64 tokens, ...``."""
        return f"{runtime}, {self.text()}"


def directory_size_mb(directory: str, suffixes: Sequence[str] = (".safetensors", ".bin", ".onnx", ".data")) -> float:
    """Size in MB of the weight files (``suffixes``) under ``directory``."""
    total = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory)
                for name in names if name.endswith(tuple(suffixes)))
    return total / 1e6


def measure_deployment(
    model: nn.Module,
    runtimes: Sequence[str],
    batches: Callable[[], Iterable[Mapping[str, Any]]],
    protocol: LatencyProtocol,
    score_key: str,
    compute_metrics: Optional[Callable[[Any], dict[str, float]]] = None,
    preprocess_logits: Optional[Callable[[Any, Any], Any]] = None,
    pytorch_metrics: Optional[Mapping[str, Any]] = None,
    onnx_dir: Optional[str] = None,
) -> dict[str, Any]:
    """Measure ``model`` in each of ``runtimes`` (``pytorch`` and/or the ONNX ones); returns its summary entry.

    ONNX runtimes: the model is exported (:func:`~.onnx_export.export_onnx`) to ``onnx_dir`` (kept: e.g.
    ``best_model/onnx``) or to a temporary directory (removed), and :func:`~.onnx_export.check_exports` runs PyTorch
    and each file on the same ``batches()`` (the validation set): max logit difference, and the score of every
    runtime, PyTorch's included. Without ONNX runtimes the PyTorch score is ``pytorch_metrics[score_key]`` (the
    search's evaluation). Latency: :func:`~.runtimes.measure_runtime_latency` with ``protocol`` in every runtime.
    Size: the PyTorch weights as ``save_pretrained`` writes them (safetensors) and each ONNX file.
    """
    onnx_runtimes = [r for r in runtimes if r != "pytorch"]
    entry: dict[str, Any] = {"latency_by_runtime": {}, "accuracy_by_runtime": {}, "size_mb_by_runtime": {}}
    with tempfile.TemporaryDirectory(prefix="autodistill-deploy-") as tmp:
        if "pytorch" in runtimes:
            model.save_pretrained(os.path.join(tmp, "pytorch"))
            entry["size_mb_by_runtime"]["pytorch"] = directory_size_mb(os.path.join(tmp, "pytorch"))
        scores: dict[str, Optional[float]] = {"pytorch": (pytorch_metrics or {}).get(score_key)}
        paths: dict[str, str] = {}
        if onnx_runtimes:
            from .onnx_export import check_exports, export_onnx  # the optional onnx extra: imported on use

            exported = export_onnx(model, onnx_dir or os.path.join(tmp, "onnx"),
                                   example_inputs=dummy_inputs(model, protocol.batch_size, protocol.seq_length),
                                   quantize="onnxruntime-int8" in onnx_runtimes)
            paths = {r: exported.paths[r] for r in onnx_runtimes}
            entry["export_s"] = exported.export_s
            checks = check_exports(model, paths, batches(), compute_metrics, preprocess_logits, protocol.num_threads)
            scores = {r: checks[r].get(score_key) for r in checks}
            entry["max_abs_diff_by_runtime"] = {r: checks[r]["max_abs_diff"] for r in paths}
            entry["size_mb_by_runtime"].update({r: os.path.getsize(p) / 1e6 for r, p in paths.items()})
        for runtime in runtimes:
            entry["accuracy_by_runtime"][runtime] = scores.get(runtime)
            latency = measure_runtime_latency(model, runtime, onnx_path=paths.get(runtime), **protocol.timing())
            entry["latency_by_runtime"][runtime] = float(latency.latency_ms)
    logger.info("deployment of %s: latency %s ms, %s %s", type(model).__name__,
                {r: round(v, 3) for r, v in entry["latency_by_runtime"].items()}, score_key,
                entry["accuracy_by_runtime"])
    return entry


def add_speedups(entries: Mapping[str, Optional[dict[str, Any]]], teacher: str = "teacher") -> None:
    """Set ``speedup_by_runtime`` (teacher latency / model latency, same runtime) on every entry, in place."""
    reference = (entries.get(teacher) or {}).get("latency_by_runtime", {})
    for entry in entries.values():
        if entry is None:
            continue
        entry["speedup_by_runtime"] = {
            runtime: reference[runtime] / latency
            for runtime, latency in entry.get("latency_by_runtime", {}).items()
            if reference.get(runtime) and latency
        }


#: Display names of the summary's models, in table order.
MODEL_LABELS = {"teacher": "teacher", "best_student": "best student (distilled)",
                "baseline_without_distillation": "same arch, no distillation"}


def deployment_rows(models: Mapping[str, Optional[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (model, runtime) of the deployment entries in ``models`` (keys of :data:`MODEL_LABELS`):
    ``{"model", "runtime", "score", "latency_ms", "speedup", "size_mb"}`` (None where not measured)."""
    rows = []
    for key, label in MODEL_LABELS.items():
        entry = models.get(key)
        if not entry:
            continue
        for runtime, latency in entry.get("latency_by_runtime", {}).items():
            rows.append({"model": label, "runtime": runtime, "latency_ms": latency,
                         "score": entry.get("accuracy_by_runtime", {}).get(runtime),
                         "speedup": entry.get("speedup_by_runtime", {}).get(runtime),
                         "size_mb": entry.get("size_mb_by_runtime", {}).get(runtime)})
    return rows


def deployment_card_lines(deployment: Optional[Mapping[str, Any]]) -> list[str]:
    """The model card's "Deployment" section in Markdown lines (none without deployment entries).

    ``deployment``: the run's deployment section (``latency_runtime``, ``latency_protocol``, ``onnx_exported``) with
    ``models``, the entries of :data:`MODEL_LABELS`' keys."""
    rows = deployment_rows((deployment or {}).get("models") or {})
    if not rows:
        return []
    lines = ["", "## Deployment", "",
             "Score on the validation set, latency (ms, the protocol's estimate below) and speed-up against the "
             "teacher in the same runtime, size of the weights on disk."]
    if deployment.get("latency_protocol"):
        lines.append(f"Latency protocol: {deployment['latency_protocol']}.")
    if deployment.get("latency_runtime"):
        lines.append(f"The search ranked students by their `{deployment['latency_runtime']}` latency.")
    lines += ["", "| model | runtime | score | latency (ms) | speed-up vs teacher | size (MB) |",
              "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        score = "" if row["score"] is None else f"{100 * row['score']:.2f}%"
        speedup = "" if row["speedup"] is None else f"{row['speedup']:.1f}x"
        size = "" if row["size_mb"] is None else f"{row['size_mb']:.1f}"
        lines.append(f"| {row['model']} | {row['runtime']} | {score} | {row['latency_ms']:.3g} | {speedup} "
                     f"| {size} |")
    if deployment.get("onnx_exported"):
        lines += ["", "`onnx/model.onnx` (fp32) and `onnx/model_int8.onnx` (dynamic int8 weights) run with ONNX "
                      "Runtime (inputs `input_ids`, `attention_mask`, `token_type_ids`; dynamic batch and sequence):",
                  "", "```python", "import onnxruntime as ort", "",
                  'session = ort.InferenceSession("onnx/model_int8.onnx", providers=["CPUExecutionProvider"])',
                  "```"]
    return lines
