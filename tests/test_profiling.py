"""Latency protocol and cheap metrics (params, FLOPs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import tiny_bert_config, tiny_mobilebert_config
from autodistill_trainer.profiling import (
    LatencyResult,
    ProfilingUnsupportedError,
    count_flops,
    count_parameters,
    dummy_inputs,
    measure_latency,
    profile_model,
)

FAST = dict(warmup=1, repeats=3, min_sample_ms=0.2, max_inner_loops=20)


def _mobilebert():
    from transformers import MobileBertForSequenceClassification

    torch.manual_seed(0)
    return MobileBertForSequenceClassification(tiny_mobilebert_config())


def test_count_parameters_equals_sum_of_numel_and_trainable_only_skips_frozen():
    model = _mobilebert()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    frozen = model.mobilebert.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == count_parameters(model) - frozen.numel()


def test_count_parameters_counts_tied_weights_once():
    shared = nn.Linear(3, 3, bias=False)
    model = nn.Sequential(shared, shared)
    assert count_parameters(model) == 9


def test_flops_of_linear_only_model_are_two_in_out_batch():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    batch = 5
    assert count_flops(model, inputs=torch.randn(batch, 8)) == 2 * 8 * 4 * batch + 2 * 4 * 2 * batch


def test_flops_of_transformer_grow_linearly_with_batch_and_restore_training_mode():
    model = _mobilebert().train()
    one = count_flops(model, batch_size=1, seq_length=8)
    two = count_flops(model, batch_size=2, seq_length=8)
    assert one > 0 and two == 2 * one
    assert model.training


def test_dummy_inputs_are_in_vocab_with_full_mask_and_token_types_only_when_accepted():
    model = _mobilebert()
    batch = dummy_inputs(model, batch_size=3, seq_length=11)
    assert batch["input_ids"].shape == (3, 11)
    assert int(batch["input_ids"].min()) >= 0 and int(batch["input_ids"].max()) < model.config.vocab_size
    assert torch.equal(batch["attention_mask"], torch.ones(3, 11, dtype=torch.long))
    assert "token_type_ids" in batch
    assert torch.equal(batch["input_ids"], dummy_inputs(model, 3, 11)["input_ids"])  # deterministic

    class NoTokenTypes(nn.Module):
        config = model.config

        def forward(self, input_ids, attention_mask=None):
            return input_ids

    assert "token_type_ids" not in dummy_inputs(NoTokenTypes(), 1, 4)


def test_dummy_inputs_reject_sequence_longer_than_positions():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        dummy_inputs(_mobilebert(), seq_length=65)


def test_measure_latency_returns_repeats_samples_and_consistent_statistics():
    res = measure_latency(_mobilebert(), batch_size=2, seq_length=8, **FAST)
    assert isinstance(res, LatencyResult)
    assert res.repeats == 3 and len(res.samples_ms) == 3
    assert res.median_ms == sorted(res.samples_ms)[1]
    assert res.min_ms == min(res.samples_ms) > 0
    assert res.cv == pytest.approx(res.std_ms / res.mean_ms)
    assert (res.batch_size, res.seq_length, res.device) == (2, 8, "cpu")
    assert res.inner_loops >= 1
    assert res.to_dict()["median_ms"] == res.median_ms


def test_measure_latency_uses_requested_threads_and_restores_previous_count():
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            seen.append(torch.get_num_threads())
            return self.lin(x)

    before = torch.get_num_threads()
    target = 2 if before != 2 else 1
    res = measure_latency(Spy(), inputs=torch.randn(1, 4), num_threads=target, **FAST)
    assert set(seen) == {target}
    assert res.num_threads == target
    assert torch.get_num_threads() == before


def test_measure_latency_runs_in_eval_and_inference_mode_and_restores_training():
    modes = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            modes.append((self.training, torch.is_inference_mode_enabled()))
            return self.lin(x)

    model = Spy().train()
    measure_latency(model, inputs=torch.randn(1, 4), **FAST)
    assert set(modes) == {(False, True)}
    assert model.training


def test_measure_latency_calibrates_inner_loops_to_reach_minimum_sample_time():
    model = nn.Linear(4, 4)
    res = measure_latency(model, inputs=torch.randn(1, 4), warmup=0, repeats=2, min_sample_ms=5.0)
    assert res.inner_loops > 1
    assert res.median_ms * res.inner_loops >= 4.0  # each sample lasted about min_sample_ms


def test_measure_latency_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(nn.Linear(2, 2), inputs=torch.randn(1, 2), repeats=0)


def test_profile_model_reports_the_fastest_sample_and_cv_of_one_latency_measurement_with_its_protocol(monkeypatch):
    from transformers import BertForSequenceClassification

    from autodistill_trainer import profiling

    measured = []

    def spy(model, **kwargs):
        result = measure_latency(model, **kwargs)
        measured.append((kwargs, result))
        return result

    monkeypatch.setattr(profiling, "measure_latency", spy)
    model = BertForSequenceClassification(tiny_bert_config())
    threads_before = torch.get_num_threads()
    out = profile_model(model, batch_size=1, seq_length=8, num_threads=1, **FAST)
    [(kwargs, res)] = measured
    assert set(out) == {"params", "flops", "latency", "latency_cv"}
    assert (kwargs["num_threads"], kwargs["warmup"], kwargs["repeats"]) == (1, FAST["warmup"], FAST["repeats"])
    assert len(res.samples_ms) == FAST["repeats"]  # repeats honoured
    assert out["latency"] == res.latency_ms == min(res.samples_ms)  # the default estimator: the fastest sample
    assert out["latency_cv"] == pytest.approx(res.std_ms / res.mean_ms)
    assert out["params"] == count_parameters(model)
    assert out["flops"] == count_flops(model, batch_size=1, seq_length=8)
    assert torch.get_num_threads() == threads_before


def test_models_the_profiler_cannot_feed_raise_profiling_unsupported_not_a_model_error():
    class NoConfig(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

    with pytest.raises(ProfilingUnsupportedError, match="vocab_size"):
        profile_model(NoConfig(), **FAST)
    with pytest.raises(ProfilingUnsupportedError, match="not a torch nn.Module"):
        profile_model(object(), **FAST)
    assert issubclass(ProfilingUnsupportedError, ValueError)


def test_auto_timer_uses_thread_cpu_time_for_one_cpu_thread_and_wall_clock_otherwise():
    model, x = nn.Linear(4, 4), torch.randn(1, 4)
    assert measure_latency(model, inputs=x, num_threads=1, **FAST).timer == "thread_cpu"
    assert measure_latency(model, inputs=x, num_threads=2, **FAST).timer == "wall"
    assert measure_latency(model, inputs=x, num_threads=1, timer="wall", **FAST).timer == "wall"


def test_thread_cpu_timer_is_refused_with_several_threads():
    with pytest.raises(ValueError, match="num_threads=1"):
        measure_latency(nn.Linear(4, 4), inputs=torch.randn(1, 4), num_threads=2, timer="thread_cpu")
