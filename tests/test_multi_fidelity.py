"""Multi-fidelity search (issue 12): rung arithmetic, promotion by dominance, compute and time budgets, resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import optuna
import pytest

from autodistill_trainer.configs.search import MultiFidelityConfig, SearchConfig
from autodistill_trainer.errors import ConfigError, InvalidArchitectureError
from autodistill_trainer.search import AutoDistillation
from autodistill_trainer.search.fidelity import (
    choose_promotion,
    constant_objectives,
    first_full_result_cost,
    nondominated_rank_with_crowding,
    promotable,
    rung_fractions,
)
from autodistill_trainer.search.ledger import arch_key
from multi_fidelity_worker import SPACE, Toy, toy_accuracy, toy_profile

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multi_fidelity_worker.py")
HIB = [True, False]


# ------------------------------------------------------------------------------------- arithmetic


def test_rung_fractions_grow_by_the_reduction_factor_and_end_exactly_at_one():
    assert rung_fractions(0.111, 3) == [0.111, 0.333, 1.0]  # 0.999 is within 2% of 1: it is the top rung
    assert rung_fractions(0.25, 2) == [0.25, 0.5, 1.0]
    assert rung_fractions(0.1, 3) == [0.1, 0.3, 0.9, 1.0]
    assert rung_fractions(0.5, 4) == [0.5, 1.0]


def test_multi_fidelity_config_is_checked_and_absent_by_default():
    space = {"a": [1, 2]}
    assert SearchConfig(search_space=space).multi_fidelity is None
    parsed = SearchConfig(search_space=space, multi_fidelity={"min_fraction": 0.25, "reduction_factor": 2})
    assert parsed.multi_fidelity == MultiFidelityConfig(min_fraction=0.25, reduction_factor=2)
    assert SearchConfig(search_space=space, multi_fidelity={}).multi_fidelity == MultiFidelityConfig(0.111, 3)
    with pytest.raises(ConfigError, match=r"'search.multi_fidelity.min_fraction' must be a finite number in \(0, 1\]"):
        SearchConfig(search_space=space, multi_fidelity={"min_fraction": 0})
    with pytest.raises(ConfigError, match="'search.multi_fidelity.min_fraction' must be below 1"):
        SearchConfig(search_space=space, multi_fidelity={"min_fraction": 1})
    with pytest.raises(ConfigError, match="'search.multi_fidelity.reduction_factor' must be an integer >= 2"):
        SearchConfig(search_space=space, multi_fidelity={"reduction_factor": 1.5})
    with pytest.raises(ConfigError, match="Unknown key 'search.multi_fidelity.eta'"):
        SearchConfig(search_space=space, multi_fidelity={"eta": 3})
    with pytest.raises(ConfigError, match="'search.multi_fidelity' must be a mapping"):
        SearchConfig(search_space=space, multi_fidelity=0.1)
    with pytest.raises(ConfigError, match="'search.time_budget_s' must be a positive finite number or null"):
        SearchConfig(search_space=space, time_budget_s=0)


def test_max_trials_below_the_cost_of_one_full_budget_result_is_refused():
    space = {"a": [1, 2]}
    # rungs 1/9, 1/3, 1: 9 results at rung 0, 3 at rung 1, then one full training = 2.998 full-trial equivalents
    assert first_full_result_cost(0.111, 3) == pytest.approx(2.998)
    assert first_full_result_cost(0.25, 2) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match=r"'search.max_trials' is 2, below the 2.998 full-trial equivalents .* at "
                                          r"least 3"):
        SearchConfig(search_space=space, max_trials=2, multi_fidelity={})
    assert SearchConfig(search_space=space, max_trials=3, multi_fidelity={}).multi_fidelity.rung_fractions == [
        0.111, 0.333, 1.0]


def test_ranking_is_nondominated_sorting_then_crowding_distance():
    # accuracy up, latency down. Front 0: 0, 1, 2, 3 (trade-offs); 4 is dominated by 1 only; 5 by everything.
    points = [[0.9, 9.0], [0.8, 5.0], [0.75, 4.5], [0.5, 1.0], [0.7, 6.0], [0.1, 10.0]]
    order = nondominated_rank_with_crowding(points, HIB)
    assert set(order[:4]) == {0, 1, 2, 3} and order[4:] == [4, 5]
    # inside front 0 the boundary points (0 and 3: infinite crowding) come first, then the less crowded one:
    # point 1 spans (0.9-0.75)/0.4 + (9-4.5)/8 = 0.9375, point 2 spans (0.8-0.5)/0.4 + (5-1)/8 = 1.25
    assert order[:4] == [0, 3, 2, 1]
    assert nondominated_rank_with_crowding([[1.0], [3.0], [2.0], [3.0]], [True]) == [1, 3, 2, 0]


def test_promotable_is_the_top_floor_n_over_eta_not_yet_promoted():
    results = [("a", [0.5, 3.0]), ("b", [0.9, 3.0]), ("c", [0.6, 3.0]), ("d", [0.4, 3.0]), ("e", [0.8, 3.0])]
    assert promotable(results[:2], set(), 3, HIB) == []  # floor(2/3) = 0: nothing yet
    assert promotable(results[:3], set(), 3, HIB) == ["b"]
    assert promotable(results, set(), 3, HIB) == ["b"]  # floor(5/3) = 1
    assert promotable(results, {"b"}, 3, HIB) == []
    assert promotable(results + [("f", [0.1, 3.0])], {"b"}, 3, HIB) == ["e"]  # floor(6/3) = 2: b, e


def test_choose_promotion_prefers_the_highest_rung_that_fits():
    rungs = {0: [("a", [0.5]), ("b", [0.9]), ("c", [0.6])], 1: [("x", [0.7]), ("y", [0.8]), ("z", [0.1])]}
    assert choose_promotion(rungs, {}, 3, 3, [True]) == (1, "y")
    assert choose_promotion(rungs, {1: {"y"}}, 3, 3, [True]) == (0, "b")
    assert choose_promotion(rungs, {}, 3, 3, [True], fits={1: False}) == (0, "b")
    assert choose_promotion(rungs, {}, 2, 3, [True]) == (0, "b")  # the top rung is never promoted from
    assert choose_promotion(rungs, {0: {"b"}, 1: {"y"}}, 3, 3, [True]) is None


def test_constant_objectives_are_those_every_candidate_scored_the_same():
    assert constant_objectives([[0.578, 1.2], [0.578, 0.9], [0.578, 2.0]]) == [0]
    assert constant_objectives([[0.6, 1.0], [0.578, 1.0]]) == [1]
    assert constant_objectives([[0.6, 1.0], [0.578, 2.0]]) == []
    assert constant_objectives([[0.578, 1.0]]) == []  # one candidate tells nothing


# ------------------------------------------------------------------------------------------ search


class BudgetRecorder:
    def __init__(self):
        self.calls: list[tuple[float, str]] = []

    def train(self, model, budget):
        self.calls.append((budget, arch_key(model.arch)))
        model.budget = budget

    def eval(self, model):
        return {"accuracy": toy_accuracy(model.arch, model.budget)}


def mf_config(max_trials=3, **search):
    base = {"search_space": SPACE, "search_algorithm": "random", "max_trials": max_trials, "seed": 0,
            "metrics": ["accuracy", "latency"], "multi_fidelity": {"min_fraction": 0.111, "reduction_factor": 3}}
    base.update(search)
    return {"search": base}


def _check_promotions(trials, eta=3):
    """Each promotion, when it was decided (single worker: every lower-numbered trial had finished), was within
    the top floor(n/eta) of its parent rung by the dominance ranking and had not been promoted before."""
    promotions = [t for t in trials if t.user_attrs.get("proposed_by") == "promotion" and t.state.name == "COMPLETE"]
    for p in promotions:
        rung = p.user_attrs["rung"]
        seen, results = set(), []
        for t in trials[:p.number]:
            key = arch_key(t.params)
            if t.state.name == "COMPLETE" and t.user_attrs["rung"] == rung - 1 and key not in seen:
                seen.add(key)
                results.append((key, t.values))
        order = nondominated_rank_with_crowding([v for _, v in results], HIB)
        top = {results[i][0] for i in order[: len(results) // eta]}
        assert arch_key(p.params) in top, (p.number, rung)
        earlier = [t for t in trials[:p.number] if t.user_attrs.get("rung") == rung and t.state.name == "COMPLETE"]
        assert arch_key(p.params) not in {arch_key(t.params) for t in earlier}
        parent = trials[p.user_attrs["parent"]]
        assert parent.params == p.params and parent.user_attrs["rung"] == rung - 1
    return promotions


def test_search_promotes_by_dominance_within_max_trials_equivalents(tmp_path):
    rec = BudgetRecorder()
    agent = AutoDistillation(Toy, mf_config(max_trials=3), rec.train, rec.eval, toy_profile, output_dir=str(tmp_path))
    agent.search_loop()
    trials = agent.study.get_trials()
    spent = sum(t.user_attrs["budget"] for t in trials if t.state.name in ("COMPLETE", "FAIL"))
    assert spent <= 3 + 1e-9 and sum(b for b, _ in rec.calls) == pytest.approx(spent)
    assert {b for b, _ in rec.calls} == {0.111, 0.333, 1.0}
    promotions = _check_promotions(trials)
    assert any(p.user_attrs["rung"] == 2 for p in promotions)
    # each (arch, rung) trained once; many more candidates screened than full trials affordable
    assert len(rec.calls) == len(set(rec.calls))
    screened = {k for b, k in rec.calls if b == 0.111}
    assert len(screened) >= 6
    rows = agent.search_result
    assert {(r["rung"], r["budget"]) for r in rows} == {(0, 0.111), (1, 0.333), (2, 1.0)}
    data = json.loads((tmp_path / "search_results.json").read_text())
    assert data["multi_fidelity"]["rung_fractions"] == [0.111, 0.333, 1.0]
    assert data["multi_fidelity"]["budget_spent"] == pytest.approx(spent)
    assert len(data["trials"]) == len(rows)


def test_a_rung_where_every_candidate_scores_the_same_is_warned_about_once(tmp_path, caplog):
    rec = BudgetRecorder()

    def majority_class_below_full_budget(model):  # a rung too short to learn anything: one accuracy for all
        return {"accuracy": 0.578 if model.budget < 1 else toy_accuracy(model.arch, model.budget)}

    agent = AutoDistillation(Toy, mf_config(max_trials=3), rec.train, majority_class_below_full_budget, toy_profile,
                             output_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="autodistill_trainer.search.multi_fidelity"):
        agent.search_loop()
    warnings = [r.getMessage() for r in caplog.records if "scored the same" in r.getMessage()]
    assert len(warnings) >= 1 and len(warnings) == len({w.split(" (")[0] for w in warnings})  # once per rung
    assert warnings[0].startswith("rung 0 (0.111 of the training budget): all 3 candidates scored the same "
                                  "accuracy = 0.578")
    assert "raise search.multi_fidelity.min_fraction (now 0.111)" in warnings[0]


def test_distinct_rung_results_raise_no_flat_rung_warning(tmp_path, caplog):
    rec = BudgetRecorder()
    agent = AutoDistillation(Toy, mf_config(max_trials=3), rec.train, rec.eval, toy_profile, output_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="autodistill_trainer.search.multi_fidelity"):
        agent.search_loop()
    assert not [r for r in caplog.records if "scored the same" in r.getMessage()]


def test_only_full_budget_results_reach_the_front_and_the_best_arch(tmp_path):
    rec = BudgetRecorder()
    agent = AutoDistillation(Toy, mf_config(max_trials=3), rec.train, rec.eval, toy_profile, output_dir=str(tmp_path))
    best = agent.search_loop()
    result = agent.result()
    full = [r for r in agent.search_result if r["status"] == "trained" and r["budget"] == 1.0]
    assert full and all(r["budget"] == 1.0 for r in result.pareto_front)
    assert best == result.best_row["arch"]
    assert result.best_row["budget"] == 1.0 and result.n_trained == len(full)
    # a lower-rung row with a higher accuracy than every full-budget one still stays out of the front
    lower = [r for r in agent.search_result if r["budget"] < 1]
    assert lower and not {r["number"] for r in lower} & {r["number"] for r in result.pareto_front}


def test_invalid_and_over_budget_archs_are_settled_at_rung_0_and_never_promoted(tmp_path):
    rec = BudgetRecorder()

    def builder(arch):
        if arch["a"] == 5:
            raise InvalidArchitectureError("a=5 is not buildable")
        return Toy(arch)

    # latency = 1 + a + 0.5 b: b = 4 with a = 4 is 7 ms > 6.5
    agent = AutoDistillation(builder, mf_config(max_trials=3, max_latency_ms=6.5), rec.train, rec.eval, toy_profile,
                             output_dir=str(tmp_path))
    agent.search_loop()
    rows = agent.search_result
    bad = [r for r in rows if r["status"] in ("invalid", "over_budget")]
    assert bad and all(r["rung"] == 0 for r in bad)
    assert all(json.loads(k)["a"] != 5 and 1 + json.loads(k)["a"] + 0.5 * json.loads(k)["b"] <= 6.5
               for _, k in rec.calls)
    bad_keys = [arch_key(r["arch"]) for r in bad]
    assert len(bad_keys) == len(set(bad_keys))  # each settled once: never proposed again at rung 0
    _check_promotions(agent.study.get_trials())


def test_a_train_func_without_budget_is_refused_before_any_training(tmp_path):
    built = []

    def builder(arch):
        built.append(arch)
        return Toy(arch)

    def train(model):  # no budget parameter
        raise AssertionError("must not train")

    agent = AutoDistillation(builder, mf_config(), train, lambda m: {"accuracy": 0.5}, toy_profile,
                             output_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="'budget' parameter"):
        agent.search_loop()
    assert built == []

    def train_kwargs(model, **kwargs):  # **kwargs takes a budget
        model.budget = kwargs["budget"]

    ok = AutoDistillation(Toy, mf_config(max_trials=3), train_kwargs, lambda m: {"accuracy": m.budget}, toy_profile,
                          output_dir=str(tmp_path / "kw"))
    ok.search_loop()
    assert {r["metrics"]["accuracy"] for r in ok.search_result if r["status"] == "trained"} <= {0.111, 0.333, 1.0}


def test_plain_search_gives_a_budget_taking_train_func_the_full_budget(tmp_path):
    rec = BudgetRecorder()
    cfg = mf_config(max_trials=3)
    del cfg["search"]["multi_fidelity"]
    agent = AutoDistillation(Toy, cfg, rec.train, rec.eval, toy_profile, output_dir=str(tmp_path))
    agent.search_loop()
    assert [b for b, _ in rec.calls] == [1.0, 1.0, 1.0]
    assert all(r["rung"] == 0 and r["budget"] == 1.0 and r["parent"] is None for r in agent.search_result)


@pytest.mark.parametrize("multi_fidelity", [False, True], ids=["plain", "multi_fidelity"])
def test_time_budget_stops_the_search_cleanly_and_a_rerun_continues(tmp_path, multi_fidelity):
    starts: list[float] = []
    delay = {"s": 1.0}

    def train(model, budget):
        starts.append(time.monotonic())
        time.sleep(delay["s"])
        model.budget = budget

    def evaluate(model):
        return {"accuracy": toy_accuracy(model.arch, model.budget)}

    cfg = mf_config(max_trials=3 if multi_fidelity else 6, time_budget_s=3.0)
    if not multi_fidelity:
        del cfg["search"]["multi_fidelity"]
    agent = AutoDistillation(Toy, cfg, train, evaluate, toy_profile, output_dir=str(tmp_path))
    t0 = time.monotonic()
    agent.search_loop()
    first_run = len(starts)
    assert 1 <= first_run <= 4 and all(s - t0 < 3.0 for s in starts)  # nothing started after the budget
    assert not [t for t in agent.study.get_trials() if t.state.name == "RUNNING"]
    assert json.loads((tmp_path / "search_results.json").read_text())["trials"]
    cfg["search"]["time_budget_s"], delay["s"] = None, 0.0
    again = AutoDistillation(Toy, cfg, train, evaluate, toy_profile, output_dir=str(tmp_path))
    again.search_loop()
    trials = again.study.get_trials()
    keys = [(arch_key(t.params), t.user_attrs.get("rung", 0)) for t in trials if t.state.name == "COMPLETE"]
    assert len(keys) == len(set(keys)) and len(starts) > first_run  # resumed, nothing retrained
    spent = sum(t.user_attrs.get("budget", 1.0) for t in trials if t.state.name == "COMPLETE")
    if multi_fidelity:
        assert spent <= 3 + 1e-9 and again.result().best_row["budget"] == 1.0
    else:
        assert spent == 6


def _log(path):
    if not os.path.exists(path):
        return []
    return [(kind, int(pid), float(budget), arch)
            for kind, pid, budget, arch in (line.split(" ", 3) for line in open(path).read().splitlines())]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_kill_9_between_rungs_then_resume_retrains_no_finished_rung(tmp_path):
    log = str(tmp_path / "train.log")
    cmd = [sys.executable, WORKER, "worker", "--out", str(tmp_path), "--log", log, "--max-trials", "3",
           "--die-at-budget", "0.333"]
    killed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert killed.returncode == -9, killed.stderr[-3000:]
    before = _log(log)
    assert before[-1][0] == "start" and before[-1][2] == 0.333  # died training the first rung-1 promotion
    victim = before[-1][3]
    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _log(log)[len(before):]
    done_before = {(b, a) for kind, _, b, a in before if kind == "done"}
    done_after = [(b, a) for kind, _, b, a in after if kind == "done"]
    assert not done_before & set(done_after)  # no finished rung trained again
    assert done_after[0] == (0.333, victim)  # the interrupted rung is retried first, same arch and rung
    trials = optuna.load_study(study_name="mf", storage=f"sqlite:///{tmp_path}/autodistill_study.db").get_trials()
    retried = [t for t in trials if t.user_attrs.get("proposed_by") == "retry"]
    assert len(retried) == 1 and retried[0].user_attrs["rung"] == 1 and retried[0].user_attrs["budget"] == 0.333
    spent = sum(t.user_attrs["budget"] for t in trials  # an interrupted trial (FAIL, status not failed) is free
                if t.state.name == "COMPLETE" or t.user_attrs.get("status") == "failed")
    assert spent <= 3 + 1e-9
    assert len(done_before) + len(done_after) == len(set(done_before) | set(done_after))


# ----------------------------------------------------------------------------------- PostgreSQL

from test_search_distributed import postgres_url  # noqa: E402,F401  (the throw-away server fixture)


def test_two_postgres_workers_promote_nothing_twice(postgres_url, tmp_path):  # noqa: F811
    out, log = str(tmp_path), str(tmp_path / "train.log")
    common = ["--storage", postgres_url, "--study", "mf-shared", "--out", out, "--log", log, "--max-trials", "3",
              "--sleep", "0.1"]
    create = subprocess.run([sys.executable, WORKER, "create", *common], env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert create.returncode == 0, create.stderr[-3000:]
    # same seed on purpose: both advisors propose the same sequence, and both see the same promotions
    workers = [subprocess.Popen([sys.executable, WORKER, "worker", *common, "--hostname", f"host{i}"], env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    done = [(b, a) for kind, _, b, a in _log(log) if kind == "done"]
    assert len(done) == len(set(done))  # no (arch, rung) trained twice, promotions included
    assert len({pid for kind, pid, _, _ in _log(log) if kind == "done"}) == 2  # both workers trained
    assert sum(b for b, _ in done) <= 3 + 1e-9
    trials = optuna.load_study(study_name="mf-shared", storage=postgres_url).get_trials()
    promoted = [t for t in trials if t.user_attrs.get("proposed_by") == "promotion" and t.state.name == "COMPLETE"]
    assert promoted
    pairs = [(arch_key(t.params), t.user_attrs["rung"]) for t in promoted]
    assert len(pairs) == len(set(pairs))
    for t in promoted:
        parent = trials[t.user_attrs["parent"]]
        assert parent.state.name == "COMPLETE" and parent.params == t.params
        assert parent.user_attrs["rung"] == t.user_attrs["rung"] - 1
    assert not [t for t in trials if t.state.name == "RUNNING"]
    summary = json.loads(open(os.path.join(out, "search_results.json")).read())["multi_fidelity"]
    assert math.isclose(sum(b for b, _ in done), summary["budget_spent"], abs_tol=1e-6)


def test_scale_steps_scales_flash_and_regular_steps_together_and_keeps_at_least_one():
    from autodistill_trainer.configs import parse_distillation
    from autodistill_trainer.schedule import scale_steps

    flash, regular = parse_distillation(
        {"knowledge_transfer": {"block_names": [["a"], ["b"]], "layer_mappings_for_knowledge_transfer": [
            [("a", "a")], [("b", "b")]], "train_steps": [3, 10]}},
        {"layer_mappings_for_knowledge_transfer": [[("classifier", "classifier")]], "loss_types": [["KL"]],
         "add_origin_loss": [True], "train_steps": [25000]})
    f, r = scale_steps(flash, regular, 0.111)
    assert f.train_steps == [1, 2] and r.train_steps == 2775  # ceil(0.333) = 1, ceil(1.11) = 2, ceil(2775.0)
    assert flash.train_steps == [3, 10] and regular.train_steps == 25000  # the originals are unchanged
    assert scale_steps(flash, None, 1.0) == (flash, None)
    f, _ = scale_steps(dataclasses.replace(flash, train_steps=500), None, 0.333)
    assert f.train_steps == 167


def test_cli_runs_a_multi_fidelity_search_and_keeps_the_latency_table(tmp_path):
    out = tmp_path / "out"
    root = os.path.dirname(HERE)
    env = {**_env(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, os.path.join(root, "run_autodistill.py"), os.path.join(root, "recipes", "smoke.yaml"),
         "--output_dir", str(out), "--baseline.enabled", "false", "--auto_distillation.evaluation.export_onnx",
         "false", "--auto_distillation.search.multi_fidelity", "{min_fraction: 0.5, reduction_factor: 2}"],
        env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "search_results.json").read_text())
    trained = [r for r in data["trials"] if r["status"] == "trained"]
    # 2 valid archs of the smoke space at half the steps, the better one at the full budget
    assert sorted((r["rung"], r["budget"]) for r in trained) == [(0, 0.5), (0, 0.5), (1, 1.0)]
    assert data["multi_fidelity"]["budget_spent"] == 2.0
    assert [r["budget"] for r in data["pareto_front"]] == [1.0]
    assert data["best_model_arch"] == next(r["arch"] for r in trained if r["budget"] == 1.0)
    assert (out / "pareto_front.png").exists() and (out / "best_model" / "config.json").exists()
    tables = json.loads((out / "latency_model.json").read_text())["tables"]
    assert len(tables) == 1 and len(next(iter(tables.values()))) == 2  # one measured point per built arch
