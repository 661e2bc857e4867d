"""Extraction and shared-weight forward of sub-networks: the nesting rule (leading slices), exactness, gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import VOCAB_SIZE, random_batch
from supernet_helpers import covering_archs, tiny_space
from transformers import AutoModelForSequenceClassification, MobileBertForSequenceClassification

from autodistill_trainer.builders import build_model
from autodistill_trainer.errors import ConfigError, InvalidArchitectureError
from autodistill_trainer.supernet.extract import build_supernet, extract_subnet, leading_slice, subnet_forward


@pytest.fixture(scope="module")
def space():
    return tiny_space()


@pytest.fixture(scope="module")
def supernet(space):
    model = build_supernet(space, seed=0)
    with torch.no_grad():  # non-trivial LayerNorms and biases, so that a wrong slice shows in the logits
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def test_random_subnets_extracted_equal_their_shared_weight_forward(space, supernet):
    batch = random_batch(batch_size=3, seq_len=9, with_labels=False, seed=3)
    archs = [space.largest(), space.smallest(), *covering_archs(space, seed=1)]
    logits = []
    for arch in archs:
        extracted = extract_subnet(supernet, arch, space)
        assert not extracted.training and type(extracted) is MobileBertForSequenceClassification
        expected = extracted(**batch).logits
        shared = subnet_forward(supernet, arch, space, **batch).logits
        torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-6)
        logits.append(expected)
    assert all((a - logits[0]).abs().max() > 1e-4 for a in logits[1:])  # the sub-networks really differ


def test_the_largest_subnet_is_the_supernet(space, supernet):
    batch = random_batch(with_labels=False)
    torch.testing.assert_close(subnet_forward(supernet, space.largest(), space, **batch).logits,
                               supernet(**batch).logits)


def test_extracted_weights_are_leading_slices_and_shapes_match_the_plain_builder(space, supernet):
    arch = {"hidden_size": 24, "intra_bottleneck_size": 12, "num_attention_heads": 4, "intermediate_size": 16,
            "num_feedforward_networks": 2, "num_hidden_layers": 2}
    extracted = extract_subnet(supernet, arch, space)
    plain = build_model(MobileBertForSequenceClassification, space.base_config, arch, attn_implementation="eager")
    assert extracted.config.to_dict() == plain.config.to_dict()
    shapes = {n: t.shape for n, t in extracted.state_dict().items()}
    assert shapes == {n: t.shape for n, t in plain.state_dict().items()}
    whole = supernet.state_dict()
    for name, tensor in extracted.state_dict().items():
        torch.testing.assert_close(tensor, whole[name][tuple(slice(0, n) for n in tensor.shape)], rtol=0, atol=0)
        assert tensor.data_ptr() != whole[name].data_ptr()  # cloned, not shared
    names = set(extracted.state_dict())
    assert "mobilebert.encoder.layer.1.ffn.0.output.dense.weight" in names
    assert not any(".layer.2." in n or ".ffn.1." in n for n in names)  # beyond the depth and the FFN count
    assert extracted.mobilebert.encoder.layer[0].attention.self.attention_head_size == 3


def test_shared_weight_gradients_reach_exactly_the_subnets_slices(space, supernet):
    batch = random_batch(batch_size=4, seq_len=8, seed=5)
    for arch in covering_archs(space, seed=2)[:4]:
        supernet.zero_grad(set_to_none=True)
        subnet_forward(supernet, arch, space, **batch).loss.backward()
        extracted = extract_subnet(supernet, arch, space)
        extracted(**batch).loss.backward()
        sub_grads = {n: p.grad for n, p in extracted.named_parameters()}
        for name, param in supernet.named_parameters():
            if name not in sub_grads:
                assert param.grad is None, f"{name} is not in {arch} but got a gradient"
                continue
            inside = leading_slice(param.grad, sub_grads[name].shape)
            torch.testing.assert_close(inside, sub_grads[name], rtol=1e-4, atol=1e-6)
            outside = param.grad.clone()
            leading_slice(outside, sub_grads[name].shape).zero_()
            assert torch.count_nonzero(outside) == 0, f"{name}: gradient outside the slice of {arch}"
        assert any(torch.count_nonzero(g) for g in sub_grads.values())
    supernet.zero_grad(set_to_none=True)


def test_invalid_subnets_are_refused_before_running(space, supernet):
    bad = {**space.smallest(), "intermediate_size": 24}
    with pytest.raises(InvalidArchitectureError, match="intermediate_size=24"):
        extract_subnet(supernet, bad, space)
    with pytest.raises(InvalidArchitectureError, match="intermediate_size=24"):
        subnet_forward(supernet, bad, space, **random_batch())


def test_a_depth_beyond_the_architectures_layers_is_refused(space, supernet):
    batch = random_batch(with_labels=False)
    shallow = subnet_forward(supernet, space.largest(), space, depth=1, output_hidden_states=True, **batch)
    full = subnet_forward(supernet, space.largest(), space, output_hidden_states=True, **batch)
    assert len(shallow.hidden_states) == 2
    torch.testing.assert_close(shallow.hidden_states[1], full.hidden_states[1])
    with pytest.raises(ValueError, match="depth"):
        subnet_forward(supernet, space.smallest(), space, depth=2, **batch)


def test_a_supernet_from_another_space_is_refused(space):
    narrow = tiny_space({"hidden_size": [16, 24]})
    with pytest.raises(ConfigError, match="hidden_size|supernet_config"):
        extract_subnet(build_supernet(narrow, seed=0), space.largest(), space)


def test_subnets_run_in_the_supernets_train_mode(space, supernet):
    batch = random_batch(with_labels=False)
    arch = space.largest()
    supernet.train()
    try:
        torch.manual_seed(0)
        first = subnet_forward(supernet, arch, space, **batch).logits
        second = subnet_forward(supernet, arch, space, **batch).logits
        assert (first - second).abs().max() > 0  # dropout is on
    finally:
        supernet.eval()
    torch.testing.assert_close(subnet_forward(supernet, arch, space, **batch).logits,
                               subnet_forward(supernet, arch, space, **batch).logits, rtol=0, atol=0)


def test_an_extracted_subnet_saves_loads_and_runs_in_a_plain_pipeline(space, supernet, tmp_path):
    from transformers import BertTokenizer

    words = [f"w{i}" for i in range(VOCAB_SIZE - 5)]
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(vocab=str(tmp_path / "vocab.txt"))
    arch = covering_archs(space, seed=3)[0]
    extracted = extract_subnet(supernet, arch, space)
    out = tmp_path / "student"
    extracted.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    batch = tokenizer(["w1 w2 w3", "w4 w5"], return_tensors="pt", padding=True)
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        expected = extracted(**batch).logits
    torch.testing.assert_close(reloaded(**batch).logits, expected)
    assert {f: getattr(reloaded.config, f) for f in arch} == arch
    code = ("import sys, json; from transformers import pipeline; "
            "clf = pipeline('text-classification', model=sys.argv[1], top_k=None); "
            "r = clf(['w1 w2 w3'])[0]; assert 'autodistill_trainer' not in sys.modules; print(json.dumps(r))")
    env = {**os.environ, "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env, timeout=120,
                         cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    scores = {r["label"]: r["score"] for r in json.loads(run.stdout.strip().splitlines()[-1])}
    probs = expected[0].softmax(-1)
    assert scores == pytest.approx({extracted.config.id2label[i]: float(p) for i, p in enumerate(probs)}, abs=1e-5)
