"""The CLI summary says in words whether distillation beat the same architecture trained on labels only."""

from __future__ import annotations

from autodistill_trainer.cli_summary import distillation_verdict, format_summary


def _summary(student: float, baseline: float | None):
    return {"teacher": {"accuracy": 0.87, "latency": 20.0, "params": 22e6},
            "best_student": {"arch": {"hidden_size": 64}, "accuracy": student, "latency": 2.0, "params": 2e6},
            "baseline_without_distillation": None if baseline is None else
            {"accuracy": baseline, "latency": 2.0, "params": 2e6},
            "speedup": 10.0, "trials": {"trained": 2, "complete": 2, "failed": 0, "invalid": 0, "over_budget": 0},
            "max_trials": 2, "majority_class_rate": 0.1, "wall_time_s": 60.0}


def test_the_summary_warns_when_distillation_lost_to_labels_only():
    text = format_summary(_summary(0.7599, 0.7833), "accuracy", "/out")
    assert "same arch, no distillation" in text and "78.33%" in text
    assert ("warning: distillation did not beat the labels-only baseline (75.99% vs 78.33%, -2.34 points)"
            in text)


def test_a_tie_is_not_a_win():
    assert distillation_verdict(0.8, 0.8).startswith("  warning: distillation did not beat")


def test_the_summary_states_the_gain_when_distillation_helped():
    text = format_summary(_summary(0.7938, 0.7703), "accuracy", "/out")
    assert "distillation: +2.35 points over the same architecture trained on labels only" in text
    assert "did not beat" not in text


def test_no_verdict_without_a_baseline():
    text = format_summary(_summary(0.8, None), "accuracy", "/out")
    assert "distillation:" not in text and "did not beat" not in text
    assert distillation_verdict(None, 0.5) is None
