"""evaluation.export_onnx: front: every Pareto-front student of a search exported to <its model dir>/onnx/."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("onnxruntime")

from transformers import MobileBertForSequenceClassification, TrainingArguments  # noqa: E402

from autodistill_trainer.deploy.front import export_front  # noqa: E402
from autodistill_trainer.deploy.summary import LatencyProtocol  # noqa: E402
from autodistill_trainer.metrics import build_compute_metrics  # noqa: E402
from autodistill_trainer.search.oob import OOBContext, run_autodistillation  # noqa: E402
from helpers import RandomTextClassification, random_batch  # noqa: E402

SPACE = {"hidden_size": [16, 24], "intra_bottleneck_size": [8], "num_attention_heads": [2],
         "intermediate_size": [32], "num_feedforward_networks": [1]}


def _search(tmp_path, teacher, student):
    """Two trained students, both on the front: the bigger one is slower and more accurate."""
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    context = OOBContext(args=args, train_dataset=RandomTextClassification(8),
                         student_config=student.config, student_cls=MobileBertForSequenceClassification)
    config = {"search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["accuracy", "latency"],
                         "higher_is_better": [True, False], "max_trials": 2, "seed": 1},
              "regular_distillation": {"layer_mappings_for_knowledge_transfer": [[("classifier", "classifier")]],
                                       "loss_types": [["KL"]], "train_steps": [1]}}
    return run_autodistillation(
        context, teacher, config, eval_func=lambda m: {"accuracy": m.config.hidden_size / 100},
        profile_func=lambda m: {"latency": m.config.hidden_size / 10, "params": 1, "flops": 1})


def test_every_front_student_is_exported_beside_its_model_and_checked(tmp_path, bert_teacher, mobilebert_student):
    _, result = _search(tmp_path, bert_teacher, mobilebert_student)
    assert len(result.pareto_front) == 2
    batches = [random_batch(4, 12, seed=s) for s in range(2)]
    entries = export_front(result.pareto_front, MobileBertForSequenceClassification.from_pretrained,
                           lambda: iter(batches), LatencyProtocol(seq_length=12), "accuracy",
                           runtimes=("pytorch", "onnxruntime", "onnxruntime-int8"),
                           compute_metrics=build_compute_metrics(["accuracy"]))
    assert [e["number"] for e in entries] == [r["number"] for r in result.pareto_front]
    for entry, row in zip(entries, result.pareto_front):
        assert entry["arch"] == row["arch"] and entry["model_dir"] == row["model_dir"]
        assert entry["onnx_dir"] == os.path.join(row["model_dir"], "onnx")
        assert sorted(os.listdir(entry["onnx_dir"])) == ["model.onnx", "model_int8.onnx"]
        assert entry["files"] == {"onnxruntime": os.path.join(entry["onnx_dir"], "model.onnx"),
                                  "onnxruntime-int8": os.path.join(entry["onnx_dir"], "model_int8.onnx")}
        assert entry["max_abs_diff_by_runtime"]["onnxruntime"] < 1e-4
        assert entry["accuracy_by_runtime"]["onnxruntime"] == entry["accuracy_by_runtime"]["pytorch"]
        assert 0 <= entry["accuracy_by_runtime"]["onnxruntime-int8"] <= 1


def test_front_rows_without_a_saved_model_are_skipped(tmp_path):
    entries = export_front([{"number": 4, "arch": {}, "model_dir": None},
                            {"number": 5, "arch": {}, "model_dir": str(tmp_path / "gone")}],
                           MobileBertForSequenceClassification.from_pretrained, lambda: iter([]),
                           LatencyProtocol(), "accuracy")
    assert entries == []


def test_fp32_only_front_export_writes_no_int8_file(tmp_path, bert_teacher, mobilebert_student):
    _, result = _search(tmp_path, bert_teacher, mobilebert_student)
    entries = export_front(result.pareto_front[:1], MobileBertForSequenceClassification.from_pretrained,
                           lambda: iter([random_batch(4, 12)]), LatencyProtocol(seq_length=12), "accuracy",
                           runtimes=("pytorch", "onnxruntime"))
    (entry,) = entries
    assert list(entry["files"]) == ["onnxruntime"] and os.listdir(entry["onnx_dir"]) == ["model.onnx"]
