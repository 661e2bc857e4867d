"""The latency model (issue 12): exact params and FLOPs from a config, latency regression on a synthetic table."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import MobileBertForSequenceClassification

from autodistill_trainer.builders import apply_architecture
from autodistill_trainer.configs.search import SearchConfig
from autodistill_trainer.profiling import count_flops, count_parameters
from autodistill_trainer.search.latency_model import (
    LatencyModel,
    kendall_tau,
    mape,
    mobilebert_costs,
    predicted_budget_violation,
)
from helpers import tiny_mobilebert_config

ARCHS = [
    {},
    {"hidden_size": 24, "intra_bottleneck_size": 12, "num_attention_heads": 3, "intermediate_size": 40},
    {"num_hidden_layers": 3, "num_feedforward_networks": 3, "embedding_size": 16, "trigram_input": False},
    {"use_bottleneck": False, "hidden_size": 12, "num_attention_heads": 3, "classifier_activation": False},
    {"use_bottleneck_attention": True, "key_query_shared_bottleneck": True, "normalization_type": "no_norm"},
    {"key_query_shared_bottleneck": False, "intra_bottleneck_size": 16, "embedding_size": 16},
]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()) or "base")
def test_params_and_flops_from_the_config_equal_the_counts_on_the_built_model(arch):
    config = apply_architecture(tiny_mobilebert_config(), arch)
    costs = mobilebert_costs(config, batch_size=2, seq_length=16)
    torch.manual_seed(0)
    model = MobileBertForSequenceClassification(config).eval()
    assert costs["params"] == count_parameters(model)
    assert costs["flops"] == count_flops(model, batch_size=2, seq_length=16)


def _synthetic(n, seed=0):
    """Archs whose 'measured' latency is 0.3 ms + 2 ns/FLOP + 5 us/matmul + 1 ns/activation, with 2% noise."""
    rng = random.Random(seed)
    table = []
    for i in range(n):
        features = {"flops": rng.uniform(1e6, 5e7), "matmuls": rng.randint(10, 200),
                    "activations": rng.uniform(1e4, 1e6)}
        true = 0.3 + 2e-6 * features["flops"] + 5e-3 * features["matmuls"] + 1e-6 * features["activations"]
        table.append(({"id": i}, features, true * (1 + rng.uniform(-0.02, 0.02)), true))
    return table


def test_the_regression_predicts_a_synthetic_table_and_refits_as_points_arrive(tmp_path):
    path = str(tmp_path / "latency_model.json")
    model = LatencyModel("machine-a", path, min_points=8)
    table = _synthetic(40)
    for arch, features, measured, _ in table[:7]:
        model.add(arch, features, measured)
    assert model.predict(table[0][1]) is None  # too few points to fit 4 coefficients honestly
    model.add(*table[7][:3])
    first = list(model.coefficients)
    for arch, features, measured, _ in table[8:30]:
        model.add(arch, features, measured)
    assert model.coefficients != first  # refitted as measurements arrived
    held_out = table[30:]
    predicted = [model.predict(f) for _, f, _, _ in held_out]
    truth = [t for _, _, _, t in held_out]
    assert mape(predicted, truth) < 3.0 and kendall_tau(predicted, truth) > 0.9
    assert model.max_relative_error < 0.05
    # cached as JSON per key; another key (machine, protocol, runtime) never sees these points
    reloaded = LatencyModel("machine-a", path)
    assert reloaded.predict(held_out[0][1]) == pytest.approx(predicted[0])
    assert LatencyModel("machine-b", path).predict(held_out[0][1]) is None
    assert list(json.loads(open(path).read())["tables"]) == ["machine-a"]


def test_measuring_an_arch_again_replaces_its_point():
    model = LatencyModel("k", None, min_points=1)
    model.add({"a": 1}, {"flops": 1.0, "matmuls": 1, "activations": 1}, 5.0)
    model.add({"a": 1}, {"flops": 1.0, "matmuls": 1, "activations": 1}, 7.0)
    assert [p["latency"] for p in model.points] == [7.0]


def test_kendall_tau_and_mape():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert mape([11, 9], [10, 10]) == pytest.approx(10.0)


def test_predicted_budgets_reject_exact_costs_and_latency_beyond_the_model_error():
    cfg = SearchConfig(search_space={"a": [1]}, max_params=100, max_latency_ms=10.0)
    assert predicted_budget_violation({"params": 101, "latency": 1.0}, cfg, None)[0] == "params"
    assert predicted_budget_violation({"params": 100, "latency": 10.9}, cfg, 0.05) is None  # within 10% margin
    assert predicted_budget_violation({"params": 100, "latency": 11.9}, cfg, 0.2) is None  # within its own error
    key, reason = predicted_budget_violation({"params": 100, "latency": 12.5}, cfg, 0.2)
    assert key == "latency" and "predicted latency 12.5 ms > budget 10 ms" in reason
    assert predicted_budget_violation({"params": 50, "latency": None}, cfg, None) is None


def test_a_search_rejects_predicted_budget_breakers_unbuilt_and_learns_every_measured_latency(tmp_path):
    from autodistill_trainer.builders import build_model
    from autodistill_trainer.search import AutoDistillation
    from autodistill_trainer.search.latency_model import ArchCostModel

    base = tiny_mobilebert_config()
    built = []

    def builder(arch):
        built.append(dict(arch))
        return build_model(MobileBertForSequenceClassification, base, arch, attn_implementation="eager")

    def profile(model):  # measured: the real counts, and a latency that grows with the FLOPs
        flops = count_flops(model, batch_size=1, seq_length=8)
        return {"params": count_parameters(model), "flops": flops, "latency": 0.5 + flops / 1e6}

    space = {"hidden_size": [16, 64], "intermediate_size": [32, 48]}
    big = mobilebert_costs(apply_architecture(base, {"hidden_size": 64, "intermediate_size": 32}), 1, 8)["params"]
    small = mobilebert_costs(apply_architecture(base, {"hidden_size": 16, "intermediate_size": 48}), 1, 8)["params"]
    assert small < big
    cost_model = ArchCostModel(base, LatencyModel("k", str(tmp_path / "latency_model.json"), min_points=2), 1, 8)
    config = {"search": {"search_space": space, "search_algorithm": "grid", "metrics": ["params"], "max_trials": 4,
                         "max_params": small, "seed": 0}}
    agent = AutoDistillation(builder, config, profile_func=profile, eval_func=lambda m: {}, output_dir=str(tmp_path),
                             cost_model=cost_model)
    agent.search_loop()
    rows = {json.dumps(r["arch"], sort_keys=True): r for r in agent.search_result}
    assert len(rows) == 4
    rejected = [r for r in rows.values() if r["status"] == "over_budget"]
    assert {r["arch"]["hidden_size"] for r in rejected} == {64}
    assert all("(not built)" in r["failure_reason"] and r["latency"] is None for r in rejected)
    assert all(a["hidden_size"] == 16 for a in built) and len(built) == 2  # budget breakers never built
    assert len(cost_model.latency_model.points) == 2  # every built arch's measured latency was learnt
    assert cost_model.predict({"hidden_size": 16, "intermediate_size": 32})["latency"] is not None
