"""Supernet distillation: the sandwich rule (sampler, one-forward loss, what a step updates) and the Trainer run
(teacher cache, resume after kill -9, two processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import VOCAB_SIZE, pad_collator, random_batch, token_dataset
from safetensors.torch import load_file
from supernet_helpers import supernet_args, tiny_space, tiny_teacher

from autodistill_trainer.errors import ConfigError
from autodistill_trainer.losses import KLDivergenceLoss
from autodistill_trainer.supernet.extract import build_supernet, extract_subnet, leading_slice
from autodistill_trainer.supernet.sandwich import SandwichModel, SandwichSampler
from autodistill_trainer.mappings import parse_layer_mapping
from autodistill_trainer.supernet.training import LOGITS_MAPPING, logits_mapping, train_supernet
from autodistill_trainer.teacher_cache import TeacherOutputCache

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "supernet_train.py")


@pytest.fixture(scope="module")
def space():
    return tiny_space()


@pytest.fixture
def teacher():
    return tiny_teacher()


def _args(tmp_path, **overrides):
    return supernet_args(tmp_path, **overrides)


def test_the_sampler_draws_largest_smallest_then_random_as_a_pure_function_of_seed_and_step(space):
    sampler = SandwichSampler(space, num_random=3, seed=7)
    step_5 = sampler.archs_for_step(5)
    assert len(step_5) == 5 and step_5[0] == space.largest() and step_5[1] == space.smallest()
    assert SandwichSampler(tiny_space(), num_random=3, seed=7).archs_for_step(5) == step_5  # another process
    assert sampler.archs_for_step(6)[2:] != step_5[2:]
    assert SandwichSampler(space, num_random=3, seed=8).archs_for_step(5)[2:] != step_5[2:]
    for arch in step_5[2:]:
        space.validate(arch)
    assert len(SandwichSampler(space, num_random=0, seed=7).archs_for_step(0)) == 2
    with pytest.raises(ConfigError, match="num_random"):
        SandwichSampler(space, num_random=-1, seed=0)


def _subnet_loss(supernet, arch, space, batch, target, temperature=2.0, kd_weight=0.5):
    out = extract_subnet(supernet, arch, space).train(supernet.training)(**batch)
    kd = KLDivergenceLoss(temperature=temperature)(out.logits, target)
    return kd_weight * kd + out.loss, out.logits


@pytest.mark.parametrize("inplace", ["teacher", "largest"])
def test_the_sandwich_loss_is_the_sum_of_each_subnets_kd_and_label_loss(space, inplace):
    supernet = build_supernet(space, seed=0).eval()
    model = SandwichModel(supernet, space, temperature=2.0, kd_weight=0.5, inplace_distillation=inplace)
    batch, teacher_logits = random_batch(seed=1), torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    archs = SandwichSampler(space, num_random=2, seed=0).archs_for_step(0)
    out = model(archs=archs, teacher_logits=teacher_logits, **batch)
    expected, largest_logits = [], None
    for arch in archs:
        target = teacher_logits if largest_logits is None else largest_logits
        loss, logits = _subnet_loss(supernet, arch, space, batch, target)
        expected.append(loss)
        if inplace == "largest" and largest_logits is None:
            largest_logits = logits.detach()
    torch.testing.assert_close(out.subnet_losses, torch.stack(expected).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, torch.stack(expected).sum(), rtol=1e-5, atol=1e-6)


def test_a_batch_without_labelled_rows_trains_on_the_kd_term_only(space):
    supernet = build_supernet(space, seed=0).eval()
    batch = {**random_batch(seed=1), "labels": torch.full((4,), -100)}
    teacher_logits = torch.randn(4, 2)
    out = SandwichModel(supernet, space, kd_weight=1.0)(archs=[space.smallest()], teacher_logits=teacher_logits,
                                                        **batch)
    logits = extract_subnet(supernet, space.smallest(), space)(**random_batch(seed=1, with_labels=False)).logits
    torch.testing.assert_close(out.loss, KLDivergenceLoss(temperature=2.0)(logits, teacher_logits))
    with pytest.raises(ValueError, match="teacher_logits"):
        SandwichModel(supernet, space)(archs=[space.smallest()], **batch)
    with pytest.raises(ConfigError, match="inplace_distillation"):
        SandwichModel(supernet, space, inplace_distillation="self")


class _FixedArchs(SandwichSampler):
    """Every step trains the same sub-networks (none of them the largest), so the union of slices is not all."""

    def __init__(self, space, archs):
        super().__init__(space, num_random=0, seed=0)
        self.archs = archs

    def archs_for_step(self, step):
        return list(self.archs)


def test_one_sandwich_step_updates_exactly_the_union_of_the_sampled_subnets_slices(space, teacher, tmp_path,
                                                                                     monkeypatch):
    archs = [space.smallest(),
             {"hidden_size": 24, "intra_bottleneck_size": 8, "num_attention_heads": 2, "intermediate_size": 16,
              "num_feedforward_networks": 2, "num_hidden_layers": 2},
             {"hidden_size": 16, "intra_bottleneck_size": 12, "num_attention_heads": 4, "intermediate_size": 32,
              "num_feedforward_networks": 1, "num_hidden_layers": 1}]
    from autodistill_trainer.supernet import training

    monkeypatch.setattr(training, "SandwichSampler", lambda space, num_random, seed: _FixedArchs(space, archs))
    supernet = build_supernet(space, seed=0)
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    train_supernet(space, teacher, _args(tmp_path), token_dataset(8), pad_collator, steps=1, supernet=supernet,
                   init_embeddings_from_teacher=False)
    union = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in before.items()}
    for arch in archs:
        sub = extract_subnet(supernet, arch, space)
        for name, tensor in sub.state_dict().items():
            if name in union:
                leading_slice(union[name], tensor.shape).fill_(True)
            changed = (leading_slice(supernet.state_dict()[name], tensor.shape)
                       != leading_slice(before[name], tensor.shape)) if name in before else None
            assert changed is None or changed.any(), f"{name} of {arch} did not train"
    for name, param in supernet.named_parameters():
        changed = param.detach() != before[name]
        assert not (changed & ~union[name]).any(), f"{name} changed outside the sampled sub-networks"
    assert not any(".layer.2." in n for n, m in union.items() if m.any())  # depth 3 was never sampled


def test_supernet_steps_read_the_cached_teacher_logits_instead_of_running_the_teacher(space, teacher, tmp_path):
    data = token_dataset(12)
    cache = TeacherOutputCache(teacher, str(tmp_path / "cache"), pad_collator, disable_tqdm=True)
    cache.dataset_for(data, [LOGITS_MAPPING])  # built once, before training
    calls = []
    hook = teacher.register_forward_hook(lambda *a: calls.append(1))
    try:
        cached = train_supernet(space, teacher, _args(tmp_path / "a"), data, pad_collator, steps=2,
                                teacher_cache=cache, init_embeddings_from_teacher=False).supernet
    finally:
        hook.remove()
    assert calls == [] and cache.passes == 1
    live = train_supernet(space, teacher, _args(tmp_path / "b"), data, pad_collator, steps=2,
                          init_embeddings_from_teacher=False).supernet
    for (name, a), b in zip(cached.state_dict().items(), live.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-4, msg=name)  # the cache holds float16 logits


def test_the_logits_mapping_is_the_first_whose_teacher_feature_is_the_logits(teacher):
    head = parse_layer_mapping(("classifier", "classifier"))
    whole = parse_layer_mapping(("", "logits", "", "logits"))
    hidden = parse_layer_mapping(("mobilebert.encoder.layer.0", "0", "bert.encoder.layer.0", "0"))
    assert logits_mapping(teacher, [hidden, ("classifier", "classifier")]) == head
    assert logits_mapping(teacher, [hidden, whole, head]) == whole
    assert logits_mapping(teacher, [hidden]) == LOGITS_MAPPING
    assert logits_mapping(teacher, [("classifier", "0", "classifier", "0")]) == LOGITS_MAPPING  # a process: not logits
    assert logits_mapping(torch.nn.Linear(2, 2), [head]) == LOGITS_MAPPING  # no classifier module in this teacher


def test_the_supernet_and_its_finalists_share_one_cached_teacher_pass(space, teacher, tmp_path):
    data = token_dataset(12)
    head = logits_mapping(teacher, [("classifier", "classifier")])  # the finalists' regular-stage mapping
    shared = TeacherOutputCache(teacher, str(tmp_path / "shared"), pad_collator, disable_tqdm=True)
    via_head = train_supernet(space, teacher, _args(tmp_path / "a"), data, pad_collator, steps=2, teacher_cache=shared,
                              teacher_logits=head, init_embeddings_from_teacher=False).supernet
    shared.dataset_for(data, [head])  # what the finalists' stage asks for
    assert shared.passes == 1
    own = TeacherOutputCache(teacher, str(tmp_path / "own"), pad_collator, disable_tqdm=True)
    via_logits = train_supernet(space, teacher, _args(tmp_path / "b"), data, pad_collator, steps=2, teacher_cache=own,
                                init_embeddings_from_teacher=False).supernet
    for (name, a), b in zip(via_head.state_dict().items(), via_logits.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)  # the classifier's output is the logits


def test_train_supernet_initialises_the_embeddings_from_the_teacher_and_reports_its_steps(space, teacher, tmp_path):
    from autodistill_trainer.embedding_init import TeacherEmbeddingProjection

    result = train_supernet(space, teacher, _args(tmp_path, learning_rate=1e-12), token_dataset(8), pad_collator,
                            steps=2, num_random=1)
    assert (result.steps, result.subnet_steps) == (2, 6) and result.wall_s > 0
    expected = TeacherEmbeddingProjection(teacher)(8)
    torch.testing.assert_close(result.supernet.get_input_embeddings().weight, expected, rtol=0, atol=1e-6)
    assert result.supernet.get_input_embeddings().weight.shape == (VOCAB_SIZE, 8)
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())


def _run(output_dir, result, mode, **kwargs):
    return subprocess.Popen([sys.executable, SCRIPT, str(output_dir), str(result), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_a_supernet_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights(tmp_path):
    straight = _run(tmp_path / "straight", tmp_path / "straight.safetensors", "run")
    killed = _run(tmp_path / "killed", tmp_path / "killed.safetensors", "hang", start_new_session=True)
    marker = tmp_path / "killed.safetensors.saved"
    deadline = time.monotonic() + 120
    while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), killed.communicate()[0][-3000:]
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert marker.read_text() == "3" and not (tmp_path / "killed" / "checkpoint-6").exists()
    resumed = _run(tmp_path / "killed", tmp_path / "killed.safetensors", "resume")
    outputs = [proc.communicate(timeout=180)[0] for proc in (straight, resumed)]
    for proc, output in zip((straight, resumed), outputs):
        assert proc.returncode == 0, output[-3000:]
    logged = [output.count("supernet: {'loss'") for output in outputs]
    assert logged == [6, 3]  # the resumed run trained steps 4-6 only
    a, b = load_file(tmp_path / "straight.safetensors"), load_file(tmp_path / "killed.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


@pytest.mark.distributed
def test_two_process_supernet_training_keeps_ranks_identical(tmp_path):
    from launch import accelerate_launch_two_cpu_processes

    result_path = tmp_path / "result.json"
    run = accelerate_launch_two_cpu_processes(SCRIPT, str(tmp_path / "out"), str(result_path), "ranks")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result["world_size"] == 2 and result["steps"] == 6
    assert result["max_abs_diff"] == 0.0 and result["moved"] > 0


def test_saving_the_supernet_trainer_writes_the_plain_supernet(space, teacher, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from autodistill_trainer.supernet.training import SupernetTrainer

    supernet = build_supernet(space, seed=0).eval()
    trainer = SupernetTrainer(model=SandwichModel(supernet, space), args=_args(tmp_path), teacher_model=teacher,
                              sampler=SandwichSampler(space, num_random=1, seed=0), train_dataset=token_dataset(4),
                              data_collator=pad_collator)
    trainer.save_model(str(tmp_path / "supernet"))
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "supernet")
    assert type(loaded) is type(supernet)
    assert {f: getattr(loaded.config, f) for f in space.fields} == space.largest()
    batch = random_batch(with_labels=False)
    torch.testing.assert_close(loaded(**batch).logits, supernet(**batch).logits)
