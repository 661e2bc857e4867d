"""StageTrainer / DistillationTrainer semantics: composite-loss accumulation, callbacks and eval_strategy in stages,
the default criterion, what the library restores, unreached parameters, non-finite weights."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from transformers import (
    BertForPreTraining,
    MobileBertForPreTraining,
    TrainerCallback,
    TrainingArguments,
)

from autodistill_trainer import ConfigError, DistillationTrainer
from autodistill_trainer.schedule import run_distillation
from autodistill_trainer.guards import NonFiniteParametersError
from autodistill_trainer.stage_trainer import StageTrainer
from helpers import VOCAB_SIZE, RandomTextClassification, mobilebert_block_mappings, pad_collator, token_dataset
from helpers import tiny_bert_config, tiny_mobilebert_config


def make_args(tmp_path, **overrides) -> TrainingArguments:
    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                  logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def flash_config(blocks=(0, 1), steps=2):
    return {
        "block_names": [f"mobilebert.encoder.layer.{b}" for b in blocks],
        "layer_mappings_for_knowledge_transfer": [mobilebert_block_mappings(b) for b in blocks],
        "loss_types": [["KL", "MSE"] for _ in blocks],
        "train_steps": [steps] * len(blocks),
    }


REGULAR = {
    "layer_mappings_for_knowledge_transfer": [["classifier", "classifier"]], "loss_types": ["KL"], "train_steps": 2
}


class EventCounter(TrainerCallback):
    def __init__(self):
        self.train_begin = self.steps = self.evaluations = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_begin += 1

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def on_evaluate(self, args, state, control, **kwargs):
        self.evaluations += 1


# ------------------------------------------------------------------------------------------------ accumulation


class RandomPretraining(torch.utils.data.Dataset):
    """MLM + next-sentence batches whose rows mask very different numbers of tokens (row i: about (i + 1) / n)."""

    def __init__(self, n: int = 8, seq_len: int = 12, seed: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(5, VOCAB_SIZE, (n, seq_len), generator=g)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)
        self.attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        self.input_ids = self.input_ids * self.attention_mask
        share = (torch.arange(n, dtype=torch.float) + 1)[:, None] / n
        masked = (torch.rand(n, seq_len, generator=g) < share) & self.attention_mask.bool()
        masked[:, 0] = True
        self.labels = torch.where(masked, self.input_ids, torch.full_like(self.input_ids, -100))
        self.next_sentence_label = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i],
                "next_sentence_label": self.next_sentence_label[i]}


def _one_pretraining_update(tmp_path, student, teacher, batch_size, accumulation):
    args = make_args(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                     max_steps=1, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant", warmup_steps=0)
    criterion = {"layer_mappings": [("cls", "0", "cls", "0")], "loss_types": ["KL"], "add_origin_loss": True}
    trainer = DistillationTrainer(model=student, teacher_model=teacher, criterion=criterion, args=args,
                                  train_dataset=RandomPretraining())
    trainer.train()
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def test_accumulation_of_an_mlm_plus_next_sentence_student_matches_the_larger_batch(tmp_path):
    torch.manual_seed(0)
    teacher = BertForPreTraining(tiny_bert_config()).eval()
    config = tiny_mobilebert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(5)
    base = MobileBertForPreTraining(config)
    big = _one_pretraining_update(tmp_path / "a", copy.deepcopy(base), teacher, batch_size=8, accumulation=1)
    small = _one_pretraining_update(tmp_path / "b", copy.deepcopy(base), teacher, batch_size=4, accumulation=2)
    assert any(not torch.equal(big[k], base.state_dict()[k]) for k in big), "the update changed nothing"
    for key in big:
        assert torch.allclose(big[key], small[key], atol=1e-6), (key, (big[key] - small[key]).abs().max())


def test_the_logged_origin_loss_of_a_pretraining_student_is_its_own_summed_loss(tmp_path):
    torch.manual_seed(0)
    teacher = BertForPreTraining(tiny_bert_config()).eval()
    config = tiny_mobilebert_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = MobileBertForPreTraining(config)
    batch = RandomPretraining(n=4)[:]
    with torch.no_grad():
        expected = float(student(**batch).loss)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, max_steps=1, learning_rate=0.0),
        criterion={"layer_mappings": [("cls", "0", "cls", "0")], "loss_types": ["KL"]},
        train_dataset=RandomPretraining(n=4),
    )
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "origin_loss" in e)
    assert entry["origin_loss"] == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------------------------ callbacks, eval


def test_callbacks_given_to_the_trainer_see_every_stage_of_distill(tmp_path, bert_teacher, mobilebert_student):
    counter = EventCounter()
    trainer = DistillationTrainer(model=mobilebert_student, teacher_model=bert_teacher, args=make_args(tmp_path),
                                  train_dataset=RandomTextClassification(16), callbacks=[counter])
    trainer.distill(flash_distillation=flash_config((0, 1), steps=2), regular_distillation=REGULAR)
    assert counter.train_begin == 3 and counter.steps == 6


def test_eval_strategy_is_honoured_in_the_regular_stage_and_its_flash_override_logged_once(
    tmp_path, bert_teacher, mobilebert_student, caplog
):
    counter = EventCounter()
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4)
    trainer = DistillationTrainer(model=mobilebert_student, teacher_model=bert_teacher, args=args,
                                  train_dataset=RandomTextClassification(16), eval_dataset=RandomTextClassification(8),
                                  callbacks=[counter])
    with caplog.at_level(logging.INFO, logger="autodistill_trainer"):
        trainer.distill(flash_distillation=flash_config((0, 1), steps=2), regular_distillation=REGULAR)
    assert counter.evaluations == 2  # the regular stage's 2 steps, eval_steps=1; flash stages do not evaluate
    overrides = [r for r in caplog.records if "eval_strategy" in r.getMessage()]
    assert len(overrides) == 1 and "flash" in overrides[0].getMessage()


def test_eval_strategy_without_an_eval_dataset_is_overridden_with_one_log_line(
    tmp_path, bert_teacher, mobilebert_student, caplog
):
    args = make_args(tmp_path, eval_strategy="steps", eval_steps=1)
    with caplog.at_level(logging.INFO, logger="autodistill_trainer"):
        run_distillation(mobilebert_student, bert_teacher, args, RandomTextClassification(16),
                         regular_distillation=REGULAR)
    overrides = [r for r in caplog.records if "eval_strategy" in r.getMessage()]
    assert len(overrides) == 1 and "no eval_dataset" in overrides[0].getMessage()


# ------------------------------------------------------------------------------------------------ defaults, restore


def test_no_criterion_and_a_dict_without_add_origin_loss_give_the_same_default(
    tmp_path, bert_teacher, mobilebert_student
):
    default = DistillationTrainer(model=mobilebert_student, teacher_model=bert_teacher, args=make_args(tmp_path))
    default.criterion.remove_hooks()
    given = DistillationTrainer(model=mobilebert_student, teacher_model=bert_teacher, args=make_args(tmp_path),
                                criterion={"layer_mappings": [("", "logits", "", "logits")], "loss_types": ["KL"]})
    assert given.criterion.add_origin_loss is default.criterion.add_origin_loss is True


def test_the_callers_args_are_not_mutated(tmp_path, bert_teacher, mobilebert_student):
    args = make_args(tmp_path)
    assert args.ddp_find_unused_parameters is None
    trainer = DistillationTrainer(model=mobilebert_student, teacher_model=bert_teacher, args=args)
    assert args.ddp_find_unused_parameters is None
    assert trainer.args.ddp_find_unused_parameters is False


def test_run_distillation_restores_the_users_requires_grad_flags(tmp_path, bert_teacher, mobilebert_student):
    mobilebert_student.mobilebert.embeddings.requires_grad_(False)
    bert_teacher.bert.pooler.requires_grad_(False)
    student_flags = {n: p.requires_grad for n, p in mobilebert_student.named_parameters()}
    teacher_flags = {n: p.requires_grad for n, p in bert_teacher.named_parameters()}
    run_distillation(mobilebert_student, bert_teacher, make_args(tmp_path), RandomTextClassification(16),
                     flash_distillation=flash_config((1,), steps=1), regular_distillation={**REGULAR, "train_steps": 1})
    assert {n: p.requires_grad for n, p in mobilebert_student.named_parameters()} == student_flags
    assert {n: p.requires_grad for n, p in bert_teacher.named_parameters()} == teacher_flags
    assert any(teacher_flags.values())  # the fixture's teacher has trainable flags to restore


def test_train_freezes_the_teacher_only_while_it_runs(tmp_path, bert_teacher, mobilebert_student):
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(any(p.requires_grad for p in bert_teacher.parameters()))

    trainer = DistillationTrainer(model=mobilebert_student, teacher_model=bert_teacher, args=make_args(tmp_path),
                                  train_dataset=RandomTextClassification(16), callbacks=[Probe()])
    trainer.train()
    assert seen == [False, False]
    assert all(p.requires_grad for p in bert_teacher.parameters())


# ------------------------------------------------------------------------------------------------ unreached parameters


@pytest.mark.parametrize("data", ["torch", "datasets"])
def test_parameters_the_loss_does_not_reach_are_frozen_for_the_run_and_restored(
    tmp_path, bert_teacher, mobilebert_student, data
):
    criterion = {"layer_mappings": mobilebert_block_mappings(0)[:1], "loss_types": ["KL"], "add_origin_loss": False}
    if data == "torch":
        dataset = {"train_dataset": RandomTextClassification(16)}
    else:  # a datasets.Dataset: its unused columns are removed as the Trainer does
        dataset = {"train_dataset": token_dataset(16).add_column("text", ["x"] * 16), "data_collator": pad_collator}
    trainer = StageTrainer(model=mobilebert_student, teacher_model=bert_teacher, criterion=criterion,
                           args=make_args(tmp_path), **dataset)
    rng = torch.random.get_rng_state()
    with trainer.unreached_parameters_frozen() as frozen:
        assert torch.equal(rng, torch.random.get_rng_state())  # the probe leaves the random stream as it was
        attention = "mobilebert.encoder.layer.0.attention.self."
        assert attention + "value.weight" in frozen and attention + "query.weight" not in frozen
        assert "classifier.weight" in frozen and "mobilebert.encoder.layer.1.output.dense.weight" in frozen
        assert not mobilebert_student.get_parameter(attention + "value.weight").requires_grad
        assert mobilebert_student.get_parameter(attention + "query.weight").requires_grad
        assert all(p.grad is None for p in mobilebert_student.parameters())
    assert all(p.requires_grad for p in mobilebert_student.parameters())


def test_a_loss_that_reaches_no_trainable_parameter_is_a_config_error(tmp_path, bert_teacher, mobilebert_student):
    mobilebert_student.mobilebert.encoder.layer[0].requires_grad_(False)
    mobilebert_student.mobilebert.embeddings.requires_grad_(False)
    criterion = {"layer_mappings": mobilebert_block_mappings(0)[:1], "loss_types": ["KL"], "add_origin_loss": False}
    trainer = StageTrainer(model=mobilebert_student, teacher_model=bert_teacher, criterion=criterion,
                           args=make_args(tmp_path), train_dataset=RandomTextClassification(16))
    with pytest.raises(ConfigError, match="reaches none of the trainable parameters"):
        with trainer.unreached_parameters_frozen():
            pass


# ------------------------------------------------------------------------------------------------ non-finite weights


class PoisonWeight(TrainerCallback):
    """Sets one element of a weight to inf after the run's last optimizer step."""

    def __init__(self, model, name):
        self.model, self.name = model, name

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step < state.max_steps:
            return
        with torch.no_grad():
            self.model.get_parameter(self.name).view(-1)[0] = float("inf")


