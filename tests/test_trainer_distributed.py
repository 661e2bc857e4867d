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


def test_a_flash_stage_mapping_only_attention_maps_trains_under_ddp_what_its_loss_reaches(tmp_path):
    script = os.path.join(os.path.dirname(__file__), "scripts", "ddp_schedule.py")
    result_path = tmp_path / "result.json"
    run = accelerate_launch_two_cpu_processes(script, str(result_path), "attention_only")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result["stages"] == ["flash"] and result["max_abs_diff"] == 0.0
    attention = "mobilebert.encoder.layer.0.attention.self."
    changed = set(result["changed_names"])
    assert attention + "query.weight" in changed and attention + "key.weight" in changed
    # attention maps do not depend on the value projection or the feed-forward: they get no gradient, do not train
    assert all(name.startswith("mobilebert.encoder.layer.0.") for name in changed), changed
    unreached = ("attention.self.value.", "attention.output.", "intermediate.", "layer.0.output.")
    assert not [name for name in changed if any(part in name for part in unreached)], changed
    assert result["requires_grad"]  # the probe's freezing is undone after the stage
