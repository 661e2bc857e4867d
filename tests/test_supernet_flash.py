"""Flash (block-by-block) supernet distillation: what a stage trains, the block loss, sub-networks without the block,
two processes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import pad_collator, random_batch, token_dataset
from supernet_helpers import supernet_args, tiny_space, tiny_teacher

from autodistill_trainer.criterion_setup import average_heads
from autodistill_trainer.supernet.extract import build_supernet, extract_subnet
from autodistill_trainer.supernet.flash import FlashBlockModel, train_supernet_flash
from autodistill_trainer.supernet.sandwich import SandwichSampler

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "supernet_train.py")


@pytest.fixture(scope="module")
def space():
    return tiny_space()


@pytest.fixture
def teacher():
    return tiny_teacher()


def _args(tmp_path):
    return supernet_args(tmp_path)


@pytest.mark.parametrize("block, trained", [(1, ("mobilebert.encoder.layer.1.",)),
                                            (0, ("mobilebert.encoder.layer.0.", "mobilebert.embeddings."))])
def test_a_flash_stage_trains_its_block_and_nothing_else(space, teacher, tmp_path, block, trained):
    supernet = build_supernet(space, seed=0)
    before = {n: p.detach().clone() for n, p in supernet.named_parameters()}
    result = train_supernet_flash(space, teacher, _args(tmp_path), token_dataset(8), pad_collator, steps_per_block=2,
                                  blocks=[block], supernet=supernet, init_embeddings_from_teacher=False)
    drawn = [a for step in range(2) for a in SandwichSampler(space, num_random=2, seed=block).archs_for_step(step)]
    assert result.steps == 2 and result.subnet_steps == sum(a["num_hidden_layers"] > block for a in drawn)
    assert (result.subnet_steps == 8) == (block == 0)  # the smallest (1 layer) has no layer 1
    for name, param in supernet.named_parameters():
        moved = not torch.equal(param.detach(), before[name])
        assert moved == name.startswith(trained), name
        assert param.requires_grad  # flags restored


def test_the_block_loss_is_attention_kl_plus_matched_output_mse(space, teacher):
    supernet = build_supernet(space, seed=0).eval()
    model = FlashBlockModel(supernet, space, block=1, teacher_hidden_size=32)
    arch = {"hidden_size": 24, "intra_bottleneck_size": 12, "num_attention_heads": 2, "intermediate_size": 16,
            "num_feedforward_networks": 2, "num_hidden_layers": 3}
    batch = random_batch(with_labels=False, seed=4)
    with torch.no_grad():
        t = teacher(**batch, output_attentions=True, output_hidden_states=True)
        s = extract_subnet(supernet, arch, space)(**batch, output_attentions=True, output_hidden_states=True)
    mask = batch["attention_mask"].bool()
    t_att, s_att = average_heads(t.attentions[1], 2).transpose(1, 2)[mask], s.attentions[1].transpose(1, 2)[mask]
    kl = (torch.xlogy(t_att, t_att) - torch.xlogy(t_att, s_att)).sum(-1).mean()  # padded keys: 0 log 0 = 0
    matched = s.hidden_states[2] @ model.matcher.weight[:, :24].T + model.matcher.bias
    mse = (matched[mask] - t.hidden_states[2][mask]).pow(2).mean()
    loss = model.block_loss(arch, t.attentions[1], t.hidden_states[2], **batch)
    torch.testing.assert_close(loss, kl + mse, rtol=1e-4, atol=1e-6)


def test_sub_networks_without_the_block_are_skipped(space, teacher):
    supernet = build_supernet(space, seed=0).eval()
    model = FlashBlockModel(supernet, space, block=2, teacher_hidden_size=32)
    batch = random_batch(with_labels=False)
    with torch.no_grad():
        t = teacher(**batch, output_attentions=True, output_hidden_states=True)
    shallow = {**space.largest(), "num_hidden_layers": 2}
    out = model(archs=[space.largest(), shallow, space.smallest()], teacher_attention=t.attentions[1],
                teacher_hidden=t.hidden_states[2], **batch)
    assert out.subnet_losses.shape == (1,)
    with pytest.raises(ValueError, match="layer 2"):
        model(archs=[shallow], teacher_attention=t.attentions[1], teacher_hidden=t.hidden_states[2], **batch)


@pytest.mark.distributed
def test_two_process_flash_distillation_keeps_ranks_identical(tmp_path):
    from launch import accelerate_launch_two_cpu_processes

    result_path = tmp_path / "result.json"
    run = accelerate_launch_two_cpu_processes(SCRIPT, str(tmp_path / "out"), str(result_path), "flash")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(result_path.read_text())
    assert result["world_size"] == 2 and result["steps"] == 6  # 3 blocks x 2 steps
    assert result["max_abs_diff"] == 0.0 and result["moved"] > 0
