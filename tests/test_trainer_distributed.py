"""DistillationTrainer under `accelerate launch` with 2 CPU processes."""

from __future__ import annotations

import json
import os

import pytest

from launch import accelerate_launch_two_cpu_processes

pytestmark = pytest.mark.distributed


def test_two_process_run_keeps_ranks_identical_and_loss_unscaled(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "scripts", "ddp_distill.py")
    result_path = tmp_path / "result.json"
    run = accelerate_launch_two_cpu_processes(script, str(result_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result["world_size"] == 2
    assert result["distributed_type"] == "DistributedType.MULTI_CPU"
    # different initialisations on each rank, identical weights after training (student and matchers)
    assert result["max_abs_diff"] == 0.0
    assert result["matchers_moved"]
    # the logged loss is the mean of the terms, not multiplied by the world size
    assert len(result["logged"]) == 4
    for logged, from_terms in result["logged"]:
        assert logged == pytest.approx(from_terms, rel=1e-4)
