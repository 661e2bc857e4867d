"""run_autodistill.py end to end with ``search.strategy: supernet`` (what the demo recipe runs), on the smoke recipe:
flash stages on the supernet, sandwich steps, proxies, finalists, the reports and the exported model."""

from __future__ import annotations

import json

import pytest
from test_cli import SMOKE, run_cli
from transformers import MobileBertForSequenceClassification

SUPERNET = ("{train_steps: 3, num_random: 1, num_candidates: 6, finalists: 2, finalist_budget: 0.5, eval_samples: 32, "
            "latency_measurements: 3}")
SPACE = ("{hidden_size: [64, 96], intra_bottleneck_size: [32], num_attention_heads: [1, 2], intermediate_size: [64], "
         "num_hidden_layers: [1, 2]}")


@pytest.fixture(scope="module")
def supernet_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("supernet")
    run = run_cli(str(SMOKE), "--output_dir", str(out), "--auto_distillation.search.strategy", "supernet",
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
    assert run.stderr.count("Computing teacher outputs") == 1  # the supernet and the finalists share the cache


def test_the_cli_plots_the_proxies_behind_the_finalists_and_ships_a_plain_model(supernet_run):
    out, run = supernet_run
    assert ", 6 screened) to " in run.stderr  # the plot's log line: the 6 proxies drawn behind the finalists
    assert (out / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    shipped = MobileBertForSequenceClassification.from_pretrained(out / "best_model")
    for field, value in summary["best_student"]["arch"].items():
        assert getattr(shipped.config, field) == value
