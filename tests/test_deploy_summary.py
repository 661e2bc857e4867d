"""The deployment summary of a model: score, latency and size per runtime, and the speed-up vs the teacher."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, MobileBertForSequenceClassification

from autodistill_trainer.deploy import RUNTIMES
from autodistill_trainer.deploy.summary import LatencyProtocol, add_speedups, measure_deployment
from autodistill_trainer.metrics import build_compute_metrics

from helpers import random_batch, tiny_bert_config, tiny_mobilebert_config

FAST = LatencyProtocol(batch_size=1, seq_length=16, num_threads=1, warmup=1, repeats=3)


def _batches():
    return [random_batch(batch_size=4, seq_len=10, seed=s) for s in range(2)]


def test_measure_deployment_reports_every_runtime_and_keeps_the_export_where_asked(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = MobileBertForSequenceClassification(tiny_mobilebert_config()).eval()
    entry = measure_deployment(model, RUNTIMES, _batches, FAST, "accuracy",
                               compute_metrics=build_compute_metrics(["accuracy"]), onnx_dir=str(tmp_path / "onnx"))
    for key in ("latency_by_runtime", "accuracy_by_runtime", "size_mb_by_runtime"):
        assert list(entry[key]) == list(RUNTIMES), key
    assert all(v > 0 for v in entry["latency_by_runtime"].values())
    assert entry["accuracy_by_runtime"]["onnxruntime"] == entry["accuracy_by_runtime"]["pytorch"]
    assert entry["max_abs_diff_by_runtime"]["onnxruntime"] < 1e-5
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["model.onnx", "model_int8.onnx"]
    onnx_mb = (tmp_path / "onnx/model.onnx").stat().st_size / 1e6
    assert entry["size_mb_by_runtime"]["onnxruntime"] == pytest.approx(onnx_mb)


def test_pytorch_only_deployment_takes_the_given_score_and_exports_nothing(tmp_path):
    model = BertForSequenceClassification(tiny_bert_config()).eval()
    entry = measure_deployment(model, ("pytorch",), _batches, FAST, "accuracy", pytorch_metrics={"accuracy": 0.75})
    assert entry["accuracy_by_runtime"] == {"pytorch": 0.75}
    assert list(entry["latency_by_runtime"]) == ["pytorch"] and "max_abs_diff_by_runtime" not in entry
    params_mb = sum(p.numel() * 4 for p in model.parameters()) / 1e6
    assert entry["size_mb_by_runtime"]["pytorch"] == pytest.approx(params_mb, rel=0.05)


def test_speedups_compare_each_runtime_with_the_teacher_in_the_same_runtime():
    entries = {"teacher": {"latency_by_runtime": {"pytorch": 10.0, "onnxruntime": 4.0}},
               "best_student": {"latency_by_runtime": {"pytorch": 2.0, "onnxruntime": 0.5, "onnxruntime-int8": 0.4}},
               "baseline_without_distillation": None}
    add_speedups(entries)
    assert entries["best_student"]["speedup_by_runtime"] == {"pytorch": 5.0, "onnxruntime": 8.0}
    assert entries["teacher"]["speedup_by_runtime"] == {"pytorch": 1.0, "onnxruntime": 1.0}
