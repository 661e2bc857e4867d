"""Unit tests of AutoDistillation (search.py) with toy builders and a fake profiler."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import optuna
import pytest
import torch
from optuna.trial import TrialState

from autodistill_trainer.errors import ConfigError, InvalidArchitectureError
from autodistill_trainer.search import AutoDistillation, knee_point, pareto_front, parse_search_config

SPACE = {"a": [1, 2, 3], "b": [1, 2, 3]}


class Toy(torch.nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.arch = dict(arch)
        self.lin = torch.nn.Linear(2, 2)


def accuracy_of(arch):
    return 0.5 + 0.04 * arch["a"] - 0.01 * (arch["b"] - 2) ** 2


def fake_profile(model):
    a, b = model.arch["a"], model.arch["b"]
    return {"params": 10 * a + b, "flops": 100 * a, "latency": 1.0 + a + 0.1 * b}


class Recorder:
    """train_func/eval_func pair that records every arch it trains."""

    def __init__(self, eval_table=None):
        self.trained = []
        self.eval_table = eval_table

    def train(self, model):
        self.trained.append(tuple(sorted(model.arch.items())))
        return None

    def eval(self, model):
        if self.eval_table is not None:
            return dict(self.eval_table[(model.arch["a"], model.arch["b"])])
        return {"accuracy": accuracy_of(model.arch)}


def cfg(**search):
    base = {"search_space": SPACE, "search_algorithm": "random", "max_trials": 4, "seed": 0}
    base.update(search)
    return {"search": base, "flash_distillation": {"ignored": True}}


def agent_for(tmp_path, rec=None, builder=Toy, profile=fake_profile, **search):
    rec = rec or Recorder()
    return AutoDistillation(builder, cfg(**search), rec.train, rec.eval, profile, output_dir=str(tmp_path)), rec


def trained_rows(agent):
    return [r for r in agent.search_result if r["status"] in ("trained", "failed")]


# ------------------------------------------------------------------------------------------ config


def test_config_defaults():
    c = parse_search_config({"search": {"search_space": {"x": [1, 2]}}})
    assert c.search_algorithm == "BO" and c.metrics == ["accuracy", "latency"] and c.higher_is_better == [True, False]
    assert c.max_trials == 10 and c.seed == 42 and c.storage is None
    assert c.directions == ["maximize", "minimize"] and c.space_size == 2


@pytest.mark.parametrize(
    "search, key",
    [
        ({"search_space": {}}, "search_space"),
        ({"search_space": {"x": []}}, "search_space.x"),
        ({"search_space": {"x": [1, 1]}}, "search_space.x"),
        ({"search_space": {"x": [[1]]}}, "search_space.x"),
        (
            {"search_space": {"x": [1]}, "metrics": ["accuracy", "latency"], "higher_is_better": [True]},
            "higher_is_better",
        ),
        ({"search_space": {"x": [1]}, "max_trials": 0}, "max_trials"),
        ({"search_space": {"x": [1]}, "max_trials": -3}, "max_trials"),
        ({"search_space": {"x": [1]}, "search_algorithm": "annealing"}, "search_algorithm"),
        ({"search_space": {"x": [1]}, "seed": "x"}, "seed"),
        ({"search_space": {"x": [1]}, "max_latency_ms": -1}, "max_latency_ms"),
        ({"search_space": {"x": [1]}, "heartbeat_interval": 0}, "heartbeat_interval"),
    ],
)
def test_config_errors_name_the_key(search, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_search_config({"search": search})


def test_config_unknown_key_did_you_mean():
    with pytest.raises(ConfigError, match="max_trials"):
        parse_search_config({"search": {"search_space": {"x": [1]}, "max_trial": 3}})
    with pytest.raises(ConfigError, match="search"):
        parse_search_config({"serch": {"search_space": {"x": [1]}}})


def test_algorithm_names_case_insensitive():
    assert (
        parse_search_config({"search": {"search_space": {"x": [1]}, "search_algorithm": "tpe"}}).search_algorithm
        == "TPE"
    )


@pytest.mark.parametrize(
    "name, cls",
    [
        ("BO", optuna.samplers.GPSampler),
        ("TPE", optuna.samplers.TPESampler),
        ("NSGA2", optuna.samplers.NSGAIISampler),
        ("random", optuna.samplers.RandomSampler),
        ("grid", optuna.samplers.GridSampler),
    ],
)
def test_advisor_types(tmp_path, name, cls):
    agent, _ = agent_for(tmp_path, search_algorithm=name)
    assert isinstance(agent.advisor, cls)
    assert agent.search_space == SPACE and agent.best_model_arch is None and agent.search_result == []


# ---------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "name, space, max_trials",
    [
        ("random", SPACE, 5),
        ("TPE", SPACE, 5),
        ("NSGA2", SPACE, 5),
        ("grid", SPACE, 5),
        ("BO", {"a": [1, 2, 3, 4], "b": [1, 2, 3]}, 12),
    ],
)
def test_every_sampler_runs(tmp_path, name, space, max_trials):
    agent, rec = agent_for(tmp_path, search_algorithm=name, search_space=space, max_trials=max_trials)
    best = agent.search_loop()
    assert len(rec.trained) == max_trials == len(set(rec.trained))
    assert len(trained_rows(agent)) == max_trials
    assert best in [r["arch"] for r in agent.search_result]
    assert agent.pareto_front and all(
        p["status"] == "trained" and {"arch", "metrics", "number"} <= set(p) for p in agent.pareto_front
    )


@pytest.mark.parametrize("name", ["random", "TPE"])
def test_seeded_runs_reproducible(tmp_path, name):
    seqs = []
    for run in range(2):
        rec = Recorder()
        agent, _ = agent_for(tmp_path / f"run{run}", rec, search_algorithm=name, max_trials=6, seed=7)
        agent.search_loop()
        seqs.append(rec.trained)
    assert seqs[0] == seqs[1] and len(seqs[0]) == 6


def test_model_arch_proposition_returns_space_values(tmp_path):
    agent, _ = agent_for(tmp_path)
    arch = agent.model_arch_proposition()
    assert set(arch) == set(SPACE) and all(arch[k] in SPACE[k] for k in SPACE)
    assert agent.study.get_trials()[-1].state == TrialState.RUNNING
    agent.search_loop()  # discards the pending proposal instead of waiting for it
    assert agent.study.get_trials()[0].state == TrialState.PRUNED and len(agent.search_result) == 4


# ------------------------------------------------------------------------------------------ dedupe


def test_duplicates_never_retrained_and_not_counted(tmp_path):
    agent, rec = agent_for(tmp_path, max_trials=8)  # random sampler on 9 archs: many re-proposals
    agent.search_loop()
    assert len(rec.trained) == 8 == len(set(rec.trained))
    trials = agent.study.get_trials()
    dups = [t for t in trials if t.user_attrs.get("status") == "duplicate"]
    assert dups, "the random sampler should have re-proposed an arch"
    for t in dups:
        assert t.state == TrialState.PRUNED
        orig = next(o for o in trials if o.number == t.user_attrs["duplicate_of"])
        assert orig.params == t.params
    assert (
        len(agent.search_result) == 8 and len({json.dumps(r["arch"], sort_keys=True) for r in agent.search_result}) == 8
    )
    assert sum(1 for t in trials if t.state == TrialState.COMPLETE) == 8


def test_termination_on_exhausted_space(tmp_path):
    agent, rec = agent_for(tmp_path, search_space={"a": [1, 2], "b": [1, 2]}, max_trials=10)
    agent.search_loop()
    assert len(rec.trained) == 4 == len(set(rec.trained))


def test_termination_when_everything_invalid(tmp_path):
    def builder(arch):
        raise InvalidArchitectureError("nothing fits")

    agent, rec = agent_for(tmp_path, builder=builder, search_space={"a": [1, 2], "b": [1]}, max_trials=3)
    assert agent.search_loop() is None
    assert rec.trained == [] and agent.pareto_front == []
    assert [r["status"] for r in agent.search_result] == ["invalid", "invalid"]


def test_invalid_archs_not_trained_not_counted(tmp_path):
    def builder(arch):
        if arch["b"] == 3:
            raise InvalidArchitectureError(f"b={arch['b']} does not divide")
        return Toy(arch)

    agent, rec = agent_for(tmp_path, builder=builder, max_trials=6)
    agent.search_loop()
    assert len(rec.trained) == 6 and all(dict(t)["b"] != 3 for t in rec.trained)
    invalid = [r for r in agent.search_result if r["status"] == "invalid"]
    assert len(invalid) == 3 and all("does not divide" in r["failure_reason"] for r in invalid)
    assert all(
        t.user_attrs.get("invalid_reason") for t in agent.study.get_trials() if t.user_attrs.get("status") == "invalid"
    )


def test_budgets_skip_training(tmp_path):
    agent, rec = agent_for(tmp_path, max_trials=9, max_params=25)  # params = 10a + b: a=3 is over
    agent.search_loop()
    assert len(rec.trained) == 6 and all(dict(t)["a"] < 3 for t in rec.trained)
    over = [r for r in agent.search_result if r["status"] == "over_budget"]
    assert len(over) == 3 and all("params" in r["failure_reason"] and r["params"] > 25 for r in over)


def test_latency_budget(tmp_path):
    agent, rec = agent_for(tmp_path, max_trials=9, max_latency_ms=3.05)  # latency = 1 + a + 0.1b
    best = agent.search_loop()
    assert {dict(t)["a"] for t in rec.trained} <= {1, 2}
    assert len(rec.trained) == 3  # latency 1 + a + 0.1b: only a=1 fits
    # rule: best first metric (accuracy) among completed trials within the budget
    assert best == {"a": 1, "b": 2}


# -------------------------------------------------------------------------------------- failures


def test_failures_and_nan_recorded_and_search_continues(tmp_path):
    rec = Recorder()

    def train(model):
        if model.arch == {"a": 1, "b": 1}:
            raise RuntimeError("CUDA out of memory. Tried to allocate")
        return rec.train(model)

    def ev(model):
        if model.arch == {"a": 2, "b": 2}:
            return {"accuracy": float("nan")}
        if model.arch == {"a": 3, "b": 3}:
            return {"f1": 1.0}
        return rec.eval(model)

    agent = AutoDistillation(Toy, cfg(max_trials=9), train, ev, fake_profile, output_dir=str(tmp_path))
    agent.search_loop()
    rows = {(r["arch"]["a"], r["arch"]["b"]): r for r in agent.search_result}
    assert len(rows) == 9 and all(r["status"] in ("trained", "failed") for r in rows.values())
    assert rows[(1, 1)]["status"] == "failed" and "out of memory" in rows[(1, 1)]["failure_reason"]
    assert rows[(2, 2)]["status"] == "failed" and "NaN" in rows[(2, 2)]["failure_reason"]
    assert rows[(3, 3)]["status"] == "failed" and "accuracy" in rows[(3, 3)]["failure_reason"]
    assert sum(r["status"] == "trained" for r in rows.values()) == 6
    states = {t.user_attrs.get("status"): t.state for t in agent.study.get_trials()}
    assert states["failed"] == TrialState.FAIL
    assert all(p["number"] not in (rows[(1, 1)]["number"], rows[(2, 2)]["number"]) for p in agent.pareto_front)


def test_failed_arch_not_retried(tmp_path):
    calls = []

    def train(model):
        calls.append(model.arch)
        raise ValueError("boom")

    agent = AutoDistillation(
        Toy,
        cfg(search_space={"a": [1, 2], "b": [1]}, max_trials=5),
        train,
        Recorder().eval,
        fake_profile,
        output_dir=str(tmp_path),
    )
    assert agent.search_loop() is None
    assert len(calls) == 2


def test_train_func_may_return_a_new_model(tmp_path):
    seen = []

    def train(model):
        new = Toy({"a": model.arch["a"], "b": model.arch["b"]})
        new.trained = True
        return new

    def ev(model):
        seen.append(getattr(model, "trained", False))
        return {"accuracy": accuracy_of(model.arch)}

    agent = AutoDistillation(Toy, cfg(max_trials=2), train, ev, fake_profile, output_dir=str(tmp_path))
    agent.search_loop()
    assert seen == [True, True]
    assert agent.train_evaluate(Toy({"a": 1, "b": 1})) == {"accuracy": accuracy_of({"a": 1, "b": 1})}


def test_metrics_taken_from_profile(tmp_path):
    agent, _ = agent_for(tmp_path, max_trials=3)
    agent.search_loop()
    for r in agent.search_result:
        assert r["metrics"]["latency"] == r["latency"] == fake_profile(Toy(r["arch"]))["latency"]
        assert r["params"] == 10 * r["arch"]["a"] + r["arch"]["b"]


def test_set_seed_before_building(tmp_path):
    weights = []

    def builder(arch):
        m = Toy(arch)
        weights.append(m.lin.weight.detach().clone())
        return m

    agent, _ = agent_for(tmp_path, builder=builder, max_trials=3)
    agent.search_loop()
    assert all(torch.equal(w, weights[0]) for w in weights)


# -------------------------------------------------------------------------------- results & files


def test_results_file_rewritten_after_each_trial(tmp_path):
    path = tmp_path / "search_results.json"
    seen = []

    def train(model):
        seen.append(json.loads(path.read_text())["n_trained"] if path.exists() else 0)

    agent = AutoDistillation(Toy, cfg(max_trials=5), train, Recorder().eval, fake_profile, output_dir=str(tmp_path))
    agent.search_loop()
    assert seen == [0, 1, 2, 3, 4]
    data = json.loads(path.read_text())
    assert data["n_trained"] == 5 and len(data["trials"]) == 5 and data["best_model_arch"] == agent.best_model_arch
    row = data["trials"][0]
    assert set(row) >= {
        "number",
        "arch",
        "metrics",
        "params",
        "flops",
        "state",
        "status",
        "duration_s",
        "failure_reason",
    }
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_trains_nothing_new(tmp_path):
    agent, rec = agent_for(tmp_path, max_trials=4)
    best = agent.search_loop()
    rows = agent.search_result
    again, rec2 = agent_for(tmp_path, max_trials=4)
    assert again.search_loop() == best
    assert rec2.trained == [] and again.search_result == rows
    more, rec3 = agent_for(tmp_path, max_trials=6)
    more.search_loop()
    assert len(rec3.trained) == 2 and not set(rec3.trained) & set(rec.trained)
    assert len(trained_rows(more)) == 6


def test_resume_with_other_directions_is_a_config_error(tmp_path):
    agent, _ = agent_for(tmp_path, max_trials=1)
    agent.search_loop()
    other, _ = agent_for(tmp_path, max_trials=1, metrics=["accuracy"], higher_is_better=[True])
    with pytest.raises(ConfigError, match="study_name"):
        other.search_loop()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_killed_run_resumes_via_dead_pid(tmp_path):
    agent, _ = agent_for(tmp_path, max_trials=3)
    study = agent.study
    # what a worker killed mid-training leaves behind: a RUNNING trial, heartbeat recorded, pid dead
    study.enqueue_trial({"a": 3, "b": 1})
    t = study.ask()
    for k in SPACE:
        t.suggest_categorical(k, SPACE[k])
    t.set_user_attr("hostname", socket.gethostname())
    t.set_user_attr("pid", _dead_pid())
    t.set_user_attr("status", "training")
    study._storage.record_heartbeat(t._trial_id)

    resumed, rec = agent_for(tmp_path, max_trials=3)
    resumed.search_loop()
    assert rec.trained[0] == (("a", 3), ("b", 1))  # the interrupted arch is retried first
    assert len(rec.trained) == 3 == len(set(rec.trained))
    killed = resumed.study.get_trials()[0]
    assert killed.state == TrialState.FAIL and "gone" in killed.user_attrs["interrupted_reason"]
    assert [r["arch"] for r in resumed.search_result].count({"a": 3, "b": 1}) == 1
    assert all(r["status"] == "trained" for r in resumed.search_result)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_running_trial_of_live_other_host_is_respected(tmp_path):
    agent, _ = agent_for(tmp_path, max_trials=2, search_space={"a": [1, 2], "b": [1]}, heartbeat_interval=None)
    study = agent.study
    t = study.ask()
    t.suggest_categorical("a", [1, 2])
    t.suggest_categorical("b", [1])
    t.set_user_attr("hostname", "elsewhere")
    t.set_user_attr("pid", os.getpid())
    t.set_user_attr("status", "training")
    # the other worker finishes while we wait for its slot
    import threading

    def finish():
        import time

        time.sleep(1.0)
        study.tell(t, [accuracy_of({"a": t.params["a"], "b": 1}), 1.0])

    th = threading.Thread(target=finish)
    th.start()
    resumed, rec = agent_for(tmp_path, max_trials=2, search_space={"a": [1, 2], "b": [1]}, heartbeat_interval=None)
    resumed.search_loop()
    th.join()
    assert len(rec.trained) == 1 and dict(rec.trained[0])["a"] != t.params["a"]


# ---------------------------------------------------------------------------------- Pareto & best


def test_pareto_front_function():
    pts = [[0.9, 10.0], [0.8, 5.0], [0.85, 12.0], [0.7, 5.0], [0.95, 20.0], [0.8, 5.0]]
    front = pareto_front(pts, [True, False])
    assert front == [0, 1, 4, 5]  # equal points do not dominate each other
    assert pareto_front([[1.0], [3.0], [2.0]], [False]) == [0]


def test_knee_point():
    pts = [[0.95, 20.0], [0.9, 10.0], [0.8, 5.0]]
    # normalised gaps: (0,1), (1/3, 1/3), (1, 0) -> the middle point is closest to the ideal
    assert knee_point(pts, [True, False]) == 1
    assert knee_point([[1.0, 1.0]], [True, True]) == 0


TABLE = {
    (1, 1): {"accuracy": 0.70, "latency": 1.0},
    (1, 2): {"accuracy": 0.60, "latency": 2.0},  # dominated by (1,1)
    (2, 1): {"accuracy": 0.80, "latency": 2.0},
    (2, 2): {"accuracy": 0.84, "latency": 4.0},
    (3, 1): {"accuracy": 0.90, "latency": 9.0},
    (3, 2): {"accuracy": 0.85, "latency": 9.5},  # dominated by (3,1)
}


def test_pareto_front_and_knee_from_search(tmp_path):
    rec = Recorder(TABLE)
    agent, _ = agent_for(tmp_path, rec, search_space={"a": [1, 2, 3], "b": [1, 2]}, max_trials=6)
    best = agent.search_loop()
    front = {(p["arch"]["a"], p["arch"]["b"]) for p in agent.pareto_front}
    assert front == {(1, 1), (2, 1), (2, 2), (3, 1)}
    assert agent.pareto_front[0]["arch"] == {"a": 3, "b": 1}  # sorted by the first metric, best first
    assert all(p["metrics"] == TABLE[(p["arch"]["a"], p["arch"]["b"])] for p in agent.pareto_front)
    # knee over the front, gaps normalised (accuracy over [0.7, 0.9], latency over [1, 9]):
    # (1,1) -> (1, 0) = 1.0; (2,1) -> (0.5, 0.125) = 0.515; (2,2) -> (0.3, 0.375) = 0.480; (3,1) -> (0, 1) = 1.0
    assert best == {"a": 2, "b": 2}


def test_best_with_latency_budget_uses_first_metric(tmp_path):
    rec = Recorder(TABLE)
    agent, _ = agent_for(tmp_path, rec, search_space={"a": [1, 2, 3], "b": [1, 2]}, max_trials=6, max_latency_ms=100.0)
    # rule: the most accurate completed trial whose latency (eval's, else the profile's) is within the budget
    agent.search_config.max_latency_ms = 4.0
    assert agent.search_loop() == {"a": 2, "b": 2}  # (3, *) are more accurate but slower


def test_best_single_objective(tmp_path):
    rec = Recorder(TABLE)
    agent, _ = agent_for(
        tmp_path,
        rec,
        search_space={"a": [1, 2, 3], "b": [1, 2]},
        max_trials=6,
        metrics=["latency"],
        higher_is_better=[False],
    )
    assert agent.search_loop() == {"a": 1, "b": 1}
    assert [p["arch"] for p in agent.pareto_front] == [{"a": 1, "b": 1}]


def test_eval_func_required_for_non_profile_metrics(tmp_path):
    agent = AutoDistillation(Toy, cfg(), output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="eval_func"):
        agent.search_loop()
    only_profile = AutoDistillation(
        Toy,
        cfg(metrics=["params", "latency"], higher_is_better=[False, False], max_trials=2),
        profile_func=fake_profile,
        output_dir=str(tmp_path / "p"),
    )
    only_profile.search_loop()
    assert len(only_profile.search_result) == 2 and not math.isnan(only_profile.search_result[0]["metrics"]["params"])


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_stale_heartbeat_of_other_host_is_failed_and_retried(tmp_path):
    import time

    agent, _ = agent_for(tmp_path, max_trials=2, heartbeat_interval=1, grace_period=1)
    study = agent.study
    study.enqueue_trial({"a": 2, "b": 2})
    t = study.ask()
    for k in SPACE:
        t.suggest_categorical(k, SPACE[k])
    t.set_user_attr("hostname", "a-machine-that-died")
    t.set_user_attr("pid", os.getpid())
    t.set_user_attr("status", "training")
    study._storage.record_heartbeat(t._trial_id)
    time.sleep(2.2)  # SQLite timestamps have a 1 s resolution
    resumed, rec = agent_for(tmp_path, max_trials=2, heartbeat_interval=1, grace_period=1)
    resumed.search_loop()
    assert (("a", 2), ("b", 2)) in rec.trained and len(rec.trained) == 2 == len(set(rec.trained))
    assert resumed.study.get_trials()[0].state == TrialState.FAIL
