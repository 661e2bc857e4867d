"""The supernet search strategy on a toy backend: proxy rows then final rows, front from finals only, dedupe,
invalid sub-networks refused before evaluation, resume, compute accounting, time budget, finalist choice."""

from __future__ import annotations

import json

import pytest

from autodistill_trainer.configs import SearchConfig
from autodistill_trainer.errors import ConfigError, InvalidArchitectureError
from autodistill_trainer.search.ledger import arch_key
from autodistill_trainer.search.supernet_compute import choose_finalists
from autodistill_trainer.search.supernet_strategy import SupernetSearch

SPACE = {"hidden_size": [64, 96, 128], "num_hidden_layers": [2, 3, 4]}
INVALID = {"hidden_size": 96, "num_hidden_layers": 3}  # the toy's one arch that is not a sub-network


def toy_accuracy(arch):
    return round(0.5 + arch["hidden_size"] / 1000 + arch["num_hidden_layers"] / 100, 6)


class ToyBackend:
    """A supernet stand-in: exact toy profiles, deterministic accuracies, and a record of every call."""

    trial_steps = 10
    trial_examples = 160

    def __init__(self, supernet_cut: bool = False):
        self.calls = {"train_supernet": 0, "proxy": [], "finalist": [], "validate": []}
        self.supernet_cut = supernet_cut

    def train_supernet(self, deadline):
        self.calls["train_supernet"] += 1
        return None if self.supernet_cut else {"steps": 20, "subnet_steps": 80, "wall_s": 1.5}

    def validate(self, arch):
        self.calls["validate"].append(dict(arch))
        if dict(arch) == INVALID:
            raise InvalidArchitectureError("num_hidden_layers=3 is not nested with hidden_size=96 (toy rule)")

    def profile(self, arch):
        params = arch["hidden_size"] * arch["num_hidden_layers"] * 1000
        return {"params": params, "flops": 2 * params, "latency": arch["hidden_size"] * arch["num_hidden_layers"] / 100}

    def proxy_evaluate(self, arch):
        assert dict(arch) != INVALID, "an invalid sub-network was evaluated"
        self.calls["proxy"].append(dict(arch))
        return {"accuracy": toy_accuracy(arch), "eval_examples": 32}

    def train_finalist(self, arch):
        self.calls["finalist"].append(dict(arch))
        latency = self.profile(arch)["latency"] * 1.1
        return {"metrics": {"accuracy": toy_accuracy(arch) + 0.05}, "model_dir": f"/tmp/toy/{arch_key(arch)}",
                "profile": {**self.profile(arch), "latency": latency}, "train_steps": 5}


def config(tmp_path, **supernet):
    search = {"search_space": SPACE, "search_algorithm": "random", "metrics": ["accuracy", "latency"], "seed": 3,
              "strategy": "supernet", "supernet": {"finalists": 2, **supernet}}
    return {"search": search}


def run(tmp_path, backend, **kwargs):
    search = config(tmp_path, **kwargs.pop("supernet", {}))
    search["search"].update(kwargs)
    agent = SupernetSearch(backend, search, output_dir=str(tmp_path), disable_tqdm=True)
    agent.search_loop()
    return agent


def test_proxies_then_finalists_and_only_finals_make_the_front_and_best(tmp_path):
    backend = ToyBackend()
    agent = run(tmp_path, backend)
    rows = agent.search_result
    proxies = [r for r in rows if r.get("fidelity") == "proxy"]
    finals = [r for r in rows if r.get("fidelity") == "final"]
    assert len(backend.calls["proxy"]) == 8  # the whole space (9) but the invalid arch
    assert sorted(arch_key(a) for a in backend.calls["proxy"]) == sorted(
        arch_key(r["arch"]) for r in proxies if r["status"] == "trained")
    assert {r["budget"] for r in proxies} == {0.0} and {r["rung"] for r in proxies} == {0}
    assert len(finals) == 2 and all(r["status"] == "trained" and r["rung"] == 1 for r in finals)
    assert max(r["number"] for r in proxies) < min(r["number"] for r in finals)  # proxies first
    assert {r["parent"] for r in finals} <= {r["number"] for r in proxies}
    assert agent.pareto_front and all(r.get("fidelity") == "final" for r in agent.pareto_front)
    assert agent.best_model_arch in [r["arch"] for r in finals]
    assert agent.result().best_model_dir.startswith("/tmp/toy/")
    assert agent.result().n_trained == 2  # finals only
    # a proxy's latency is predicted, a finalist's measured
    final = finals[0]
    assert final["latency"] == pytest.approx(backend.profile(final["arch"])["latency"] * 1.1)


