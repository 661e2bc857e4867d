"""The supernet strategy end to end on a tiny MobileBERT supernet through ``run_autodistillation``: supernet trained
and saved, proxies on extracted sub-networks, finalists distilled and saved as plain Transformers models, a rerun
reusing everything, a supernet cut by the time budget resumed from its checkpoint, OOB mode only."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from helpers import pad_collator, token_dataset
from supernet_helpers import tiny_base_config, tiny_teacher
from transformers import MobileBertForSequenceClassification, TrainingArguments

from autodistill_trainer.errors import ConfigError
from autodistill_trainer.search.oob import OOBContext, run_autodistillation
from autodistill_trainer.teacher_cache import TeacherOutputCache

SPACE = {"hidden_size": [16, 32], "num_hidden_layers": [1, 2], "intermediate_size": [16, 32]}


def accuracy(prediction):
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def fake_profile(model):
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "flops": 2 * params, "latency": params / 1e4}


@pytest.fixture
def teacher():
    return tiny_teacher()


def context(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4,
                             per_device_eval_batch_size=8, learning_rate=1e-2, report_to=[], save_strategy="no",
                             disable_tqdm=True, seed=0, use_cpu=True)
    return OOBContext(args=args, train_dataset=token_dataset(16), eval_dataset=token_dataset(12, seed=1),
                      data_collator=pad_collator, compute_metrics=accuracy, student_config=tiny_base_config(),
                      student_cls=MobileBertForSequenceClassification)


def config(**search):
    return {"search": {"search_space": SPACE, "search_algorithm": "random", "metrics": ["accuracy", "latency"],
                       "seed": 1, "strategy": "supernet",
                       "supernet": {"train_steps": 3, "num_random": 1, "finalists": 2, "finalist_budget": 0.5,
                                    "eval_samples": 8, "latency_measurements": 8}, **search},
            "regular_distillation": {"layer_mappings_for_knowledge_transfer": [["classifier", "classifier"]],
                                     "loss_types": ["KL"], "add_origin_loss": True, "train_steps": 4,
                                     "temperature": 2.0}}


def test_supernet_search_end_to_end_ships_finalists_as_plain_transformers_models(tmp_path, teacher):
    ctx = context(tmp_path)
    agent, result = run_autodistillation(ctx, teacher, config(), profile_func=fake_profile)
    out = ctx.args.output_dir
    info = json.loads(open(os.path.join(out, "supernet", "supernet.json")).read())
    assert info["steps"] == 3 and info["subnet_steps"] == 9
    proxies = [r for r in result.rows if r.get("fidelity") == "proxy"]
    finals = [r for r in result.rows if r.get("fidelity") == "final"]
    assert len(proxies) == 8 and all(r["status"] == "trained" for r in proxies)
    assert len(finals) == 2 and all(r["status"] == "trained" for r in finals)
    assert all(r.get("fidelity") == "final" for r in result.pareto_front)
    best = result.best_row
    assert best["fidelity"] == "final" and result.best_model_dir == best["model_dir"]
    shipped = MobileBertForSequenceClassification.from_pretrained(best["model_dir"])
    for field, value in best["arch"].items():
        assert getattr(shipped.config, field) == value
    # a finalist's latency is measured on the shipped model
    assert best["latency"] == pytest.approx(fake_profile(shipped)["latency"])
    data = json.loads(open(os.path.join(out, "search_results.json")).read())
    summary = data["supernet"]
    assert summary["compute_fte"]["supernet"] == pytest.approx(9 / 4)
    assert summary["compute_fte"]["finalists"] == pytest.approx(2 * 2 / 4)
    assert summary["compute_fte"]["proxies"] == round(8 * 8 / (3 * 4 * 4), 4)  # 8 proxies x 8 examples
    # a rerun reuses the supernet, the proxies and the finalists
    stamp = os.path.getmtime(os.path.join(out, "supernet", "supernet.json"))
    n_trials = len(agent.study.get_trials())
    agent2, result2 = run_autodistillation(context(tmp_path), teacher, config(), profile_func=fake_profile)
    assert len(agent2.study.get_trials()) == n_trials
    assert os.path.getmtime(os.path.join(out, "supernet", "supernet.json")) == stamp
    assert result2.best_model_arch == result.best_model_arch


def test_the_supernet_and_its_finalists_run_the_teacher_over_the_training_set_once(tmp_path, teacher):
    ctx = context(tmp_path)
    ctx.teacher_cache = TeacherOutputCache(teacher, str(tmp_path / "cache"), pad_collator, disable_tqdm=True)
    _, result = run_autodistillation(ctx, teacher, config(), profile_func=fake_profile)
    assert len([r for r in result.rows if r.get("fidelity") == "final"]) == 2
    assert ctx.teacher_cache.passes == 1  # the finalists read the column the supernet's training wrote


FLASH = {"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto", "train_steps": 2}


def test_flash_stages_train_each_supernet_layer_before_the_sandwich_and_count_in_its_compute(tmp_path, teacher):
    ctx = context(tmp_path)
    _, result = run_autodistillation(ctx, teacher, dict(config(), flash_distillation=FLASH), profile_func=fake_profile)
    out = os.path.join(ctx.args.output_dir, "supernet")
    flash = json.loads(open(os.path.join(out, "flash", "flash.json")).read())
    assert flash["blocks_done"] == [0, 1] and flash["steps"] == 4  # 2 layers x 2 steps
    info = json.loads(open(os.path.join(out, "supernet.json")).read())
    assert info["flash"] == flash and info["steps"] == 3
    assert info["subnet_steps"] == 9 + flash["subnet_steps"] and flash["subnet_steps"] > 0
    summary = json.loads(open(os.path.join(ctx.args.output_dir, "search_results.json")).read())["supernet"]
    assert summary["compute_fte"]["supernet"] == pytest.approx(info["subnet_steps"] / 4, abs=1e-4)
    assert len([r for r in result.rows if r.get("fidelity") == "final"]) == 2


def test_a_supernet_flash_killed_after_a_block_reruns_only_the_blocks_left(tmp_path, teacher, monkeypatch):
    import autodistill_trainer.supernet.flash as flash_module

    real, calls = flash_module.train_supernet_flash, []

    def dies_in_block_1(*args, blocks, **kwargs):
        calls.append(list(blocks))
        if blocks == [1]:
            raise KeyboardInterrupt
        return real(*args, blocks=blocks, **kwargs)

    monkeypatch.setattr(flash_module, "train_supernet_flash", dies_in_block_1)
    with pytest.raises(KeyboardInterrupt):
        run_autodistillation(context(tmp_path), teacher, dict(config(), flash_distillation=FLASH),
                             profile_func=fake_profile)
    out = os.path.join(str(tmp_path / "run"), "supernet", "flash")
    assert json.loads(open(os.path.join(out, "flash.json")).read())["blocks_done"] == [0]
    after_block_0 = MobileBertForSequenceClassification.from_pretrained(os.path.join(out, "model")).state_dict()

    def records(*args, blocks, supernet, **kwargs):
        calls.append(list(blocks))
        for name, value in supernet.state_dict().items():  # starts from the saved block-0 weights
            torch.testing.assert_close(value, after_block_0[name], rtol=0, atol=0, msg=name)
        return real(*args, blocks=blocks, supernet=supernet, **kwargs)

    calls.clear()
    monkeypatch.setattr(flash_module, "train_supernet_flash", records)
    _, result = run_autodistillation(context(tmp_path), teacher, dict(config(), flash_distillation=FLASH),
                                     profile_func=fake_profile)
    assert calls == [[1]] and result.best_model_arch is not None


def test_a_supernet_cut_by_the_time_budget_is_resumed_from_its_checkpoint(tmp_path, teacher):
    cut = config(time_budget_s=1e-6)
    _, result = run_autodistillation(context(tmp_path), teacher, cut, profile_func=fake_profile)
    out = os.path.join(str(tmp_path / "run"), "supernet")
    assert result.rows == [] and result.best_model_arch is None
    assert not os.path.exists(os.path.join(out, "supernet.json"))
    assert any(name.startswith("checkpoint-") for name in os.listdir(out))
    _, result = run_autodistillation(context(tmp_path), teacher, config(), profile_func=fake_profile)
    assert json.loads(open(os.path.join(out, "supernet.json")).read())["steps"] == 3
    assert result.best_model_arch is not None


def test_the_supernet_strategy_refuses_user_train_and_eval_functions(tmp_path, teacher):
    with pytest.raises(ConfigError, match="out-of-the-box"):
        run_autodistillation(context(tmp_path), teacher, config(), train_func=lambda model: model)
    assert not os.path.exists(os.path.join(str(tmp_path / "run"), "supernet"))


def test_two_process_supernet_search_agrees_on_every_rank(tmp_path):
    from launch import accelerate_launch_two_cpu_processes

    script = os.path.join(os.path.dirname(__file__), "scripts", "supernet_search_ddp.py")
    run = accelerate_launch_two_cpu_processes(script, str(tmp_path), timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # same supernet weights, same finalists, same best architecture
    assert ranks[0]["best"] is not None and len(ranks[0]["finals"]) == 2
    data = json.loads((tmp_path / "run" / "search_results.json").read_text())
    assert data["supernet"]["finalists_trained"] == 2 and data["supernet"]["proxies_evaluated"] == 4
