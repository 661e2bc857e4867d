"""How a search ends: profiling fallbacks (issue 11.7), metrics checked early and loud failures (11.8),
failed trials retried by a later run (11.9), the stop reason under an impossible budget (15)."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from autodistill_trainer.errors import ConfigError, InvalidArchitectureError
from autodistill_trainer.search import AutoDistillation, AutoDistillationResult
from test_search import Recorder, Toy, accuracy_of, cfg, fake_profile

TOY_PARAMS = 6  # Linear(2, 2): 4 weights + 2 biases


def accuracy_only(**search):
    return cfg(metrics=["accuracy"], higher_is_better=[True], **search)


def warnings_of(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


# ------------------------------------------------------------------------------ 11.7: profiling


def test_a_failing_profile_func_falls_back_to_the_parameter_count_and_still_trains(tmp_path, caplog):
    def profile(model):
        if model.arch["a"] == 1:
            raise RuntimeError("profiler crashed")
        return fake_profile(model)

    rec = Recorder()
    agent = AutoDistillation(Toy, accuracy_only(max_trials=9), rec.train, rec.eval, profile, output_dir=str(tmp_path))
    with caplog.at_level(logging.INFO):
        agent.search_loop()
    assert len(rec.trained) == 9
    fallback = [r for r in agent.search_result if r["arch"]["a"] == 1]
    assert len(fallback) == 3
    assert all(r["status"] == "trained" and r["params"] == TOY_PARAMS and r["latency"] is None for r in fallback)
    assert len(warnings_of(caplog, "profiling Toy failed")) == 1  # said once, not once per trial


def test_default_profiler_on_a_module_without_vocab_size_trains_it_with_its_parameter_count(tmp_path, caplog):
    rec = Recorder()
    agent = AutoDistillation(
        Toy,
        accuracy_only(search_space={"a": [1, 2], "b": [1]}, max_trials=2),
        rec.train,
        rec.eval,
        None,
        output_dir=str(tmp_path),
    )
    with caplog.at_level(logging.INFO):
        best = agent.search_loop()
    assert len(rec.trained) == 2 and best == {"a": 2, "b": 1}
    assert [r["status"] for r in agent.search_result] == ["trained", "trained"]
    assert all(r["params"] == TOY_PARAMS for r in agent.search_result)
    assert len(warnings_of(caplog, "config.vocab_size")) == 1


def test_profile_func_raising_invalid_architecture_marks_the_arch_invalid(tmp_path):
    def profile(model):
        if model.arch["a"] == 1:
            raise InvalidArchitectureError("a=1 cannot run")
        return fake_profile(model)

    rec = Recorder()
    agent = AutoDistillation(Toy, cfg(max_trials=9), rec.train, rec.eval, profile, output_dir=str(tmp_path))
    agent.search_loop()
    assert len(rec.trained) == 6 and all(dict(t)["a"] != 1 for t in rec.trained)
    invalid = [r for r in agent.search_result if r["status"] == "invalid"]
    assert sorted(r["arch"]["b"] for r in invalid) == [1, 2, 3]
    assert all("a=1 cannot run" in r["failure_reason"] for r in invalid)


class TokenModel(torch.nn.Module):
    """A model the default profiler can feed (it has ``config.vocab_size``); its forward fails for a=1."""

    def __init__(self, arch):
        super().__init__()
        self.arch = dict(arch)
        self.config = types.SimpleNamespace(vocab_size=11)
        self.emb = torch.nn.Embedding(11, 2)

    def forward(self, input_ids, attention_mask=None):
        if self.arch["a"] == 1:
            raise RuntimeError("shape mismatch in attention")
        return self.emb(input_ids)


def test_a_forward_that_fails_on_the_default_profilers_batch_marks_the_arch_invalid(tmp_path):
    rec = Recorder()
    agent = AutoDistillation(
        TokenModel,
        cfg(search_space={"a": [1, 2], "b": [1]}, max_trials=2),
        rec.train,
        rec.eval,
        None,
        output_dir=str(tmp_path),
    )
    agent.search_loop()
    assert rec.trained == [(("a", 2), ("b", 1))]
    rows = {r["arch"]["a"]: r for r in agent.search_result}
    assert rows[1]["status"] == "invalid" and "shape mismatch" in rows[1]["failure_reason"]
    assert rows[2]["status"] == "trained" and rows[2]["latency"] > 0 and rows[2]["params"] == 22


# ---------------------------------------------------------------------- 11.8: metrics and outcome


def test_a_metric_missing_from_the_first_trained_arch_stops_the_search_at_once(tmp_path):
    trained = []

    def ev(model):
        return {"f1": 0.5}

    agent = AutoDistillation(
        Toy, cfg(max_trials=5), lambda m: trained.append(m.arch), ev, fake_profile, output_dir=str(tmp_path)
    )
    with pytest.raises(ConfigError, match=r"search\.metrics.*'accuracy'.*\['f1'"):
        agent.search_loop()
    assert len(trained) == 1
    assert [r["status"] for r in agent.result().rows] == ["failed"]


def test_a_metric_missing_after_a_successful_trial_only_fails_that_trial(tmp_path):
    evaluated = []

    def ev(model):
        evaluated.append(dict(model.arch))
        return {"f1": 1.0} if len(evaluated) == 2 else {"accuracy": accuracy_of(model.arch)}

    agent = AutoDistillation(
        Toy,
        cfg(search_space={"a": [1, 2, 3], "b": [1]}, max_trials=3),
        None,
        ev,
        fake_profile,
        output_dir=str(tmp_path),
    )
    agent.search_loop()
    statuses = {r["arch"]["a"]: r["status"] for r in agent.search_result}
    assert len(evaluated) == 3
    assert statuses == {a["a"]: ("failed" if i == 1 else "trained") for i, a in enumerate(evaluated)}


def test_a_search_that_trained_nothing_ends_with_a_warning_counting_the_reasons(tmp_path, caplog):
    def train(model):
        raise ValueError("boom")

    agent = AutoDistillation(
        Toy,
        cfg(search_space={"a": [1, 2], "b": [1]}, max_trials=5),
        train,
        Recorder().eval,
        fake_profile,
        output_dir=str(tmp_path),
    )
    with caplog.at_level(logging.INFO):
        assert agent.search_loop() is None
    result = agent.result()
    assert isinstance(result, AutoDistillationResult)
    assert result.n_trained == 0 and result.best_model_arch is None and result.best_model_dir is None
    assert result.failure_reasons == {"failed: ValueError: boom": 2}
    [warning] = warnings_of(caplog, "trained no architecture")
    assert "ValueError: boom" in warning.getMessage() and "2" in warning.getMessage()


def test_result_reports_the_best_rows_model_dir_recorded_from_eval_func(tmp_path):
    def ev(model):
        return {"accuracy": accuracy_of(model.arch), "model_dir": f"/models/{model.arch['a']}-{model.arch['b']}"}

    agent = AutoDistillation(Toy, accuracy_only(max_trials=4), None, ev, fake_profile, output_dir=str(tmp_path))
    best = agent.search_loop()
    result = agent.result()
    assert result.best_model_arch == best and result.best_row["arch"] == best
    assert result.best_model_dir == f"/models/{best['a']}-{best['b']}"
    assert all(r["model_dir"] == f"/models/{r['arch']['a']}-{r['arch']['b']}" for r in result.rows)
    assert all("model_dir" not in r["metrics"] for r in result.rows)
    assert result.rows == agent.search_result and result.n_trained == 4


# ------------------------------------------------------------------------ 11.9: retrying failures


def test_failures_of_an_earlier_run_are_retried_once_by_the_next_run(tmp_path, caplog):
    broken = {"on": True}
    calls = []

    def train(model):
        calls.append(dict(model.arch))
        if broken["on"]:
            raise ValueError("missing dataset column")

    space = {"a": [1, 2], "b": [1]}
    first = AutoDistillation(
        Toy, cfg(search_space=space, max_trials=5), train, Recorder().eval, fake_profile, output_dir=str(tmp_path)
    )
    assert first.search_loop() is None and len(calls) == 2  # a failure is final within the run

    broken["on"] = False  # the user fixes the cause and reruns in the same output_dir
    again = AutoDistillation(
        Toy, cfg(search_space=space, max_trials=5), train, Recorder().eval, fake_profile, output_dir=str(tmp_path)
    )
    with caplog.at_level(logging.INFO):
        best = again.search_loop()
    assert len(calls) == 4 and sorted(c["a"] for c in calls[2:]) == [1, 2]
    assert best == {"a": 2, "b": 1}
    assert [r["status"] for r in again.search_result] == ["trained", "trained"]
    assert any("2 failed trials from earlier runs will be retried" in r.getMessage() for r in caplog.records)


def test_a_retried_failure_that_fails_again_is_final_for_that_run(tmp_path):
    calls = []

    def train(model):
        calls.append(dict(model.arch))
        raise ValueError("still broken")

    space = {"a": [1, 2], "b": [1]}
    for expected in (2, 4):
        agent = AutoDistillation(
            Toy, cfg(search_space=space, max_trials=5), train, Recorder().eval, fake_profile, output_dir=str(tmp_path)
        )
        assert agent.search_loop() is None
        assert len(calls) == expected
    assert [r["status"] for r in agent.search_result] == ["failed", "failed"]


def test_retry_failed_false_keeps_failures_of_earlier_runs_final(tmp_path):
    calls = []

    def train(model):
        calls.append(dict(model.arch))
        raise ValueError("boom")

    space = {"a": [1, 2], "b": [1]}
    for retry_failed in (True, False):
        agent = AutoDistillation(
            Toy,
            cfg(search_space=space, max_trials=5),
            train,
            Recorder().eval,
            fake_profile,
            output_dir=str(tmp_path),
            retry_failed=retry_failed,
        )
        agent.search_loop()
    assert len(calls) == 2


# ------------------------------------------------------------------------ 15: impossible budgets


def test_a_latency_budget_nothing_fits_stops_with_the_budget_as_the_reason(tmp_path, caplog):
    space = {"a": list(range(1, 21)), "b": list(range(1, 21))}  # 400 archs, latency 1 + a + 0.1 b >= 2.1 ms
    rec = Recorder()
    agent = AutoDistillation(
        Toy,
        cfg(search_space=space, max_trials=2, max_latency_ms=0.5, heartbeat_interval=None),
        rec.train,
        rec.eval,
        fake_profile,
        output_dir=str(tmp_path),
    )
    with caplog.at_level(logging.INFO):
        assert agent.search_loop() is None
    assert rec.trained == []
    assert len(agent.study.get_trials()) == 20 * 2 + 100  # bounded: 20 * max_trials + 100 proposals
    over = [r for r in agent.search_result if r["status"] == "over_budget"]
    assert len(over) == len(agent.search_result) > 50  # the rest were duplicates of evaluated archs
    smallest = min(r["latency"] for r in over)
    [stop] = warnings_of(caplog, "stopping after")
    message = stop.getMessage()
    assert "search.max_latency_ms=0.5" in message and f"smallest measured latency was {smallest:g} ms" in message
    assert "advisor" not in message
    assert f"none of the {len(over)} architectures" in message
    assert agent.result().failure_reasons == {"over_budget: latency": len(over)}


def test_search_retry_failed_false_in_the_config_keeps_failures_final(tmp_path):
    calls = []

    def train(model):
        calls.append(dict(model.arch))
        raise ValueError("boom")

    space = {"a": [1, 2], "b": [1]}
    for _ in range(2):
        agent = AutoDistillation(Toy, cfg(search_space=space, max_trials=5, retry_failed=False), train,
                                 Recorder().eval, fake_profile, output_dir=str(tmp_path))
        assert agent.retry_failed is False
        agent.search_loop()
    assert len(calls) == 2  # the second run retried nothing
