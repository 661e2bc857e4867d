"""The latency protocol's samples in rounds and its estimator (autodistill_trainer.timing)."""

import pytest
from torch import nn

from autodistill_trainer.configs.sections import EvaluationArguments
from autodistill_trainer.deploy.summary import LatencyProtocol
from autodistill_trainer.errors import ConfigError
from autodistill_trainer.profiling import measure_latency
from autodistill_trainer.timing import ESTIMATORS, estimate, latency_result, round_sizes, time_samples


@pytest.mark.parametrize("repeats, rounds, sizes", [(30, 3, [10, 10, 10]), (10, 3, [4, 3, 3]), (2, 5, [1, 1]),
                                                    (7, 1, [7])])
def test_round_sizes_split_the_repeats_as_evenly_as_possible_without_empty_rounds(repeats, rounds, sizes):
    assert round_sizes(repeats, rounds) == sizes
    assert sum(sizes) == repeats


@pytest.mark.parametrize("repeats, rounds", [(0, 1), (3, 0)])
def test_round_sizes_refuse_nonpositive_counts(repeats, rounds):
    with pytest.raises(ValueError):
        round_sizes(repeats, rounds)


def test_time_samples_take_every_repeat_in_rounds_separated_by_the_pause():
    events = []
    samples, inner_loops = time_samples(lambda: events.append("call"), warmup=2, repeats=7, min_sample_ms=0.0,
                                        max_inner_loops=1, rounds=3, pause_s=0.25,
                                        sleep=lambda s: events.append(("sleep", s)))
    assert len(samples) == 7 and inner_loops == 1
    sleeps = [e for e in events if e != "call"]
    assert sleeps == [("sleep", 0.25), ("sleep", 0.25)]  # between the 3 rounds, not before or after
    # warm-up 2 + one calibration sample + rounds of 3, 2, 2 samples each preceded (after a pause) by one untimed call
    first_pause, second_pause = (i for i, e in enumerate(events) if e != "call")
    assert first_pause == 2 + 1 + 3 and second_pause - first_pause == 1 + 1 + 2
    assert len(events) - second_pause - 1 == 1 + 2


def test_one_round_never_sleeps():
    slept = []
    samples, _ = time_samples(lambda: None, warmup=0, repeats=4, min_sample_ms=0.0, max_inner_loops=1, rounds=1,
                              sleep=slept.append)
    assert len(samples) == 4 and slept == []


def test_the_estimate_is_the_fastest_sample_or_the_median():
    samples = [3.0, 1.0, 2.0, 10.0, 4.0]
    assert estimate(samples, "min") == 1.0
    assert estimate(samples, "median") == 3.0
    with pytest.raises(ValueError, match="estimator"):
        estimate(samples, "mean")
    assert ESTIMATORS == ("min", "median")


@pytest.mark.parametrize("estimator, expected", [("min", 1.0), ("median", 3.0)])
def test_latency_result_headline_follows_the_estimator_and_keeps_the_median(estimator, expected):
    res = latency_result([3.0, 1.0, 2.0, 10.0, 4.0], 2, estimator, 3, batch_size=1, seq_length=8, num_threads=1,
                         device="cpu")
    assert res.latency_ms == expected
    assert (res.median_ms, res.min_ms, res.estimator, res.rounds, res.repeats) == (3.0, 1.0, estimator, 3, 5)


def test_measure_latency_with_the_median_estimator_reports_the_median():
    res = measure_latency(nn.Linear(4, 4), inputs=__import__("torch").randn(1, 4), warmup=1, repeats=3,
                          min_sample_ms=0.1, max_inner_loops=5, estimator="median", rounds=1)
    assert res.latency_ms == res.median_ms == sorted(res.samples_ms)[1]
    assert (res.estimator, res.rounds) == ("median", 1)


def test_measure_latency_defaults_to_the_fastest_of_the_samples_in_three_rounds():
    res = measure_latency(nn.Linear(4, 4), inputs=__import__("torch").randn(1, 4), warmup=1, repeats=3,
                          min_sample_ms=0.1, max_inner_loops=5)
    assert res.latency_ms == min(res.samples_ms) and (res.estimator, res.rounds) == ("min", 3)


def test_evaluation_section_defaults_to_the_fastest_sample_in_three_rounds():
    args = EvaluationArguments()
    assert (args.latency_estimator, args.latency_rounds) == ("min", 3)


def test_a_bad_latency_estimator_is_refused_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"auto_distillation\.evaluation\.latency_estimator.*'mean'.*\['min', "
                                          r"'median'\]"):
        EvaluationArguments(latency_estimator="mean")


def test_more_rounds_than_samples_is_refused_naming_both_keys():
    with pytest.raises(ConfigError, match=r"latency_rounds \(5\) is more than latency_repeats \(3\)"):
        EvaluationArguments(latency_repeats=3, latency_rounds=5)
    with pytest.raises(ConfigError, match="latency_rounds"):
        EvaluationArguments(latency_rounds=0)


def test_the_protocol_says_how_the_latency_is_estimated():
    assert LatencyProtocol().text() == "batch 1 x 64 tokens, 1 thread(s), 10 warm-up runs, fastest of 30 in 3 rounds"
    assert LatencyProtocol(estimator="median", rounds=1).text() == (
        "batch 1 x 64 tokens, 1 thread(s), 10 warm-up runs, median of 30")
    assert LatencyProtocol(repeats=5, rounds=2).timing() == dict(
        batch_size=1, seq_length=64, num_threads=1, warmup=10, repeats=5, estimator="min", rounds=2)