def test_invalid_sub_networks_are_refused_before_evaluation(tmp_path):
    backend = ToyBackend()
    agent = run(tmp_path, backend)
    invalid = [r for r in agent.search_result if r["status"] == "invalid"]
    assert [r["arch"] for r in invalid] == [INVALID]
    assert "InvalidArchitectureError" in invalid[0]["failure_reason"]
    assert INVALID not in backend.calls["proxy"]


def test_no_sub_network_is_evaluated_twice(tmp_path):
    backend = ToyBackend()
    run(tmp_path, backend, supernet={"num_candidates": 8})
    keys = [arch_key(a) for a in backend.calls["proxy"]]
    assert len(keys) == len(set(keys))


def test_results_file_holds_fidelities_and_the_compute_in_full_trial_equivalents(tmp_path):
    run(tmp_path, ToyBackend(), supernet={"num_candidates": 4})
    data = json.loads((tmp_path / "search_results.json").read_text())
    assert data["strategy"] == "supernet"
    assert {r["fidelity"] for r in data["trials"] if r["status"] == "trained"} == {"proxy", "final"}
    assert all(r["fidelity"] == "final" for r in data["pareto_front"])
    summary = data["supernet"]
    assert summary["proxies_evaluated"] == 4 and summary["finalists_trained"] == 2
    # supernet 80 sub-network steps / 10; proxies 4 x 32 examples / (3 x 160); finalists 2 x 5 steps / 10
    assert summary["compute_fte"] == {"supernet": 8.0, "proxies": round(128 / 480, 4), "finalists": 1.0,
                                      "total": round(8.0 + 128 / 480 + 1.0, 4)}


def test_a_rerun_neither_reevaluates_proxies_nor_retrains_finalists(tmp_path):
    first = ToyBackend()
    run(tmp_path, first, supernet={"num_candidates": 4})
    assert len(first.calls["proxy"]) == 4 and len(first.calls["finalist"]) == 2
    again = ToyBackend()
    agent = run(tmp_path, again, supernet={"num_candidates": 4})
    assert again.calls["proxy"] == [] and again.calls["finalist"] == []
    assert len([r for r in agent.search_result if r.get("fidelity") == "final"]) == 2
    more = ToyBackend()  # a larger num_candidates evaluates only the new ones
    run(tmp_path, more, supernet={"num_candidates": 6})
    assert len(more.calls["proxy"]) == 2
    assert not {arch_key(a) for a in more.calls["proxy"]} & {arch_key(a) for a in first.calls["proxy"]}


