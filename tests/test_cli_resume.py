"""kill -9 of a real CLI search, then the same command again: the study resumes where it stopped.

Trials completed before the kill keep their rows and trained models (not retrained), the interrupted trial's
architecture is retried, and the search ends with max_trials trained architectures.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"
MAX_TRIALS = 3
# 6 valid architectures (heads divide the bottleneck of 32), so 3 trials fit with room for the retry
SPACE = (
    "{hidden_size: [64, 96, 128], intra_bottleneck_size: [32], num_attention_heads: [2, 4], intermediate_size: [64], "
    "num_feedforward_networks: [1]}"
)


def _command(output_dir: Path) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "run_autodistill.py"),
        str(SMOKE),
        "--output_dir",
        str(output_dir),
        "--max_trials",
        str(MAX_TRIALS),
        "--auto_distillation.search.search_space",
        SPACE,
        "--baseline.enabled",
        "false",
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
    }


def _complete_rows(output_dir: Path) -> list[dict]:
    try:
        data = json.loads((output_dir / "search_results.json").read_text())
    except (OSError, ValueError):  # not written yet (writes are atomic, so never half-written)
        return []
    return [r for r in data["trials"] if r["state"] == "COMPLETE"]


def _trials(output_dir: Path) -> list[dict]:
    """Every trial of the study: number, state, params and user attributes (read-only SQLite)."""
    db = output_dir / "autodistill_study.db"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        trials = {
            tid: {"number": n, "state": s, "params": {}, "attrs": {}}
            for tid, n, s in con.execute("SELECT trial_id, number, state FROM trials")
        }
        for tid, key, value in con.execute("SELECT trial_id, key, value_json FROM trial_user_attributes"):
            trials[tid]["attrs"][key] = json.loads(value)
        for tid, name, value, dist in con.execute(
            "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params"
        ):
            choices = json.loads(dist)["attributes"]["choices"]
            trials[tid]["params"][name] = choices[int(value)]
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        con.close()
    return sorted(trials.values(), key=lambda t: t["number"])


def _model_file(output_dir: Path, arch: dict) -> Path:
    slug = "_".join(f"{k}-{v}" for k, v in arch.items())
    return output_dir / "trials" / slug / "model" / "model.safetensors"


@pytest.mark.slow
def test_search_resumes_after_kill_9(tmp_path):
    output_dir = tmp_path / "run"
    log1 = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(
        _command(output_dir), stdout=log1, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path, start_new_session=True
    )
    # Kill at a deterministic point: >= 1 trained trial recorded, and the next trial is training.
    deadline = time.monotonic() + 120
    running = None
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, (
                f"the search ended before the kill:\n{(tmp_path / 'run1.log').read_text()[-3000:]}"
            )
            if _complete_rows(output_dir):
                running = [
                    t for t in _trials(output_dir) if t["state"] == "RUNNING" and t["attrs"].get("status") == "training"
                ]
                if running:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("no trained trial followed by a training one within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log1.close()
    assert proc.returncode == -signal.SIGKILL

    before = {r["number"]: r for r in _complete_rows(output_dir)}
    assert 1 <= len(before) < MAX_TRIALS
    interrupted = running[0]
    interrupted_arch = interrupted["params"]
    mtimes = {n: _model_file(output_dir, r["arch"]).stat().st_mtime_ns for n, r in before.items()}

    # Same command again.
    start = time.monotonic()
    second = subprocess.run(_command(output_dir), capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=180)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    resumed_in = time.monotonic() - start

    data = json.loads((output_dir / "search_results.json").read_text())
    after = {r["number"]: r for r in data["trials"] if r["state"] == "COMPLETE"}
    # completed trials are kept unchanged, and not retrained
    for number, row in before.items():
        assert after[number] == row
        assert _model_file(output_dir, row["arch"]).stat().st_mtime_ns == mtimes[number]
    trained_lines = [line for line in second.stderr.splitlines() if f"/{MAX_TRIALS} (#" in line and " -> " in line]
    assert len(trained_lines) == MAX_TRIALS - len(before), trained_lines
    for row in before.values():
        assert not any(str(row["arch"]) in line for line in trained_lines)
    # the interrupted trial was marked so (dead pid) and its architecture retried first
    trials = {t["number"]: t for t in _trials(output_dir)}
    old = trials[interrupted["number"]]
    assert old["state"] == "FAIL" and "is gone" in old["attrs"].get("interrupted_reason", ""), old
    retries = [t for t in trials.values() if t["attrs"].get("proposed_by") == "retry"]
    assert [t["params"] for t in retries] == [interrupted_arch]
    assert retries[0]["state"] == "COMPLETE"
    assert any(r["arch"] == interrupted_arch for r in after.values())
    # the search completed with max_trials trained architectures, each once
    assert data["n_trained"] == MAX_TRIALS and len(after) == MAX_TRIALS
    assert len({json.dumps(r["arch"], sort_keys=True) for r in after.values()}) == MAX_TRIALS
    assert not any(t["state"] == "RUNNING" for t in trials.values())
    assert (output_dir / "best_model" / "model.safetensors").is_file()
    assert resumed_in < 90
