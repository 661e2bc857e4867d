"""ElasticSpace: the supernet's search space (extremes, size, sampling, validation, configs)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from supernet_helpers import TINY_SPACE, tiny_base_config, tiny_space

from autodistill_trainer.builders import build_model, enumerate_valid_architectures
from autodistill_trainer.errors import ConfigError, InvalidArchitectureError
from autodistill_trainer.supernet.space import ELASTIC_FIELDS, ElasticSpace


def test_largest_and_smallest_put_every_field_at_its_extreme():
    space = tiny_space()
    assert space.largest() == {f: max(v) for f, v in TINY_SPACE.items()}
    assert space.smallest() == {f: min(v) for f, v in TINY_SPACE.items()}
    config = space.supernet_config()
    assert {f: getattr(config, f) for f in TINY_SPACE} == space.largest()
    assert config.true_hidden_size == 16


def test_extreme_heads_are_the_extreme_values_that_divide_the_extreme_bottleneck():
    space = tiny_space({"intra_bottleneck_size": [6, 8], "num_attention_heads": [3, 2, 4]})
    assert space.largest() == {"intra_bottleneck_size": 8, "num_attention_heads": 4}
    space = tiny_space({"intra_bottleneck_size": [6, 8], "num_attention_heads": [3, 4]})
    assert space.largest() == {"intra_bottleneck_size": 8, "num_attention_heads": 4}
    assert space.smallest() == {"intra_bottleneck_size": 6, "num_attention_heads": 3}


def test_size_counts_exactly_the_valid_architectures_of_the_grid():
    space = tiny_space({**TINY_SPACE, "intra_bottleneck_size": [6, 8, 12], "num_attention_heads": [1, 3, 4]})
    valid, invalid = enumerate_valid_architectures(space.search_space, space.base_config)
    assert invalid and space.size == len(valid)
    assert tiny_space().size == 486


def test_sample_is_a_pure_function_of_the_rng_and_draws_every_valid_architecture():
    space = tiny_space({"intra_bottleneck_size": [6, 8], "num_attention_heads": [1, 2, 3], "num_hidden_layers": [1, 2]})
    valid, _ = enumerate_valid_architectures(space.search_space, space.base_config)
    assert space.size == len(valid) == 10
    assert [space.sample(random.Random(5)) for _ in range(3)] == [space.sample(random.Random(5))] * 3
    rng = random.Random(0)
    counts = Counter(tuple(sorted(space.sample(rng).items())) for _ in range(2000))
    assert set(counts) == {tuple(sorted(a.items())) for a in valid}
    assert max(counts.values()) < 1.5 * min(counts.values())  # uniform over valid architectures, 200 each expected


SMALLEST = {f: min(v) for f, v in TINY_SPACE.items()}


@pytest.mark.parametrize("space, arch, named", [
    (TINY_SPACE, {**SMALLEST, "hidden_size": 20}, "hidden_size=20"),
    (TINY_SPACE, {"hidden_size": 16}, "no intra_bottleneck_size"),
    (TINY_SPACE, {**SMALLEST, "embedding_size": 8}, "embedding_size=8"),
    (TINY_SPACE, {**SMALLEST, "num_hidden_layers": True}, "num_hidden_layers=True"),
    ({"intra_bottleneck_size": [12, 16], "num_attention_heads": [3, 4]},
     {"intra_bottleneck_size": 16, "num_attention_heads": 3}, "num_attention_heads=3 does not divide"),
])
def test_validate_names_the_field_and_value_of_an_architecture_outside_the_space(space, arch, named):
    space = tiny_space(space)
    with pytest.raises(InvalidArchitectureError, match=named):
        space.validate(arch)
    assert arch not in space
    with pytest.raises(InvalidArchitectureError):
        space.sub_config(arch)


def test_every_sampled_architecture_validates():
    space, rng = tiny_space(), random.Random(1)
    for _ in range(50):
        arch = space.sample(rng)
        space.validate(arch)
        assert arch in space


def test_sub_config_is_the_plain_search_config_with_every_searched_value():
    space = tiny_space({"hidden_size": [16, 32], "num_hidden_layers": [1, 3]})
    arch = {"hidden_size": 16, "num_hidden_layers": 1}
    config = space.sub_config(arch)
    from transformers import MobileBertForSequenceClassification
    plain = build_model(MobileBertForSequenceClassification, space.base_config, arch, attn_implementation="eager")
    assert config.to_dict() == plain.config.to_dict()
    assert (config.hidden_size, config.num_hidden_layers) == (16, 1)
    assert (config.intra_bottleneck_size, config.intermediate_size) == (16, 32)  # not searched: the base's values


@pytest.mark.parametrize("space, named", [
    ({"embedding_size": [8, 16]}, "embedding_size"),
    ({"num_hidden_layer": [1, 2]}, "num_hidden_layers"),
    ({"hidden_size": []}, "hidden_size"),
    ({"hidden_size": [16, 16.5]}, "hidden_size"),
    ({"hidden_size": [16, 16]}, "twice"),
    ({"hidden_size": [0, 16]}, "hidden_size"),
    ({"hidden_size": "16"}, "hidden_size"),
    ({}, "empty"),
])
def test_a_bad_search_space_is_a_config_error_naming_the_field(space, named):
    with pytest.raises(ConfigError, match=named):
        ElasticSpace(tiny_base_config(), space)


def test_any_sequence_of_values_is_a_space_axis():
    assert tiny_space({"hidden_size": range(16, 33, 8)}).search_space == {"hidden_size": (16, 24, 32)}


def test_a_space_whose_largest_architecture_cannot_run_is_refused():
    with pytest.raises(ConfigError, match="largest"):
        ElasticSpace(tiny_base_config(), {"intra_bottleneck_size": [8, 15], "num_attention_heads": [2, 4]})


def test_only_mobilebert_base_configs_make_a_supernet():
    from helpers import tiny_bert_config

    with pytest.raises(ConfigError, match="MobileBERT"):
        ElasticSpace(tiny_bert_config(), {"hidden_size": [16, 32]})
    assert set(ELASTIC_FIELDS) == set(TINY_SPACE)