def test_a_run_whose_weights_become_non_finite_fails_naming_them(tmp_path, bert_teacher, mobilebert_student):
    name = "mobilebert.encoder.layer.0.output.dense.weight"
    trainer = DistillationTrainer(model=mobilebert_student, teacher_model=bert_teacher, args=make_args(tmp_path),
                                  train_dataset=RandomTextClassification(16),
                                  callbacks=[PoisonWeight(mobilebert_student, name)])
    with pytest.raises(NonFiniteParametersError, match=name.replace(".", r"\.")):
        trainer.train()


def test_a_stage_whose_weights_become_non_finite_stops_the_schedule(tmp_path, bert_teacher, mobilebert_student):
    name = "mobilebert.encoder.layer.0.attention.self.query.weight"
    counter = EventCounter()
    with pytest.raises(NonFiniteParametersError, match="stage|learning rate"):
        run_distillation(mobilebert_student, bert_teacher, make_args(tmp_path), RandomTextClassification(16),
                         flash_distillation=flash_config((0, 1), steps=1),
                         callbacks=[PoisonWeight(mobilebert_student, name), counter])
    assert counter.train_begin == 1  # the second stage never ran


# ------------------------------------------------------------------------------------------------ layering


def _imports(module: str) -> tuple[set[str], list[str]]:
    """Relative modules imported by `module` at top level, and the names of functions that import inside."""
    import ast
    import pathlib

    tree = ast.parse((pathlib.Path(__file__).parent.parent / "autodistill_trainer" / f"{module}.py").read_text())
    top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1}
    lazy = [
        func.name for func in ast.walk(tree) if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(func) if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    return top, lazy


def test_training_modules_import_downwards_only_and_at_top_level():
    stage_top, stage_lazy = _imports("stage_trainer")
    schedule_top, schedule_lazy = _imports("schedule")
    assert not {"schedule", "trainer"} & stage_top and stage_lazy == []
    assert "stage_trainer" in schedule_top and "trainer" not in schedule_top and schedule_lazy == []
    trainer_top, _ = _imports("trainer")
    assert {"schedule", "stage_trainer"} <= trainer_top
