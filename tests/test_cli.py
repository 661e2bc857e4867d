"""run_autodistill.py end to end: the smoke recipe, its outputs, local files with string labels, recipes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import MobileBertForSequenceClassification

from autodistill_trainer.recipe import apply_overrides, load_recipe, read_recipe

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "recipes" / "smoke.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_autodistill.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, cwd=ROOT)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    run = run_cli(str(SMOKE), "--output_dir", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run


def test_smoke_recipe_runs_search_flash_and_regular_distillation(smoke_run):
    out, run = smoke_run
    results = json.loads((out / "search_results.json").read_text())
    trained = [t for t in results["trials"] if t["state"] == "COMPLETE"]
    assert len(trained) == 2 and results["best_model_arch"] in [t["arch"] for t in trained]
    for trial in trained:
        assert {"accuracy", "latency"} <= set(trial["metrics"]) and trial["params"] > 0 and trial["flops"] > 0
    assert "flash 1/3" in run.stderr or "Distillation stage 1/3 (flash)" in run.stderr
    assert "Distillation stage 3/3 (regular)" in run.stderr
    assert "=== autodistill summary ===" in run.stdout and "same arch, no distillation" in run.stdout
    # counted as the search counts: 2 trained of max_trials 2; the 2 architectures with 3 heads are invalid
    assert "trained: 2 (max_trials 2), invalid: 2" in run.stdout


def test_smoke_outputs_are_written(smoke_run):
    out, _ = smoke_run
    for name in ("search_results.json", "search_results.csv", "search_results.md", "pareto_front.png", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["speedup"] > 1 and summary["baseline_without_distillation"]["accuracy"] is not None
    card = (out / "best_model" / "README.md").read_text()
    assert "pipeline(" in card and str(summary["best_student"]["arch"]["hidden_size"]) in card
    assert "- initialisation: word embeddings from the teacher's (PCA to the student's width)" in card
    assert summary["trials"] == {"trained": 2, "complete": 2, "failed": 0, "invalid": 2, "over_budget": 0}
    marker = json.loads((out / ".autodistill.json").read_text())
    assert marker["fingerprint"]["task"] == "text-classification" and marker["committed"] is True
    assert not (out / ".autodistill.lock").exists()
    assert (out / "best_model" / ".autodistill_export.json").is_file()
    with open(out / "search_results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(json.loads((out / "search_results.json").read_text())["trials"])


def test_best_model_works_with_a_plain_transformers_pipeline(smoke_run):
    out, _ = smoke_run
    code = (
        "import sys, json; from transformers import pipeline; "
        f"clf = pipeline('text-classification', model={str(out / 'best_model')!r}); "
        "r = clf('a gorgeous, moving film'); assert 'autodistill_trainer' not in sys.modules; print(json.dumps(r))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr[-2000:]
    (prediction,) = json.loads(run.stdout.strip().splitlines()[-1])
    assert prediction["label"] in ("fresh", "rotten")


def test_local_csv_files_with_string_labels(tmp_path):
    rows = [("a wonderful, warm film", "pos"), ("dull and lifeless", "neg"), ("a joy to watch", "pos"),
            ("tedious and far too long", "neg")] * 12
    for name, part in (("train.csv", rows), ("valid.csv", rows[:16])):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["review", "sentiment"])
            writer.writerows(part)
    run = run_cli(
        str(SMOKE), "--output_dir", str(tmp_path / "out"), "--data.dataset_name", "null",
        "--data.train_file", str(tmp_path / "train.csv"), "--data.validation_file", str(tmp_path / "valid.csv"),
        "--data.text_column", "review", "--data.label_column", "sentiment", "--max_trials", "1",
        "--baseline.enabled", "false",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    config = json.loads((tmp_path / "out" / "best_model" / "config.json").read_text())
    assert set(config["id2label"].values()) == {"neg", "pos"}


def test_overrides_reach_nested_and_unambiguous_keys():
    recipe = apply_overrides(read_recipe(str(SMOKE)), [
        "--max_trials", "5", "--auto_distillation.search.search_algorithm", "TPE", "--learning_rate=5e-4",
        "--data.max_length", "48", "--auto_distillation.regular_distillation.train_steps", "3",
    ])
    search = recipe["auto_distillation"]["search"]
    assert search["max_trials"] == 5 and search["search_algorithm"] == "TPE"
    assert recipe["auto_distillation"]["train"]["learning_rate"] == 5e-4
    assert recipe["data"]["max_length"] == 48
    assert recipe["auto_distillation"]["regular_distillation"]["train_steps"] == 3
    parsed = load_recipe(str(SMOKE), ["--max_trials", "5", "--learning_rate", "5e-4"])
    assert parsed.training.learning_rate == 5e-4


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")))
def test_every_shipped_recipe_validates(name, tmp_path, monkeypatch):
    from helpers import build_fake_wordnet_task

    build_fake_wordnet_task(tmp_path)  # the second task's data step, from a stand-in sdist (its own tests)
    monkeypatch.chdir(tmp_path)  # recipes name their local data relative to the working directory
    recipe = load_recipe(str(ROOT / "recipes" / name))
    assert recipe.autodistillation.search.search_space
    text = (ROOT / "recipes" / name).read_text()
    assert "Expected:" in text or "Hardware and time" in text or "expects" in text.lower(), "state hardware and time"


def test_smoke_recipe_under_accelerate_with_two_processes(tmp_path):
    from launch import accelerate_launch_two_cpu_processes

    run = accelerate_launch_two_cpu_processes(str(ROOT / "run_autodistill.py"), str(SMOKE), "--output_dir",
                                              str(tmp_path), cwd=str(ROOT))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("=== autodistill summary ===") == 1  # reports come from one process
    results = json.loads((tmp_path / "search_results.json").read_text())
    assert sum(t["state"] == "COMPLETE" for t in results["trials"]) == 2
    assert (tmp_path / "best_model" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------ search.strategy: supernet
# What the demo recipe runs, on the smoke recipe: flash stages on the supernet, sandwich steps, proxies, finalists, the
# reports and the exported model. Its data.cache_dir is the smoke run's cache: one run reading another's outputs.

SUPERNET = ("{train_steps: 3, num_random: 1, num_candidates: 6, finalists: 2, finalist_budget: 0.5, eval_samples: 32, "
            "latency_measurements: 3}")
SPACE = ("{hidden_size: [64, 96], intra_bottleneck_size: [32], num_attention_heads: [1, 2], intermediate_size: [64], "
         "num_hidden_layers: [1, 2]}")


@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory, smoke_run):
    out = tmp_path_factory.mktemp("supernet")
    run = run_cli(str(SMOKE), "--output_dir", str(out), "--data.cache_dir", str(smoke_run[0] / "cache"),
                  "--auto_distillation.search.strategy", "supernet",
                  "--auto_distillation.search.supernet", SUPERNET, "--auto_distillation.search.search_space", SPACE,
                  "--auto_distillation.evaluation.export_onnx", "false")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run


def test_the_cli_runs_supernet_flash_sandwich_proxies_and_finalists(supernet_run):
    out, run = supernet_run
    flash = json.loads((out / "supernet" / "flash" / "flash.json").read_text())
    assert flash["blocks_done"] == [0, 1] and flash["steps"] == 6  # the smoke recipe's 3 flash steps per layer
    results = json.loads((out / "search_results.json").read_text())
    summary = results["supernet"]
    assert summary["proxies_evaluated"] == 6 and summary["finalists_trained"] == 2
    assert summary["subnet_steps"] == 3 * 3 + flash["subnet_steps"]
    # the smoke run's cache (same data, tokenizer, deterministically fine-tuned teacher) serves the sandwich steps and
    # the finalists: no teacher pass at all
    assert "Computing teacher outputs" not in run.stderr
    assert "Supernet steps read the cached teacher logits" in run.stderr
    assert not (out / "cache").exists()


def test_the_cli_plots_the_proxies_behind_the_finalists_and_ships_a_plain_model(supernet_run):
    out, run = supernet_run
    assert ", 6 screened) to " in run.stderr  # the plot's log line: the 6 proxies drawn behind the finalists
    assert (out / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    shipped = MobileBertForSequenceClassification.from_pretrained(out / "best_model")
    for field, value in summary["best_student"]["arch"].items():
        assert getattr(shipped.config, field) == value
