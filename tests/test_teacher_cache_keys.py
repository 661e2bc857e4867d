"""Teacher-cache keys (callable processes, a teacher changed in place) and concurrent writers of one file."""

from __future__ import annotations

import copy
import functools
import logging
import threading

import numpy as np
import torch

from autodistill_trainer.mappings import LayerMapping
from autodistill_trainer.teacher_cache import TeacherOutputCache, cacheable, teacher_column
from helpers import pad_collator, token_dataset


def make_cache(teacher, tmp_path):
    return TeacherOutputCache(teacher, str(tmp_path / "cache"), pad_collator, batch_size=8)


def on_logits(process) -> LayerMapping:
    return LayerMapping("classifier", None, "classifier", process)


def scaled(factor):
    return lambda output: output * factor


def cached_values(dataset, mapping) -> torch.Tensor:
    rows = dataset[:][teacher_column(mapping)]  # one array per example (token features differ in length)
    return torch.cat([torch.as_tensor(np.asarray(row, dtype=np.float32)).reshape(-1) for row in rows])


def test_two_different_lambdas_get_their_own_columns_and_files(tmp_path, bert_teacher):
    once, twice = on_logits(lambda o: o * 1.0), on_logits(lambda o: o * 2.0)
    assert teacher_column(once) != teacher_column(twice)
    data = token_dataset()
    first = make_cache(bert_teacher, tmp_path).dataset_for(data, [once])
    rerun = make_cache(bert_teacher, tmp_path)  # a rerun with the other lambda must not read the first's file
    second = rerun.dataset_for(data, [twice])
    assert rerun.passes == 1
    assert torch.allclose(cached_values(second, twice), 2 * cached_values(first, once), rtol=2e-3)
    assert len(list((tmp_path / "cache").glob("teacher-outputs-*.arrow"))) == 2


def test_processes_are_keyed_by_what_they_compute():
    assert teacher_column(on_logits(scaled(1.0))) != teacher_column(on_logits(scaled(2.0)))  # closures differ
    assert teacher_column(on_logits(scaled(2.0))) == teacher_column(on_logits(scaled(2.0)))
    assert teacher_column(on_logits(lambda o: o[0])) == teacher_column(on_logits(lambda o: o[0]))
    partial = functools.partial(torch.mul, other=3.0)
    assert teacher_column(on_logits(partial)) == teacher_column(on_logits(functools.partial(torch.mul, other=3.0)))
    assert teacher_column(on_logits(partial)) != teacher_column(on_logits(functools.partial(torch.mul, other=4.0)))
    assert teacher_column(on_logits("1")) != teacher_column(on_logits(None))


class Scale:
    def __init__(self, factor):
        self.factor = factor

    def __call__(self, output):
        return output * self.factor


def test_a_process_whose_behaviour_cannot_be_fingerprinted_is_left_to_the_live_teacher(tmp_path, bert_teacher, caplog):
    mapping = on_logits(Scale(2.0))
    assert not cacheable(mapping) and cacheable(on_logits(scaled(2.0)))
    cache = make_cache(bert_teacher, tmp_path)
    data = token_dataset()
    with caplog.at_level(logging.INFO, logger="autodistill_trainer.teacher_cache"):
        assert cache.dataset_for(data, [mapping]) is data
    assert cache.passes == 0
    assert "classifier is a Scale whose behaviour cannot be fingerprinted" in caplog.text


def test_a_teacher_changed_in_place_is_not_served_stale_outputs(tmp_path, bert_teacher):
    mapping = LayerMapping("classifier", None, "classifier", None)
    cache = make_cache(bert_teacher, tmp_path)
    data = token_dataset()
    before = cached_values(cache.dataset_for(data, [mapping]), mapping)
    with torch.no_grad():
        bert_teacher.classifier.weight.mul_(2.0)
    after = cached_values(cache.dataset_for(data, [mapping]), mapping)
    assert cache.passes == 2 and not torch.allclose(before, after)
    with torch.no_grad():
        bert_teacher.classifier.bias.data.add_(1.0)  # through .data: no version bump
    shifted = cached_values(cache.dataset_for(data, [mapping]), mapping)
    assert cache.passes == 3 and torch.allclose(shifted, after + 1.0, atol=2e-2)
    cache.dataset_for(data, [mapping])
    assert cache.passes == 3  # unchanged weights: the file is reused


def test_two_builders_of_the_same_cache_file_both_succeed_with_one_teacher_pass(tmp_path, bert_teacher):
    mapping = LayerMapping("bert.encoder.layer.1.output", None, "bert.encoder.layer.1.output", None)
    other_teacher = copy.deepcopy(bert_teacher)  # equal weights: the same cache file
    first_cache, second_cache = make_cache(bert_teacher, tmp_path), make_cache(other_teacher, tmp_path)
    first_is_writing, second_done = threading.Event(), threading.Event()
    calls = []

    def slow_first_writer(*args):
        calls.append(1)
        if len(calls) == 2:  # the first batch of the writing pass (call 1 is the probe)
            first_is_writing.set()
            second_done.wait(timeout=3)  # let the second builder run now (it would race on a shared temp file)

    bert_teacher.register_forward_hook(slow_first_writer)
    results, errors = {}, []

    def build(name, cache, done=None):
        try:
            results[name] = cache.dataset_for(token_dataset(), [mapping])
        except Exception as error:  # noqa: BLE001 - reported by the assert below
            errors.append(error)
        finally:
            if done is not None:
                done.set()

    first = threading.Thread(target=build, args=("first", first_cache))
    first.start()
    assert first_is_writing.wait(timeout=60)
    second = threading.Thread(target=build, args=("second", second_cache, second_done))
    second.start()
    first.join(timeout=120)
    second.join(timeout=120)
    assert errors == []
    assert first_cache.passes + second_cache.passes == 1
    assert torch.equal(cached_values(results["first"], mapping), cached_values(results["second"], mapping))
    assert len(list((tmp_path / "cache").glob("teacher-outputs-*.arrow"))) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))
