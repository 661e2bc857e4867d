"""The CLI's deployment outputs on the smoke recipe: best_model/onnx/, the deployment summary and model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from autodistill_trainer.deploy import RUNTIMES  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "recipes" / "smoke.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "PYTHONPATH": str(ROOT)}
MODELS = ("teacher", "best_student", "baseline_without_distillation")


@pytest.fixture(scope="module")
def deploy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy")
    run = subprocess.run([sys.executable, str(ROOT / "run_autodistill.py"), str(SMOKE), "--output_dir", str(out),
                          "--max_trials", "1", "--latency_runtime", "onnxruntime-int8", "--export_onnx", "front"],
                         capture_output=True, text=True, timeout=900, env=ENV, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run, json.loads((out / "summary.json").read_text())


def test_best_model_holds_onnx_fp32_and_int8_listed_in_the_manifest(deploy_run):
    out, _, _ = deploy_run
    onnx_dir = out / "best_model" / "onnx"
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["model.onnx", "model_int8.onnx"]
    manifest = json.loads((out / "best_model" / ".autodistill_export.json").read_text())
    assert {"onnx/model.onnx", "onnx/model_int8.onnx"} <= set(manifest["files"])


def test_export_onnx_front_exports_each_front_student_beside_its_trial_model(deploy_run):
    out, run, summary = deploy_run
    (entry,) = summary["deployment"]["front_exports"]  # max_trials 1: a front of one
    assert entry["arch"] == summary["best_student"]["arch"]
    assert os.path.dirname(entry["onnx_dir"]) == entry["model_dir"]
    assert os.path.realpath(entry["model_dir"]).startswith(os.path.realpath(out / "trials"))
    assert sorted(os.listdir(entry["onnx_dir"])) == ["model.onnx", "model_int8.onnx"]
    assert entry["max_abs_diff_by_runtime"]["onnxruntime"] < 1e-4
    assert "Pareto-front students exported to ONNX: 1, each in <trial model dir>/onnx/" in run.stdout


def test_summary_reports_score_latency_size_and_speedup_per_runtime_for_each_model(deploy_run):
    _, _, summary = deploy_run
    for name in MODELS:
        model = summary[name]
        for key in ("latency_by_runtime", "accuracy_by_runtime", "size_mb_by_runtime", "speedup_by_runtime"):
            assert list(model[key]) == list(RUNTIMES), (name, key)
        assert all(v > 0 for v in model["latency_by_runtime"].values())
        assert model["max_abs_diff_by_runtime"]["onnxruntime"] < 1e-4
    assert summary["teacher"]["speedup_by_runtime"] == dict.fromkeys(RUNTIMES, 1.0)
    student = summary["best_student"]
    assert student["speedup_by_runtime"]["onnxruntime"] == pytest.approx(
        summary["teacher"]["latency_by_runtime"]["onnxruntime"] / student["latency_by_runtime"]["onnxruntime"])
    assert student["accuracy_by_runtime"]["onnxruntime"] == student["accuracy_by_runtime"]["pytorch"]
    assert summary["deployment"]["latency_runtime"] == "onnxruntime-int8"
    assert summary["deployment"]["runtimes"] == list(RUNTIMES)


def test_the_search_measures_latency_in_the_chosen_runtime(deploy_run):
    out, _, _ = deploy_run
    import optuna

    from autodistill_trainer.search.storage import DEFAULT_DB_FILENAME

    storage = f"sqlite:///{out / DEFAULT_DB_FILENAME}"
    (study_summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=study_summary.study_name, storage=storage)
    profiles = [t.user_attrs["profile"] for t in study.get_trials() if "profile" in t.user_attrs]
    assert profiles and {p["latency_runtime"] for p in profiles} == {"onnxruntime-int8"}


def test_the_cli_console_has_no_library_bars_or_repeated_warnings(deploy_run):
    _, run, _ = deploy_run  # the smoke recipe sets disable_tqdm: true
    for bar in ("Tokenizing train:", "Loading weights:", "Writing model shards:", "autodistill search:",
                "teacher outputs:", "baseline (labels only):"):
        assert bar not in run.stderr
    assert "pin_memory" not in run.stderr  # CPU only: torch's warning is filtered
    assert run.stderr.count("switched it to eager attention") <= 1


def test_baseline_model_is_kept_and_console_and_card_show_the_deployment_table(deploy_run):
    out, run, _ = deploy_run
    assert any(p.suffix == ".safetensors" for p in (out / "baseline" / "model").iterdir())
    assert "deployment: latency per runtime (batch 1 x 32 tokens" in run.stdout
    assert "the search ranked students by onnxruntime-int8 latency" in run.stdout
    assert sum(line.lstrip().startswith(("teacher ", "best student", "same arch")) and "onnxruntime-int8" in line
               for line in run.stdout.splitlines()) == 3
    card = (out / "best_model" / "README.md").read_text()
    assert "## Deployment" in card and "| best student (distilled) | onnxruntime-int8 |" in card
    assert "The search ranked students by their `onnxruntime-int8` latency." in card


def test_cli_model_card_metadata_names_the_hub_teacher_data_set_and_score(deploy_run):
    from huggingface_hub import ModelCard

    out, _, summary = deploy_run
    data = ModelCard.load(out / "best_model" / "README.md").data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # the recipe says offline:all-MiniLM-L6-v2
    assert data.datasets is None and data.license == "apache-2.0"  # the demo corpus has no Hub id
    (result,) = data.eval_results
    assert result.metric_type == "accuracy" and result.metric_value == summary["best_student"]["accuracy"]


@pytest.fixture
def without_onnx(monkeypatch):
    """As if the onnx extra were not installed: its packages (and our module that imports them) cannot be imported."""
    for name in ("onnx", "onnxruntime", "onnxscript", "autodistill_trainer.deploy.onnx_export"):
        monkeypatch.setitem(sys.modules, name, None)


def test_without_the_onnx_extra_the_run_works_in_pytorch_and_says_so_once(tmp_path, without_onnx, caplog, capsys):
    sys.path.insert(0, str(ROOT))
    import run_autodistill

    caplog.set_level("INFO")
    rc = run_autodistill.main([str(SMOKE), "--output_dir", str(tmp_path / "out"), "--max_trials", "1"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    hints = [r.getMessage() for r in caplog.records if "autodistill-trainer[onnx]" in r.getMessage()]
    assert hints == ["ONNX export and ONNX Runtime latency are off: they need "
                     '`pip install "autodistill-trainer[onnx]"` (onnx, onnxruntime, onnxscript not installed); '
                     "latency runtime: pytorch"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["deployment"]["runtimes"] == ["pytorch"] and summary["deployment"]["latency_runtime"] == "pytorch"
    assert list(summary["best_student"]["latency_by_runtime"]) == ["pytorch"]
    assert not (tmp_path / "out" / "best_model" / "onnx").exists()


@pytest.mark.parametrize("override, key", [("--latency_runtime=onnxruntime-int8", "latency_runtime"),
                                           ("--export_onnx=true", "export_onnx")])
def test_without_the_onnx_extra_an_explicit_onnx_option_is_refused_naming_the_key(tmp_path, without_onnx, capsys,
                                                                                  override, key):
    sys.path.insert(0, str(ROOT))
    import run_autodistill

    rc = run_autodistill.main([str(SMOKE), "--output_dir", str(tmp_path / "out"), *override.split("=")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: auto_distillation.evaluation.{key}: ") and err.count("\n") == 1, err
    assert 'pip install "autodistill-trainer[onnx]"' in err
    assert not (tmp_path / "out").exists()  # refused before the output directory is touched


def test_baseline_latency_is_its_own_measurement_in_the_search_runtime(deploy_run):
    _, _, summary = deploy_run
    baseline = summary["baseline_without_distillation"]
    assert baseline["latency"] == baseline["latency_by_runtime"]["onnxruntime-int8"]
    assert baseline["params"] == summary["best_student"]["params"]
