"""Shipped accuracy/F1 metric modules (loaded by local path, offline) and the Trainer compute_metrics."""

from __future__ import annotations

import os

import numpy as np
import pytest
from transformers import EvalPrediction

from autodistill_trainer.errors import ConfigError
from autodistill_trainer.metrics import SHIPPED_METRICS, build_compute_metrics, load_metric, split_metric_name


def test_shipped_metrics_are_local_scripts():
    for name, path in SHIPPED_METRICS.items():
        assert os.path.isfile(os.path.join(path, f"{name}.py"))


def test_accuracy_loaded_by_path_gives_exact_value():
    import evaluate

    metric = evaluate.load(SHIPPED_METRICS["accuracy"])
    assert metric.compute(predictions=[0, 1, 1, 2, 1, 0], references=[0, 1, 2, 0, 1, 2]) == {"accuracy": 0.5}
    assert load_metric("accuracy").compute(predictions=[1, 1, 1, 0], references=[1, 1, 1, 1]) == {"accuracy": 0.75}


def test_f1_binary_by_default_and_macro_on_request():
    f1 = load_metric("f1")
    # TP=1 (idx 3), FP=1 (idx 1), FN=1 (idx 2): F1 = 2*1 / (2*1 + 1 + 1) = 0.5
    assert f1.compute(predictions=[0, 1, 0, 1, 0], references=[0, 0, 1, 1, 0]) == {"f1": 0.5}
    # per class: 0 -> 2*2/(3+2)=0.8, 1 -> 0, 2 -> 0; macro = 0.8/3
    result = f1.compute(predictions=[0, 2, 1, 0, 0, 1], references=[0, 1, 2, 0, 1, 2], average="macro")
    assert result["f1"] == pytest.approx(0.8 / 3)
    per_class = f1.compute(predictions=[0, 2, 1, 0, 0, 1], references=[0, 1, 2, 0, 1, 2], average=None)["f1"]
    np.testing.assert_allclose(per_class, [0.8, 0.0, 0.0])


def test_f1_binary_on_multiclass_input_is_an_error():
    with pytest.raises(ValueError, match="macro"):
        load_metric("f1").compute(predictions=[0, 1, 2], references=[0, 1, 2])


def test_compute_metrics_takes_argmax_and_merges_metrics():
    compute = build_compute_metrics(["accuracy", "f1"])
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.2, 0.3], [3.0, 1.0]])  # predictions 1, 0, 1, 0
    labels = np.array([1, 0, 0, 1])
    # accuracy 2/4; F1 for class 1: TP=1, FP=1, FN=1 -> 0.5
    assert compute(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": 0.5, "f1": 0.5}


def test_compute_metrics_uses_macro_f1_for_multiclass_and_first_output_of_tuples():
    compute = build_compute_metrics(["accuracy", "f1"])
    logits = np.eye(3)[[0, 1, 2, 0]]  # predictions 0, 1, 2, 0
    hidden = np.zeros((4, 2, 5))
    result = compute(EvalPrediction(predictions=(logits, hidden), label_ids=np.array([0, 1, 1, 2])))
    # per class F1: 0 -> 2/3, 1 -> 2/3, 2 -> 0
    assert result["accuracy"] == 0.5
    assert result["f1"] == pytest.approx(4 / 9)


def test_metric_spec_with_config_is_split():
    assert split_metric_name("glue:sst2") == ("glue", "sst2")
    assert split_metric_name("accuracy") == ("accuracy", None)
    with pytest.raises(ConfigError):
        split_metric_name("glue:")


def test_misspelt_metric_is_a_config_error_suggesting_shipped_names(monkeypatch):
    import evaluate

    def offline_load(*args, **kwargs):
        raise FileNotFoundError("Couldn't find a module script (offline)")

    monkeypatch.setattr(evaluate, "load", offline_load)  # never reach the Hub from tests
    with pytest.raises(ConfigError, match="Did you mean: 'accuracy'"):
        load_metric("acuracy")
