"""The CLI's output directory and what it says at the end: refusals (one line, exit 2, the directory left exactly
as it was), the lock, the run fingerprint, safe export of best_model/, Ctrl-C, --help and the summary's truths."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"
sys.path.insert(0, str(ROOT))

import run_autodistill  # noqa: E402
from autodistill_trainer import tasks  # noqa: E402
from autodistill_trainer.cli_summary import format_summary, majority_class_rate, no_trained_message  # noqa: E402
from autodistill_trainer.recipe import load_recipe  # noqa: E402
from autodistill_trainer.run_dir import (  # noqa: E402
    LOCK_FILE, MARKER_FILE, NonFiniteModelError, OutputDirError, OutputDirLock, claim_output_dir, commit_output_dir,
    export_best_model, run_fingerprint,
)

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "PYTHONPATH": str(ROOT)}


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else b"", p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}


def _fingerprint(recipe_path: Path, *overrides: str) -> dict:
    recipe = load_recipe(str(recipe_path), list(overrides))
    return run_fingerprint(recipe.data, recipe.teacher, recipe.autodistillation.search)


def _csv(path: Path, labels: list[str], label_column: str = "label") -> Path:
    texts = ["a wonderful, warm film", "dull and lifeless", "a joy to watch", "tedious and far too long"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", label_column])
        writer.writerows((texts[i % 4], labels[i % len(labels)]) for i in range(24))
    return path


def _refused(capsys, *args: str, progress_bars: bool = False) -> str:
    """Run the CLI in-process; assert exit 2 and one error line (after the data set library's progress bars)."""
    rc = run_autodistill.main([str(SMOKE), *args])
    err = capsys.readouterr().err
    if progress_bars:
        err = err.rstrip("\n").rsplit("\n", 1)[-1] + "\n"
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fail the test if the CLI gets as far as loading data."""
    def boom(*args, **kwargs):
        raise AssertionError("data was loaded")

    task = tasks.TASKS["text-classification"]
    monkeypatch.setitem(tasks.TASKS, "text-classification", dataclasses.replace(task, load_data=boom))


def test_root_and_home_are_refused(tmp_path, capsys, monkeypatch, no_data_loading):
    assert "output_dir '/' is /" in _refused(capsys, "--output_dir", "/")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert "is your home directory" in _refused(capsys, "--output_dir", str(home))
    assert list(home.iterdir()) == []


def test_directory_with_unrelated_files_is_refused_and_left_as_it_was(tmp_path, capsys, no_data_loading):
    out = tmp_path / "mine"
    (out / "best_model").mkdir(parents=True)
    (out / "best_model" / "notes.txt").write_text("my notes")
    (out / "data.csv").write_text("a,b\n")
    before = _snapshot(out)
    err = _refused(capsys, "--output_dir", str(out))
    assert "holds files that are not autodistill output (best_model, data.csv)" in err
    assert _snapshot(out) == before


def test_output_dir_that_is_a_file_gives_one_line(tmp_path, capsys, no_data_loading):
    target = tmp_path / "file"
    target.write_text("x")
    assert "is a file, not a directory" in _refused(capsys, "--output_dir", str(target))  # refused at validation
    assert target.read_text() == "x"


def test_rerun_with_other_data_is_refused_before_anything_is_loaded(tmp_path, capsys, no_data_loading):
    out = tmp_path / "run"
    claim_output_dir(str(out), _fingerprint(SMOKE))  # what the first run (2-class demo data) wrote,
    commit_output_dir(str(out))  # once its teacher was ready
    (out / "teacher").mkdir()
    (out / "teacher" / "config.json").write_text("{}")
    before = _snapshot(out)
    three = _csv(tmp_path / "three.csv", ["neg", "pos", "mixed"])
    err = _refused(capsys, "--output_dir", str(out), "--data.dataset_name", "null", "--data.train_file", str(three),
                   "--data.validation_file", str(three))
    assert "holds a study for other inputs (data.dataset_name, data.train_file" in err
    assert "use a new output_dir, or delete this one" in err
    assert _snapshot(out) == before


def test_fingerprint_follows_file_contents_and_search_objectives(tmp_path):
    data = _csv(tmp_path / "d.csv", ["neg", "pos"])
    args = ("--data.dataset_name", "null", "--data.train_file", str(data), "--data.validation_file", str(data))
    first = _fingerprint(SMOKE, *args)
    assert _fingerprint(SMOKE, *args, "--max_trials", "7") == first  # more trials: the same study
    assert _fingerprint(SMOKE, *args, "--data.cache_dir", str(tmp_path / "shared")) == first  # caches: where they live
    _csv(data, ["neg", "pos", "mixed"])  # same path, new content
    changed = _fingerprint(SMOKE, *args)
    assert changed["data"]["train_file_sha256"] != first["data"]["train_file_sha256"]
    assert _fingerprint(SMOKE, *args, "--auto_distillation.search.metrics", "[accuracy]",
                        "--auto_distillation.search.higher_is_better", "[true]")["objectives"] != changed["objectives"]


def test_same_fingerprint_resumes_and_other_inputs_are_refused_once_committed(tmp_path):
    out = tmp_path / "run"
    assert claim_output_dir(str(out), {"data": {"a": 1}}) is True
    (out / "cache").mkdir()  # a first run stopped before its teacher was ready (bad data, Ctrl-C)
    assert claim_output_dir(str(out), {"data": {"a": 2}}) is True  # simply rebound to the new inputs
    commit_output_dir(str(out))
    (out / "teacher").mkdir()
    assert claim_output_dir(str(out), {"data": {"a": 2}}) is False  # the same inputs resume
    with pytest.raises(OutputDirError, match=r"\(data.a differ\)"):
        claim_output_dir(str(out), {"data": {"a": 3}})
    marker = json.loads((out / MARKER_FILE).read_text())
    assert marker["fingerprint"] == {"data": {"a": 2}} and marker["committed"] is True


def test_fingerprint_covers_how_students_are_built_so_a_resume_never_mixes_them(tmp_path):
    recipe = load_recipe(str(SMOKE))
    search = recipe.autodistillation.search

    def fingerprint(**model_changes) -> dict:
        model = dataclasses.replace(recipe.model, **model_changes)
        return run_fingerprint(recipe.data, recipe.teacher, search, model)

    first = fingerprint()
    assert first["student"]["base_config"] == {"num_hidden_layers": 2, "embedding_size": 32}
    assert fingerprint(license="mit") == first  # the card's license builds the same students
    for change in ({"base_config": {"num_hidden_layers": 3, "embedding_size": 32}},
                   {"init_embeddings_from_teacher": False}, {"select_teacher_weights": True}):
        assert fingerprint(**change)["student"] != first["student"], change
    out = tmp_path / "run"
    claim_output_dir(str(out), first)
    commit_output_dir(str(out))
    (out / "teacher").mkdir()
    with pytest.raises(OutputDirError, match=r"student.base_config differ"):
        claim_output_dir(str(out), fingerprint(base_config={"num_hidden_layers": 3}))


def test_a_directory_fingerprinted_before_the_student_component_resumes_and_is_rebound(tmp_path):
    out = tmp_path / "run"
    older = {"data": {"a": 1}, "task": "text-classification"}
    claim_output_dir(str(out), older)
    commit_output_dir(str(out))
    (out / "teacher").mkdir()
    full = {**older, "student": {"base_config": None}}
    assert claim_output_dir(str(out), full) is False  # the same study, resumed
    assert json.loads((out / MARKER_FILE).read_text())["fingerprint"] == full
    with pytest.raises(OutputDirError, match=r"student.base_config differ"):
        claim_output_dir(str(out), {**older, "student": {"base_config": {"num_hidden_layers": 3}}})
    with pytest.raises(OutputDirError, match=r"data.a differ"):
        claim_output_dir(str(out), {"data": {"a": 2}, "task": "text-classification", "student": {"base_config": None}})


def test_second_run_on_a_locked_output_dir_is_refused_naming_the_first(tmp_path, capsys, no_data_loading):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from autodistill_trainer.run_dir import OutputDirLock; "
         f"OutputDirLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        err = _refused(capsys, "--output_dir", str(out))
        assert f"is in use by pid {holder.pid} on {socket.gethostname()}" in err
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # the first run's lock is kept
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with OutputDirLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def _model_dir(path: Path, value: float) -> Path:
    path.mkdir(parents=True)
    save_file({"weight": torch.full((2, 2), value)}, str(path / "model.safetensors"))
    (path / "config.json").write_text("{}")
    return path


def test_export_replaces_only_a_best_model_it_wrote(tmp_path):
    out = tmp_path / "out"
    first = export_best_model(str(_model_dir(tmp_path / "t1", 1.0)), str(out), lambda d: Path(d, "README.md").touch())
    assert sorted(os.listdir(first)) == [".autodistill_export.json", "README.md", "config.json", "model.safetensors"]
    export_best_model(str(_model_dir(tmp_path / "t2", 2.0)), str(out))
    assert not (out / "best_model" / "README.md").exists()  # replaced as a whole, not merged
    assert sorted(os.listdir(out)) == ["best_model"]  # no staging or previous copy left behind
    (out / "best_model" / "user.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="best_model holds files autodistill did not write"):
        export_best_model(str(_model_dir(tmp_path / "t3", 3.0)), str(out))
    assert (out / "best_model" / "user.txt").read_text() == "mine"


def test_non_finite_model_is_never_exported(tmp_path):
    with pytest.raises(NonFiniteModelError, match="'weight' holds NaN or infinite values"):
        export_best_model(str(_model_dir(tmp_path / "t", float("nan"))), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_failed_data_load_keeps_the_previous_resolved_recipe(tmp_path, capsys):
    data = _csv(tmp_path / "d.csv", ["neg", "pos"], label_column="sentiment")  # no `label` column
    args = ("--data.dataset_name", "null", "--data.train_file", str(data), "--data.validation_file", str(data))
    out = tmp_path / "run"
    claim_output_dir(str(out), _fingerprint(SMOKE, *args))
    (out / "recipe.resolved.json").write_text('{"previous": true}')
    err = _refused(capsys, "--output_dir", str(out), *args, progress_bars=True)
    assert "no column 'label'" in err
    assert (out / "recipe.resolved.json").read_text() == '{"previous": true}'
    assert not (out / LOCK_FILE).exists()


def test_ctrl_c_exits_130_with_one_line_saying_how_to_resume(tmp_path):
    out = tmp_path / "run"
    # A shell starts the command with the default SIGINT disposition, whatever this test process inherited.
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_autodistill.py"), str(SMOKE), "--output_dir", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)  # the pipe never fills
    reader.start()
    deadline = time.monotonic() + 240
    while not (out / LOCK_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + "".join(err_lines)[-2000:]
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=240)
    reader.join(timeout=30)
    err = "".join(err_lines)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.rstrip().splitlines()[-1] == (f"interrupted: {out} keeps the finished trials, the teacher and the "
                                             "caches; run the same command again to resume.")
    assert not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("args", [["--help"], [str(SMOKE), "--help"], [str(SMOKE), "--max_trials", "3", "-h"]])
def test_help_lists_recipe_sections_and_override_syntax(capsys, args):
    assert run_autodistill.main(args) == 0
    text = capsys.readouterr().out
    for section in ("  model:", "  teacher:", "  data:", "  auto_distillation.search:", "  baseline:"):
        assert section in text
    assert "--section.key VALUE" in text and "max_trials (int)" in text and "max_length (int):" in text


def test_console_script_is_declared():
    assert "autodistill = autodistill_trainer.cli:main" in (ROOT / "setup.cfg").read_text()


def _summary(**changes):
    summary = {"teacher": {"accuracy": 0.85, "latency": 20.0, "params": 22e6},
               "best_student": {"arch": {"hidden_size": 64}, "accuracy": 0.8, "latency": 2.0, "params": 2e6},
               "baseline_without_distillation": {"accuracy": 0.7, "latency": 2.0, "params": 2e6}, "speedup": 10.0,
               "trials": {"trained": 2, "complete": 2, "failed": 0, "invalid": 2, "over_budget": 0},
               "max_trials": 2, "majority_class_rate": 0.578, "wall_time_s": 60.0}
    summary.update(changes)
    return summary


def test_summary_counts_trials_as_the_search_does():
    text = format_summary(_summary(), "accuracy", "/out")
    assert "trained: 2 (max_trials 2), invalid: 2" in text and "trials: 4" not in text
    assert "nothing was learned" not in text


def test_summary_says_when_every_model_predicts_the_majority_class():
    majority = {"accuracy": 0.578, "latency": 2.0, "params": 2e6}
    text = format_summary(_summary(teacher={**majority, "latency": 20.0}, best_student={"arch": {}, **majority},
                                   baseline_without_distillation=majority), "accuracy", "/out")
    assert "all models predict the majority class (57.8%): nothing was learned" in text


def test_majority_class_rate_of_a_labelled_dataset():
    import datasets

    assert majority_class_rate(datasets.Dataset.from_dict({"labels": [0, 1, 1, 1]})) == 0.75
    assert majority_class_rate(datasets.Dataset.from_dict({"input_ids": [[1]]})) is None


def test_no_trained_message_gives_counts_and_reasons():
    rows = [{"number": 0, "status": "invalid", "failure_reason": "3 heads do not divide 64"},
            {"number": 1, "status": "failed", "failure_reason": "RuntimeError: loss is NaN"}]
    text = no_trained_message(rows, max_trials=2)
    assert text.startswith("no architecture completed training (trained: 1 (max_trials 2), failed: 1, invalid: 1)")
    assert "#0 3 heads do not divide 64; #1 RuntimeError: loss is NaN" in text



def test_search_that_trained_nothing_exits_1_with_the_reasons(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from autodistill_trainer import cli_run

    rows = [{"number": 0, "arch": {"hidden_size": 64}, "status": "invalid",
             "failure_reason": "3 heads do not divide 32"},
            {"number": 1, "arch": {"hidden_size": 96}, "status": "failed", "failure_reason": "RuntimeError: NaN loss"}]
    searched = []

    def no_model(*args, **kwargs):
        searched.append(True)
        return SimpleNamespace(best_model_arch=None, best_model_dir=None, best_row=None, pareto_front=[], rows=rows)

    monkeypatch.setattr(cli_run, "_search", no_model)
    out = tmp_path / "run"
    rc = run_autodistill.main([str(SMOKE), "--output_dir", str(out), "--teacher.finetune.max_steps", "1",
                               "--data.max_train_samples", "32", "--data.max_eval_samples", "16"])
    last = capsys.readouterr().err.rstrip("\n").rsplit("\n", 1)[-1]
    assert rc == 1 and searched == [True]
    assert last.startswith("error: no architecture completed training (trained: 1 (max_trials 2), failed: 1, "
                           "invalid: 1); reasons: #0 3 heads do not divide 32; #1 RuntimeError: NaN loss"), last
    assert not (out / "best_model").exists() and not (out / "summary.json").exists()
    assert not (out / LOCK_FILE).exists()
