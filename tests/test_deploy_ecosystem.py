"""Ecosystem conventions: the Optuna study names its metrics; the model card's metadata parses with huggingface_hub."""

from __future__ import annotations

import optuna

from autodistill_trainer.search import AutoDistillation


class _Arch:
    def __init__(self, arch):
        self.arch = arch


def test_the_study_names_its_metrics_for_dashboards(tmp_path):
    design = {"search": {"search_space": {"a": [1, 2]}, "search_algorithm": "random",
                         "metrics": ["accuracy", "latency"], "higher_is_better": [True, False], "max_trials": 1,
                         "seed": 0}}
    agent = AutoDistillation(_Arch, design, train_func=lambda m: None, eval_func=lambda m: {"accuracy": 0.5},
                             profile_func=lambda m: {"latency": float(m.arch["a"])}, output_dir=str(tmp_path))
    agent.search_loop()
    assert agent.study.metric_names == ["accuracy", "latency"]
    (summary,) = optuna.get_all_study_summaries(agent.storage_url)
    reloaded = optuna.load_study(study_name=summary.study_name, storage=agent.storage_url)
    assert reloaded.metric_names == ["accuracy", "latency"]
