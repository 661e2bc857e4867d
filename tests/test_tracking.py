"""Per-trial search metrics reach the report_to trackers as search/<metric> at step = trial number, and stage logs
continue one step count across a trial's stages."""

from __future__ import annotations

import glob
import os

import pytest
from transformers import MobileBertForSequenceClassification, TrainerCallback, TrainingArguments
from transformers.integrations import integration_utils

from autodistill_trainer.search.oob import OOBContext, run_autodistillation
from autodistill_trainer.search.tracking import SearchTracker, trial_scalars
from helpers import RandomTextClassification

SPACE = {"hidden_size": [16, 24], "intra_bottleneck_size": [8], "num_attention_heads": [2, 3],
         "intermediate_size": [32], "num_feedforward_networks": [1]}


def _config(max_trials: int = 2) -> dict:
    return {
        "search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["accuracy", "latency"],
                   "higher_is_better": [True, False], "max_trials": max_trials, "seed": 1},
        "flash_distillation": {"knowledge_transfer": {"block_names": "auto",
                                                      "layer_mappings_for_knowledge_transfer": "auto",
                                                      "train_steps": 2}},
        "regular_distillation": {"layer_mappings_for_knowledge_transfer": [[("classifier", "classifier")]],
                                 "loss_types": [["KL"]], "add_origin_loss": [True], "train_steps": [3]},
    }


def _profile(model):
    return {"params": sum(p.numel() for p in model.parameters()), "flops": 7, "latency": model.config.hidden_size / 10}


def _search(tmp_path, teacher, student, report_to, max_trials=2):
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to=report_to, save_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
                             logging_steps=1)
    context = OOBContext(
        args=args, train_dataset=RandomTextClassification(8), eval_dataset=RandomTextClassification(4, seed=1),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        student_config=student.config, student_cls=MobileBertForSequenceClassification,
    )
    return run_autodistillation(context, teacher, _config(max_trials), profile_func=_profile)


class Recorder(TrainerCallback):
    """A report_to integration that records what it is sent (every instance into one list)."""

    calls: list = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.calls.append(("begin", id(self), None, None))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.calls.append(("log", id(self), state.global_step, dict(logs)))

    def on_train_end(self, args, state, control, **kwargs):
        self.calls.append(("end", id(self), None, None))


@pytest.fixture
def recorder(monkeypatch):
    Recorder.calls = []
    monkeypatch.setitem(integration_utils.INTEGRATION_TO_CALLBACK, "recorder", Recorder)
    return Recorder


def test_each_trained_trial_reaches_the_trackers_at_its_trial_number(tmp_path, bert_teacher, mobilebert_student,
                                                                      recorder):
    agent, result = _search(tmp_path, bert_teacher, mobilebert_student, ["recorder"])
    trained = [r for r in result.rows if r["state"] == "COMPLETE"]
    assert len(trained) == 2 and len(result.rows) > 2  # invalid archs (3 heads) are rows too, never reported
    search_logs = [(step, logs) for kind, _, step, logs in recorder.calls
                   if kind == "log" and any(k.startswith("search/") for k in logs)]
    assert [step for step, _ in search_logs] == [r["number"] for r in trained]
    for (_, logs), row in zip(search_logs, trained):
        assert logs["search/accuracy"] == row["metrics"]["accuracy"]
        assert logs["search/latency"] == row["latency"] and logs["search/params"] == row["params"]
        assert logs["search/flops"] == 7
        assert set(k for k in logs if k.startswith("search/train_loss/")) == {
            "search/train_loss/flash_1", "search/train_loss/flash_2", "search/train_loss/regular"}
        assert all(v > 0 for k, v in logs.items() if "train_loss" in k)


def test_stage_logs_continue_one_step_count_across_a_trials_stages(tmp_path, bert_teacher, mobilebert_student,
                                                                   recorder):
    _search(tmp_path, bert_teacher, mobilebert_student, ["recorder"], max_trials=1)
    stage_instances = []  # one Recorder per stage Trainer, in order
    for kind, instance, _, _ in recorder.calls:
        if kind == "begin" and instance not in stage_instances:
            stage_instances.append(instance)
    loss_steps = [[step for kind, inst, step, logs in recorder.calls
                   if kind == "log" and inst == instance and "loss" in logs] for instance in stage_instances]
    loss_steps = [steps for steps in loss_steps if steps]  # the search's own Recorder logs no training loss
    # flash 1/3 (2 steps), flash 2/3 (2 steps), regular (3 steps), logging every step
    assert loss_steps == [[1, 2], [3, 4], [5, 6, 7]]


def test_a_resumed_search_does_not_report_earlier_trials_again(tmp_path, bert_teacher, mobilebert_student, recorder):
    _search(tmp_path, bert_teacher, mobilebert_student, ["recorder"], max_trials=1)
    first = [step for kind, _, step, logs in recorder.calls if kind == "log" and "search/accuracy" in logs]
    Recorder.calls = []
    _search(tmp_path, bert_teacher, mobilebert_student, ["recorder"], max_trials=2)
    second = [step for kind, _, step, logs in recorder.calls if kind == "log" and "search/accuracy" in logs]
    assert len(first) == 1 and len(second) == 1 and second[0] > first[0]


def test_tensorboard_event_files_hold_search_metrics_at_trial_numbers(tmp_path, bert_teacher, mobilebert_student):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = _search(tmp_path, bert_teacher, mobilebert_student, ["tensorboard"])
    search_dir = tmp_path / "out" / "runs" / "search"
    assert glob.glob(str(search_dir / "events.out.tfevents.*"))
    events = EventAccumulator(str(search_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"search/accuracy", "search/latency", "search/params", "search/flops", "search/train_loss/flash_1",
            "search/train_loss/flash_2", "search/train_loss/regular"} <= tags
    trained = [r for r in result.rows if r["state"] == "COMPLETE"]
    accuracy = events.Scalars("search/accuracy")
    assert [e.step for e in accuracy] == [r["number"] for r in trained]
    assert [e.value for e in accuracy] == pytest.approx([r["metrics"]["accuracy"] for r in trained])
    assert [e.value for e in events.Scalars("search/latency")] == pytest.approx([r["latency"] for r in trained])
    stage_runs = glob.glob(os.path.join(str(tmp_path / "out"), "trials", "*", "stage-*", "runs", "*"))
    assert stage_runs  # each stage's own Trainer logs beside it


def test_no_report_to_means_no_tracker_and_no_files(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    tracker = SearchTracker(args)
    assert not tracker.active
    assert tracker.log_rows([{"number": 0, "state": "COMPLETE", "arch": {}, "metrics": {"accuracy": 1.0}}]) == 0
    tracker.close()
    assert not (tmp_path / "runs").exists()


def test_trial_scalars_skip_non_numbers_and_name_each_stage():
    row = {"params": 10, "flops": None, "latency": 1.5,
           "metrics": {"accuracy": 0.75, "note": "x", "flag": True, "nan": float("nan")}}
    assert trial_scalars(row, {"flash_1": 0.5, "regular": 0.25}) == {
        "search/params": 10.0, "search/latency": 1.5, "search/accuracy": 0.75,
        "search/train_loss/flash_1": 0.5, "search/train_loss/regular": 0.25}
