"""Results table, Pareto plot and model card."""

from __future__ import annotations

import csv

from autodistill_trainer.report import plot_pareto_front, write_model_card, write_results_table


def _rows():
    rows = []
    for i, (acc, lat) in enumerate([(0.75, 1.8), (0.78, 2.5), (0.77, 3.1), (0.80, 4.0)]):
        rows.append({
            "number": i,
            "arch": {"num_hidden_layers": 4 + i, "hidden_size": 128, "num_attention_heads": 2},
            "metrics": {"accuracy": acc, "latency": lat},
            "params": 2_740_000 + i,
            "flops": 123_456_789,
            "state": "COMPLETE",
            "duration_s": 95.25,
            "failure_reason": None,
            "pareto": i != 2,
        })
    rows.append({
        "number": 4, "arch": {"num_hidden_layers": 4, "hidden_size": 100, "num_attention_heads": 3}, "metrics": {},
        "params": None, "flops": None, "state": "FAIL", "duration_s": 0.01,
        "failure_reason": "3 heads do not divide 100",
    })
    return rows


def test_results_table_files_contain_every_row(tmp_path):
    csv_path, md_path = write_results_table(_rows(), tmp_path)
    with open(csv_path) as f:
        records = list(csv.DictReader(f))
    assert [r["number"] for r in records] == ["0", "1", "2", "3", "4"]
    assert records[3]["accuracy"] == "0.8" and records[3]["arch.num_hidden_layers"] == "7"
    assert records[4]["state"] == "FAIL" and records[4]["failure_reason"] == "3 heads do not divide 100"
    md = md_path.read_text()
    table_lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + 5  # header + rows
    assert "latency (ms)" in table_lines[0] and "num_hidden_layers" in table_lines[0]
    assert "2.74M" in md and "3 heads do not divide 100" in md


def test_pareto_plot_is_a_png(tmp_path):
    path = plot_pareto_front(
        _rows(), tmp_path / "pareto.png",
        teacher={"latency": 18.6, "accuracy": 0.852, "label": "teacher"},
        baseline={"metrics": {"latency": 2.2, "accuracy": 0.754}},
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_plot_computes_front_when_not_given(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "pareto"} for r in _rows()]
    path = plot_pareto_front(rows, tmp_path / "sub" / "front.png")
    assert path.is_file() and path.stat().st_size > 0


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
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-classification\n")
    for tag in ("- distillation", "- mobilebert", "- autodistill-trainer"):
        assert tag in card
    for key, value in arch.items():
        assert f"| {key} | {value} |" in card
    assert f'pipeline("text-classification", model="{tmp_path}")' in card
    assert "8.5x" in card  # 18.6 / 2.2
    assert "0.7910" in card and "0.8520" in card
    assert "BO" in card and "recipes/demo.yaml" in card


def test_a_metric_also_at_the_top_level_of_a_row_gets_one_column(tmp_path):
    rows = [{"number": 0, "state": "COMPLETE", "arch": {"hidden_size": 64}, "metrics": {"accuracy": 0.8, "latency": 2.0},
             "latency": 2.0, "params": 10, "status": "trained"}]
    _, md_path = write_results_table(rows, tmp_path)
    header = md_path.read_text().splitlines()[0]
    assert header.count("latency") == 1 and "status" in header
