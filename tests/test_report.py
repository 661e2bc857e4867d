"""Results table, Pareto front and plot, model card."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys

from huggingface_hub import ModelCard

from autodistill_trainer.report import (
    front_numbers, plot_pareto_front, split_screened, write_model_card, write_results_table,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _rows():
    """Rows as the search writes them: four trained (#2 dominated by #1), one invalid with a profiled latency."""
    rows = []
    for i, (acc, lat) in enumerate([(0.75, 1.8), (0.78, 2.5), (0.77, 3.1), (0.80, 4.0)]):
        rows.append({
            "number": i, "arch": {"num_hidden_layers": 4 + i, "hidden_size": 128, "num_attention_heads": 2},
            "status": "trained", "state": "COMPLETE", "metrics": {"accuracy": acc, "latency": lat},
            "params": 2_740_000 + i, "flops": 123_456_789, "latency": lat, "duration_s": 95.25,
            "failure_reason": None, "worker": "host:1",
        })
    rows.append({
        "number": 4, "arch": {"num_hidden_layers": 4, "hidden_size": 100, "num_attention_heads": 3},
        "status": "invalid", "state": "PRUNED", "metrics": None, "params": None, "flops": None, "latency": None,
        "duration_s": 0.01, "failure_reason": "3 heads do not divide 100", "worker": "host:1",
    })
    return rows


def test_results_table_has_one_row_per_trial_with_metrics_arch_and_reasons(tmp_path):
    rows = _rows()
    csv_path, md_path = write_results_table(list(reversed(rows)), tmp_path)
    with open(csv_path) as f:
        reader = csv.DictReader(f)
        records = list(reader)
        header = reader.fieldnames
    assert header == ["number", "status", "accuracy", "latency", "params", "flops", "arch.num_hidden_layers",
                      "arch.hidden_size", "arch.num_attention_heads", "duration_s", "worker", "failure_reason"]
    assert [r["number"] for r in records] == ["0", "1", "2", "3", "4"]  # sorted by trial number
    assert records[3] == {"number": "3", "status": "trained", "accuracy": "0.8", "latency": "4", "params": "2740003",
                          "flops": "123456789", "arch.num_hidden_layers": "7", "arch.hidden_size": "128",
                          "arch.num_attention_heads": "2", "duration_s": "95.25", "worker": "host:1",
                          "failure_reason": ""}
    assert records[4]["status"] == "invalid" and records[4]["accuracy"] == ""
    assert records[4]["failure_reason"] == "3 heads do not divide 100"
    lines = md_path.read_text().splitlines()
    assert lines[0] == ("| number | status | accuracy | latency (ms) | params | flops | num_hidden_layers | hidden_size"
                        " | num_attention_heads | duration_s | worker | failure_reason |")
    assert lines[2] == "| 0 | trained | 0.7500 | 1.8 | 2.74M | 123M | 4 | 128 | 2 | 95.2 | host:1 |  |"
    assert lines[6].endswith("| 3 heads do not divide 100 |")
    assert lines[-1] == "5 trials, 4 trained. Latency in ms."


def test_untrained_rows_show_their_profiled_latency(tmp_path):
    rows = _rows()
    rows[4].update(status="over_budget", latency=9.5, failure_reason="latency 9.5 ms > max_latency_ms 5")
    csv_path, _ = write_results_table(rows, tmp_path)
    with open(csv_path) as f:
        records = list(csv.DictReader(f))
    assert records[4]["latency"] == "9.5" and records[4]["accuracy"] == ""


def test_front_is_the_non_dominated_trained_trials():
    assert front_numbers(_rows()) == [0, 1, 3]  # 2 (0.77 at 3.1 ms) is dominated by 1 (0.78 at 2.5 ms)
    rows = _rows()
    rows[0]["metrics"] = {"accuracy": 0.81, "latency": 1.0}  # now dominates every other trial
    assert front_numbers(rows) == [0]


def test_pareto_plot_is_a_png(tmp_path):
    path = plot_pareto_front(
        _rows(), tmp_path / "sub" / "pareto.png",
        teacher={"latency": 18.6, "accuracy": 0.852, "label": "teacher"},
        baseline={"latency": 2.2, "accuracy": 0.754, "label": "baseline"},
    )
    assert path == tmp_path / "sub" / "pareto.png" and path.read_bytes()[:8] == PNG


def test_screened_rows_are_split_from_full_budget_rows_by_fidelity_or_budget():
    supernet = [dict(r, fidelity="final" if r["number"] < 2 else "proxy") for r in _rows()]
    full, screened, label = split_screened(supernet)
    assert [r["number"] for r in full] == [0, 1] and [r["number"] for r in screened] == [2, 3, 4]
    assert label == "proxies: inherited weights, scored on the validation set, predicted latency"
    assert "scored on 256 validation examples" in split_screened(supernet, 256)[2]
    rungs = [dict(r, budget=1.0 if r["number"] % 2 else 0.25) for r in _rows()]
    full, screened, label = split_screened(rungs)
    assert [r["number"] for r in full] == [1, 3] and [r["number"] for r in screened] == [0, 2, 4]
    assert label.startswith("lower-rung")
    full, screened, _ = split_screened(_rows())  # a plain search screens nothing
    assert len(full) == len(_rows()) and screened == []


def test_the_plot_draws_screened_rows_behind_the_front_without_moving_it(tmp_path, caplog):
    rows = _rows()
    proxies = [{"number": 100 + i, "status": "trained", "metrics": {"accuracy": 0.9, "latency": 0.5 + i}}
               for i in range(3)]  # better than every trial: would be on the front if they counted
    with caplog.at_level(logging.INFO, logger="autodistill_trainer.report"):
        path = plot_pareto_front(rows, tmp_path / "p.png", screened=proxies, screened_label="proxies")
    assert path.read_bytes()[:8] == PNG
    assert "(4 trials, 3 on the front, 3 screened)" in caplog.text


def test_plotting_leaves_matplotlib_global_state_alone(tmp_path):
    code = (
        "import sys, matplotlib; matplotlib.use('svg'); from autodistill_trainer.report import plot_pareto_front; "
        f"plot_pareto_front([], {str(tmp_path / 'p.png')!r}); "
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend(); "
        "assert 'matplotlib.pyplot' not in sys.modules; print('ok')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG


def test_model_card_has_arch_metrics_and_pipeline_snippet(tmp_path):
    arch = {"num_hidden_layers": 6, "hidden_size": 128, "intra_bottleneck_size": 64, "num_attention_heads": 2}
    path = write_model_card(
        tmp_path, arch,
        metrics={"accuracy": 0.791, "latency": 2.2, "params": 2_740_000},
        teacher_metrics={"accuracy": 0.852, "latency": 18.6, "params": 22_700_000},
        search_summary={"algorithm": "BO", "n_trials": 20, "recipe": "recipes/demo.yaml",
                        "distillation": "flash + regular"},
        base_model="sentence-transformers/all-MiniLM-L6-v2",
    )
    card = path.read_text()
    assert path.name == "README.md"
    data = ModelCard.load(path).data  # the metadata as the Hub reads it
    assert (data.library_name, data.pipeline_tag) == ("transformers", "text-classification")
    assert data.tags == ["distillation", "mobilebert", "autodistill-trainer"]
    for key, value in arch.items():
        assert f"| {key} | {value} |" in card
    assert f'pipeline("text-classification", model="{tmp_path}")' in card
    assert "**8.5x**" in card  # 18.6 / 2.2
    assert "| accuracy | 0.7910 | 0.8520 |" in card and "| latency (ms) | 2.2 | 18.6 |" in card
    assert "Accuracy retained: 92.8% of the teacher's." in card  # 0.791 / 0.852
    assert "- Search algorithm: BO" in card and "- Recipe: `recipes/demo.yaml`" in card


def test_model_card_says_nothing_was_learned_when_every_model_scores_the_majority_rate(tmp_path):
    card = write_model_card(
        tmp_path, {"hidden_size": 64}, metrics={"accuracy": 0.578, "latency": 2.0},
        teacher_metrics={"accuracy": 0.578, "latency": 10.0}, search_summary={}, base_model=None,
        majority_class_rate=0.578,
    ).read_text()
    assert "All models predict the majority class (57.8%): nothing was learned." in card
    assert "retained" not in card