class FakeClock:
    """``time`` for the strategy's modules: ``monotonic()`` moves only when a proxy is evaluated (1 s each)."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_a_time_budget_stops_new_candidates_and_a_rerun_continues(tmp_path, monkeypatch):
    from autodistill_trainer.search import multi_fidelity, supernet_strategy

    clock = FakeClock()
    monkeypatch.setattr(multi_fidelity, "time", clock)
    monkeypatch.setattr(supernet_strategy, "time", clock)
    slow = ToyBackend()
    slow.proxy_evaluate = lambda arch, evaluate=slow.proxy_evaluate: (clock.sleep(1.0), evaluate(arch))[1]
    agent = run(tmp_path, slow, time_budget_s=2.5)
    assert len(slow.calls["proxy"]) == 3  # started at 0, 1 and 2 s; none at 3 s
    assert slow.calls["finalist"] == []  # no new phase after the budget
    assert agent.best_model_arch is None
    monkeypatch.undo()
    rest = ToyBackend()
    run(tmp_path, rest)
    assert len(slow.calls["proxy"]) + len(rest.calls["proxy"]) == 8
    assert len(rest.calls["finalist"]) == 2


def test_a_supernet_cut_by_the_time_budget_ends_the_search_before_any_proxy(tmp_path):
    backend = ToyBackend(supernet_cut=True)
    agent = run(tmp_path, backend, time_budget_s=100)
    assert backend.calls["train_supernet"] == 1 and backend.calls["proxy"] == [] and agent.search_result == []


def test_params_budget_rejects_proxies_by_exact_count_but_predicted_latency_never(tmp_path):
    backend = ToyBackend()
    agent = run(tmp_path, backend, max_params=300_000, max_latency_ms=0.01)
    over = [r for r in agent.search_result if r["status"] == "over_budget"]
    assert over and all(r["params"] > 300_000 and r["budget_key"] == "params" for r in over)
    assert all(backend.profile(a)["params"] <= 300_000 for a in backend.calls["proxy"])


def test_the_strategy_must_be_supernet(tmp_path):
    with pytest.raises(ConfigError, match="SupernetSearch needs search.strategy: supernet"):
        SupernetSearch(ToyBackend(), {"search": {"search_space": SPACE}}, output_dir=str(tmp_path))
    assert SearchConfig(search_space=SPACE, strategy="supernet").strategy == "supernet"


# ------------------------------------------------------------------------------------ finalist choice

def row(number, accuracy, latency):
    return {"number": number, "status": "trained", "arch": {"n": number},
            "metrics": {"accuracy": accuracy, "latency": latency}}


def test_finalists_under_a_latency_budget_are_the_most_accurate_within_it():
    rows = [row(0, 0.9, 5.0), row(1, 0.8, 2.0), row(2, 0.85, 2.5), row(3, 0.7, 1.0), row(4, 0.85, 2.9)]
    chosen = choose_finalists(rows, ["accuracy", "latency"], [True, False], 2, max_latency_ms=3.0)
    assert [r["number"] for r in chosen] == [2, 4]  # ties on accuracy: lower latency first


def test_finalists_without_a_budget_spread_along_the_front_and_fill_from_the_next_front():
    front = [row(0, 0.9, 5.0), row(1, 0.85, 3.0), row(2, 0.8, 2.0), row(3, 0.75, 1.5), row(4, 0.7, 1.0)]
    dominated = [row(5, 0.6, 4.0), row(6, 0.65, 6.0)]
    chosen = choose_finalists(front + dominated, ["accuracy", "latency"], [True, False], 3)
    assert [r["number"] for r in chosen] == [0, 2, 4]
    chosen = choose_finalists(front[:2] + dominated, ["accuracy", "latency"], [True, False], 3)
    assert [r["number"] for r in chosen] == [0, 1, 6]  # the next front's most accurate fills the third slot


def test_a_study_of_another_strategy_is_not_resumed_as_a_supernet_search(tmp_path):
    from autodistill_trainer.search import AutoDistillation

    plain = AutoDistillation(lambda arch: arch, {"search": {"search_space": SPACE, "search_algorithm": "random",
                                                            "metrics": ["accuracy", "latency"], "max_trials": 1}},
                             eval_func=lambda model: {"accuracy": 0.5},
                             profile_func=lambda model: {"params": 1.0, "latency": 1.0}, output_dir=str(tmp_path))
    plain.search_loop()
    backend = ToyBackend()
    with pytest.raises(ConfigError, match="holds 1 trials of another search strategy"):
        run(tmp_path, backend)
    assert backend.calls["train_supernet"] == 0
