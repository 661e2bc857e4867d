"""ONNX export (fp32 + int8) of tiny MobileBERT and BERT models, checked against PyTorch; latency per runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from transformers import BertForSequenceClassification, MobileBertForSequenceClassification  # noqa: E402

from autodistill_trainer.deploy import RUNTIMES  # noqa: E402
from autodistill_trainer.deploy.onnx_export import (  # noqa: E402
    INT8_FILE, ONNX_FILE, check_exports, export_onnx, onnx_session, run_session,
)
from autodistill_trainer.deploy.runtimes import (  # noqa: E402
    check_runtime, measure_runtime_latency, runtime_profile_func,
)
from autodistill_trainer.errors import ConfigError  # noqa: E402
from autodistill_trainer.metrics import build_compute_metrics  # noqa: E402

from helpers import random_batch, tiny_bert_config, tiny_mobilebert_config  # noqa: E402

FAST = dict(warmup=1, repeats=3, min_sample_ms=1.0)


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mobilebert":
        return MobileBertForSequenceClassification(tiny_mobilebert_config()).eval()
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.mark.parametrize("kind", ["mobilebert", "bert"])
def test_export_writes_fp32_and_int8_files_with_dynamic_batch_and_sequence_axes(tmp_path, kind):
    model = _model(kind)
    example = random_batch(batch_size=2, seq_len=8, with_labels=False)
    exported = export_onnx(model, str(tmp_path), example_inputs=example)
    assert exported.paths == {"onnxruntime": str(tmp_path / ONNX_FILE), "onnxruntime-int8": str(tmp_path / INT8_FILE)}
    assert exported.output_names == ["logits"]
    # another batch size and sequence length than the example the graph was traced with
    batch = random_batch(batch_size=5, seq_len=13, pad_last=4, with_labels=False, seed=3)
    with torch.no_grad():
        reference = model(**batch).logits.numpy()
    fp32 = run_session(onnx_session(exported.paths["onnxruntime"]), batch)[0]
    int8 = run_session(onnx_session(exported.paths["onnxruntime-int8"]), batch)[0]
    assert fp32.shape == int8.shape == (5, 2)
    np.testing.assert_allclose(fp32, reference, atol=1e-5)
    assert np.abs(int8 - reference).max() < 0.1  # quantized weights: close, not equal
    ops = {node.op_type for node in onnx.load(exported.paths["onnxruntime-int8"]).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert "MatMulInteger" not in {node.op_type for node in onnx.load(exported.paths["onnxruntime"]).graph.node}


def test_export_restores_the_training_mode(tmp_path):
    model = _model("mobilebert").train()
    export_onnx(model, str(tmp_path), quantize=False)
    assert model.training
    assert not (tmp_path / INT8_FILE).exists()


@pytest.mark.parametrize("kind", ["mobilebert", "bert"])
def test_check_exports_reports_logit_difference_and_accuracy_per_runtime(tmp_path, kind):
    model = _model(kind)
    exported = export_onnx(model, str(tmp_path))
    batches = [random_batch(batch_size=4, seq_len=10, seed=s) for s in range(3)]
    results = check_exports(model, exported.paths, batches, compute_metrics=build_compute_metrics(["accuracy"]))
    assert set(results) == set(RUNTIMES)
    assert results["onnxruntime"]["max_abs_diff"] < 1e-5
    assert 0 < results["onnxruntime-int8"]["max_abs_diff"] < 0.1
    assert "max_abs_diff" not in results["pytorch"]
    labels = torch.cat([b["labels"] for b in batches])
    with torch.no_grad():
        expected = float((torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1)
                                     for b in batches]) == labels).float().mean())
    assert results["pytorch"]["accuracy"] == pytest.approx(expected)
    assert results["onnxruntime"]["accuracy"] == pytest.approx(expected)
    assert 0.0 <= results["onnxruntime-int8"]["accuracy"] <= 1.0


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_latency_is_measured_in_each_runtime_with_the_protocol(runtime):
    result = measure_runtime_latency(_model("mobilebert"), runtime, batch_size=2, seq_length=16, **FAST)
    assert result.median_ms > 0
    assert (result.batch_size, result.seq_length, result.num_threads, result.repeats) == (2, 16, 1, 3)
    assert result.timer == "thread_cpu"


def test_runtime_profile_func_keeps_pytorch_params_and_flops_and_names_the_runtime():
    from autodistill_trainer.profiling import count_flops, count_parameters

    model = _model("mobilebert")
    profile = runtime_profile_func("onnxruntime-int8", batch_size=1, seq_length=16, **FAST)(model)
    assert profile["latency_runtime"] == "onnxruntime-int8"
    assert profile["params"] == count_parameters(model)
    assert profile["flops"] == count_flops(model, batch_size=1, seq_length=16)
    assert profile["latency"] > 0


def test_an_unknown_runtime_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"evaluation.latency_runtime: 'tensorrt' is not a runtime"):
        check_runtime("tensorrt")


def test_an_onnx_runtime_without_the_extra_is_refused_naming_the_key(monkeypatch):
    import autodistill_trainer.deploy.runtimes as runtimes

    monkeypatch.setattr(runtimes, "missing_onnx_packages", lambda: ["onnxruntime"])
    with pytest.raises(ConfigError, match=r"evaluation.latency_runtime: 'onnxruntime' needs onnxruntime.*"
                                          r"autodistill-trainer\[onnx\]"):
        check_runtime("onnxruntime")
    assert check_runtime("pytorch") == "pytorch"


def test_default_runtime_is_onnxruntime_when_installed_else_pytorch_said_in_the_log(monkeypatch, caplog):
    import autodistill_trainer.deploy.runtimes as runtimes

    caplog.set_level("INFO", logger="autodistill_trainer.deploy.runtimes")
    assert check_runtime(None) == "onnxruntime"
    monkeypatch.setattr(runtimes, "onnx_available", lambda: False)
    monkeypatch.setattr(runtimes, "missing_onnx_packages", lambda: ["onnxruntime"])
    assert check_runtime(None) == "pytorch"
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("latency runtime: onnxruntime (default")
    assert lines[1] == ('latency runtime: pytorch (the default onnxruntime needs '
                        '`pip install "autodistill-trainer[onnx]"`: onnxruntime not installed)')


def test_plan_defaults_to_onnxruntime_and_export_when_the_extra_is_installed():
    from autodistill_trainer.deploy.runtimes import plan_deployment

    plan = plan_deployment(None, None)
    assert (plan.latency_runtime, plan.export_onnx, plan.runtimes) == ("onnxruntime", True, RUNTIMES)
    assert plan_deployment("pytorch", False).export_onnx is False


@pytest.mark.parametrize("value, best, front", [(True, True, False), ("best", True, False), ("front", True, True),
                                                 (False, False, False), ("none", False, False)])
def test_export_onnx_takes_best_front_or_none_and_booleans_keep_their_meaning(value, best, front):
    from autodistill_trainer.deploy.runtimes import plan_deployment

    plan = plan_deployment("pytorch", value)
    assert (plan.export_onnx, plan.export_front) == (best, front)


def test_plan_without_the_extra_says_it_once_and_refuses_explicit_onnx_options(monkeypatch, caplog):
    import autodistill_trainer.deploy.runtimes as runtimes

    monkeypatch.setattr(runtimes, "missing_onnx_packages", lambda: ["onnx", "onnxruntime"])
    caplog.set_level("INFO", logger="autodistill_trainer.deploy.runtimes")
    plan = runtimes.plan_deployment(None, None)
    assert (plan.latency_runtime, plan.export_onnx, plan.runtimes) == ("pytorch", False, ("pytorch",))
    assert [r.getMessage() for r in caplog.records] == [
        'ONNX export and ONNX Runtime latency are off: they need `pip install "autodistill-trainer[onnx]"` '
        "(onnx, onnxruntime not installed); latency runtime: pytorch"]
    with pytest.raises(ConfigError, match=r"^auto_distillation.evaluation.export_onnx: true needs onnx, onnxruntime"):
        runtimes.plan_deployment(None, True)
    with pytest.raises(ConfigError, match=r"^auto_distillation.evaluation.latency_runtime: 'onnxruntime-int8' needs"):
        runtimes.plan_deployment("onnxruntime-int8", False)
    with pytest.raises(ConfigError, match=r"^auto_distillation.evaluation.export_onnx: 'front' needs onnx, onnxrun"):
        runtimes.plan_deployment(None, "front")
    assert runtimes.plan_deployment(None, "none").export_onnx is False
    with pytest.raises(ConfigError, match=r"^auto_distillation.evaluation.export_onnx: 'yes' is not one of "
                                          r"\['best', 'front', 'none'\] \(or true/false\)"):
        runtimes.plan_deployment("pytorch", "yes")


def test_a_search_ranks_students_by_the_latency_of_the_chosen_runtime(tmp_path):
    from autodistill_trainer.search import AutoDistillation

    def build(arch):
        torch.manual_seed(0)
        return MobileBertForSequenceClassification(tiny_mobilebert_config(num_hidden_layers=arch["num_hidden_layers"]))

    measured = []
    profile = runtime_profile_func("onnxruntime", batch_size=1, seq_length=16, **FAST)

    def recorded(model):
        measured.append(profile(model))
        return measured[-1]

    design = {"search": {"search_space": {"num_hidden_layers": [1, 4]}, "search_algorithm": "random",
                         "metrics": ["latency", "params"], "higher_is_better": [False, False], "max_trials": 2,
                         "seed": 0}}
    agent = AutoDistillation(build, design, train_func=lambda model: None, profile_func=recorded,
                             output_dir=str(tmp_path))
    best = agent.search_loop()
    profiles = {t.params["num_hidden_layers"]: t.user_attrs["profile"] for t in agent.study.get_trials()}
    assert {p["latency_runtime"] for p in profiles.values()} == {"onnxruntime"}
    rows = {r["arch"]["num_hidden_layers"]: r for r in agent.search_result}
    assert rows[1]["latency"] == profiles[1]["latency"] == measured[[m["params"] for m in measured].index(
        rows[1]["params"])]["latency"]
    assert rows[1]["latency"] < rows[4]["latency"]  # a 4-layer graph runs 4x the blocks
    assert best == {"num_hidden_layers": 1}


def test_pretraining_students_export_both_heads_and_score_mlm_accuracy_per_runtime(tmp_path):
    from transformers import MobileBertForPreTraining

    from autodistill_trainer.metrics import build_preprocess_logits_for_metrics

    torch.manual_seed(0)
    model = MobileBertForPreTraining(tiny_mobilebert_config()).eval()
    exported = export_onnx(model, str(tmp_path))
    assert exported.output_names == ["prediction_logits", "seq_relationship_logits"]
    batches = []
    for seed, seq_len in ((0, 10), (1, 7)):  # batches of different lengths: labels padded with -100 to concatenate
        batch = random_batch(batch_size=3, seq_len=seq_len, pad_last=0, with_labels=False, seed=seed)
        labels = torch.full_like(batch["input_ids"], -100)
        labels[:, 1::3] = batch["input_ids"][:, 1::3]
        batches.append({**batch, "labels": labels, "next_sentence_label": torch.tensor([0, 1, 0])})
    results = check_exports(model, exported.paths, batches, build_compute_metrics(["mlm_accuracy"]),
                            build_preprocess_logits_for_metrics(["mlm_accuracy"]))
    assert results["onnxruntime"]["max_abs_diff"] < 1e-4
    assert results["onnxruntime"]["mlm_accuracy"] == results["pytorch"]["mlm_accuracy"]
    assert 0.0 <= results["onnxruntime-int8"]["mlm_accuracy"] <= 1.0


def test_a_study_measured_in_one_runtime_is_not_resumed_in_another(tmp_path):
    from autodistill_trainer.deploy.runtimes import fingerprint_with_runtime
    from autodistill_trainer.run_dir import OutputDirError, claim_output_dir, commit_output_dir

    base = {"task": "text-classification", "objectives": {"metrics": ["accuracy", "latency"]}}
    assert fingerprint_with_runtime(base, "pytorch") == base  # studies from before runtimes resume in pytorch
    ort_fp = fingerprint_with_runtime(base, "onnxruntime")
    assert ort_fp["objectives"] == {"metrics": ["accuracy", "latency"], "latency_runtime": "onnxruntime"}
    claim_output_dir(str(tmp_path), ort_fp)
    commit_output_dir(str(tmp_path))
    (tmp_path / "autodistill_study.db").write_text("")
    assert claim_output_dir(str(tmp_path), fingerprint_with_runtime(base, "onnxruntime")) is False
    with pytest.raises(OutputDirError, match=r"objectives.latency_runtime differ"):
        claim_output_dir(str(tmp_path), fingerprint_with_runtime(base, "onnxruntime-int8"))


def test_int8_quantization_adds_no_root_logger_chatter(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):  # the CLI logs at INFO: ONNX Runtime's quantizer must not flood it
        export_onnx(_model("mobilebert"), str(tmp_path))
    assert [r.getMessage()[:60] for r in caplog.records if r.name == "root"] == []
    assert not logging.getLogger().filters  # the filter is removed after quantizing


def test_help_shows_the_export_onnx_choices_and_its_type_without_typing_noise():
    from autodistill_trainer.cli_help import usage

    text = usage()
    assert "    export_onnx (bool | str):" in text and "'front': also every Pareto-front student" in text
    assert "Union[" not in text
