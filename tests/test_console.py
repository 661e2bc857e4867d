"""A quiet console: the trial named in stage logs and bars, repeated library warnings at most once, disable_tqdm
honoured by the stages and by the libraries' own bars."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
import torch
from transformers import BertForSequenceClassification, MobileBertForSequenceClassification, TrainingArguments

from autodistill_trainer.console import PIN_MEMORY_WARNING, quiet_console
from autodistill_trainer.search.oob import OOBContext, run_autodistillation
from helpers import RandomTextClassification, tiny_bert_config

SPACE = {"hidden_size": [16, 24], "intra_bottleneck_size": [8], "num_attention_heads": [2],
         "intermediate_size": [32], "num_feedforward_networks": [1]}
#: A tqdm bar line: "label:  50%|█████     | 1/2 [...]".
BAR = re.compile(r"\d+%\|")


def _search(tmp_path, student, disable_tqdm: bool, teacher=None, max_trials: int = 2):
    if teacher is None:  # an sdpa teacher: distilling its attention maps switches it to eager in every stage
        torch.manual_seed(0)
        teacher = BertForSequenceClassification(tiny_bert_config(attn_implementation="sdpa")).eval()
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, report_to=[],
                             save_strategy="no", use_cpu=True, disable_tqdm=disable_tqdm, seed=0, logging_steps=2)
    context = OOBContext(
        args=args, train_dataset=RandomTextClassification(8), eval_dataset=RandomTextClassification(4, seed=1),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
        student_config=student.config, student_cls=MobileBertForSequenceClassification,
    )
    config = {"search": {"search_space": SPACE, "search_algorithm": "grid", "metrics": ["accuracy", "latency"],
                         "higher_is_better": [True, False], "max_trials": max_trials, "seed": 1},
              "flash_distillation": {"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto",
                                     "train_steps": 2},
              "regular_distillation": {"layer_mappings_for_knowledge_transfer": [[("classifier", "classifier")]],
                                       "loss_types": [["KL"]], "train_steps": [2]}}
    return run_autodistillation(context, teacher, config,
                                profile_func=lambda m: {"latency": m.config.hidden_size / 10, "params": 1, "flops": 1})


@pytest.fixture
def library_bars_restored():
    yield
    import datasets
    import huggingface_hub.utils
    import transformers

    datasets.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()
    huggingface_hub.utils.enable_progress_bars()


def test_stage_log_lines_and_bars_name_the_trial(tmp_path, mobilebert_student, caplog, capsys):
    caplog.set_level(logging.INFO, logger="autodistill_trainer.schedule")
    _, result = _search(tmp_path, mobilebert_student, disable_tqdm=False)
    trained = [r["number"] for r in result.rows if r["state"] == "COMPLETE"]
    messages = [r.getMessage() for r in caplog.records if r.name == "autodistill_trainer.schedule"]
    for number in trained:
        assert f"trial {number}: Distillation stage 1/3 (flash): mobilebert.embeddings+mobilebert.encoder.layer.0, " \
               "2 steps" in messages
        assert any(m.startswith(f"trial {number}: Stage regular 3/3 whole student done: train loss ") for m in messages)
    err = capsys.readouterr().err
    for number in trained:
        assert f"trial {number} flash 2/3 mobilebert.encoder.layer.1: 100%|" in err
        assert f"trial {number} regular 3/3 whole student: 100%|" in err
    assert "train_runtime" not in err  # the stage's "done" line replaces the Trainer's end-of-training dict


def test_the_sdpa_to_eager_warning_appears_once_in_a_search(tmp_path, mobilebert_student, caplog):
    caplog.set_level(logging.WARNING)
    _, result = _search(tmp_path, mobilebert_student, disable_tqdm=True)
    assert result.n_trained == 2  # 2 trials x 2 flash stages distil the teacher's attention maps
    told = [r for r in caplog.records if "switched it to eager attention" in r.getMessage()]
    assert len(told) == 1


def test_disable_tqdm_prints_no_stage_or_library_bars_and_labels_the_stage_logs(tmp_path, mobilebert_student, capsys,
                                                                                library_bars_restored):
    quiet_console(disable_tqdm=True)
    _, result = _search(tmp_path, mobilebert_student, disable_tqdm=True)
    captured = capsys.readouterr()
    # The search's own trial bar (search/loop.py) does not take disable_tqdm yet: the one bar left.
    bars = [line for line in re.split(r"[\r\n]", captured.err) if BAR.search(line) and "autodistill search" not in line]
    assert bars == []
    out = captured.out.splitlines()
    first = next(r["number"] for r in result.rows if r["state"] == "COMPLETE")
    assert out[0].startswith(f"trial {first} flash 1/3 mobilebert.embeddings+mobilebert.encoder.layer.0: {{'loss': ")
    assert all(line.startswith("trial ") for line in out)  # labelled; no train_runtime or evaluation dicts
    assert not any("train_runtime" in line or "eval_" in line for line in out)


def test_without_an_accelerator_the_pin_memory_warning_is_not_shown():
    if torch.accelerator.is_available():
        pytest.skip("pinning works with an accelerator: torch does not warn")
    loader = torch.utils.data.DataLoader(torch.arange(4), batch_size=2, pin_memory=True)  # Trainer's default
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        list(loader)
    assert any(re.search(PIN_MEMORY_WARNING, str(w.message)) for w in shown)  # what users saw before
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_console(disable_tqdm=False)
        list(loader)
    assert not any(re.search(PIN_MEMORY_WARNING, str(w.message)) for w in shown)
