"""The typed configs own their checks: construction (from a dict or directly) refuses bad values naming the field."""

from __future__ import annotations

import dataclasses
import math

import pytest

from autodistill_trainer.configs import (
    AutoDistillationConfig,
    BaselineArguments,
    DataArguments,
    EvaluationArguments,
    FlashDistillationConfig,
    ModelArguments,
    RegularDistillationConfig,
    SearchConfig,
    TeacherArguments,
    parse_search_config,
)
from autodistill_trainer.configs import checks
from autodistill_trainer.errors import ConfigError

SPACE = {"hidden_size": [64, 96], "num_attention_heads": [2]}
ALL_CONFIGS = [SearchConfig, FlashDistillationConfig, RegularDistillationConfig, ModelArguments, TeacherArguments,
               DataArguments, EvaluationArguments, BaselineArguments, AutoDistillationConfig]


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_every_config_documents_its_fields(cls):
    assert "Args:" in cls.__doc__
    for f in dataclasses.fields(cls):
        assert f.name in cls.__doc__, f"{cls.__name__}.{f.name} is not in the Args docstring"
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
        assert "Any" not in str(f.type), f"{cls.__name__}.{f.name}: {f.type}"


def test_search_config_checks_itself_when_built_directly():
    assert SearchConfig(search_space=SPACE, search_algorithm="tpe").search_algorithm == "TPE"
    with pytest.raises(ConfigError, match=r"'search.seed' must be a non-negative integer seed .* got -1"):
        SearchConfig(search_space=SPACE, seed=-1)
    with pytest.raises(ConfigError, match=r"'search.max_latency_ms' must be a positive finite number or null, got nan"):
        SearchConfig(search_space=SPACE, max_latency_ms=math.nan)
    with pytest.raises(ConfigError, match="'search.higher_is_better' has 1 entries but 'search.metrics' has 2"):
        SearchConfig(search_space=SPACE, higher_is_better=[True])
    with pytest.raises(ConfigError, match="'search.search_space.hidden_size' must be a list of values"):
        SearchConfig(search_space={"hidden_size": {"a": 1}})
    with pytest.raises(ConfigError, match=r"'search.search_space.hidden_size' holds inf; values must be finite"):
        SearchConfig(search_space={"hidden_size": [64, math.inf]})
    with pytest.raises(ConfigError, match="'search.heartbeat_interval' must be a positive integer number of seconds"):
        SearchConfig(search_space=SPACE, heartbeat_interval=0)


def test_parse_search_config_is_the_dict_boundary_only():
    parsed = parse_search_config({"search": {"search_space": SPACE, "metrics": "accuracy"}})
    assert parsed == SearchConfig(search_space=SPACE, metrics=["accuracy"], higher_is_better=[True])
    assert parse_search_config(parsed) is parsed
    assert parse_search_config(AutoDistillationConfig(search=parsed)) is parsed
    with pytest.raises(ConfigError, match="'search.higher_is_better' is required for metrics"):
        parse_search_config({"search_space": SPACE, "metrics": ["bleu"]})
    with pytest.raises(ConfigError, match=r"Unknown key 'search.max_trial'. Did you mean: 'max_trials'"):
        parse_search_config({"search_space": SPACE, "max_trial": 3})


def test_flash_config_checks_itself():
    assert FlashDistillationConfig(train_steps=[1, 2]).train_steps == [1, 2]
    with pytest.raises(ConfigError, match=r"train_steps\[1\] must be a positive integer number of steps"):
        FlashDistillationConfig(train_steps=[1, 0])
    with pytest.raises(ConfigError, match=r"flash_distillation.train_steps is an empty list"):
        FlashDistillationConfig(train_steps=[])
    with pytest.raises(ConfigError, match=r"flash_distillation.soft_freeze must be a finite number in \[0, 1\]"):
        FlashDistillationConfig(soft_freeze=1.5)
    with pytest.raises(ConfigError, match=r"flash_distillation.temperature must be a positive finite number, got inf"):
        FlashDistillationConfig(temperature=math.inf)
    with pytest.raises(ConfigError, match="flash_distillation.add_origin_loss must be true/false"):
        FlashDistillationConfig(add_origin_loss="yes")
    with pytest.raises(ConfigError, match="unknown loss type 'KLD'"):
        FlashDistillationConfig(loss_types=[["KLD"]])
    with pytest.raises(ConfigError, match="flash_distillation.loss_weights entries must be a non-negative finite"):
        FlashDistillationConfig(loss_weights=[[1.0, -1.0]])
    with pytest.raises(ConfigError, match="flash_distillation.layer_mappings_for_knowledge_transfer has 1 entries"):
        FlashDistillationConfig(block_names=["a", "b"], layer_mappings=[[("a", "x")]])


def test_flash_check_num_blocks_names_the_reason():
    config = FlashDistillationConfig(train_steps=[1, 2, 3])
    config.check_num_blocks(3, "three layers")
    with pytest.raises(ConfigError, match=r"train_steps has 3 entries but there are 2 blocks \(two layers\)"):
        config.check_num_blocks(2, "two layers")


def test_regular_config_checks_itself():
    assert RegularDistillationConfig().validated().loss_types == ["KL"]
    with pytest.raises(ConfigError, match="regular_distillation.train_steps must be a positive integer"):
        RegularDistillationConfig(train_steps=0)
    with pytest.raises(ConfigError, match="regular_distillation.learning_rate must be a positive finite number"):
        RegularDistillationConfig(learning_rate=-1e-3)
    with pytest.raises(ConfigError, match="regular_distillation.loss_types has 2 entries but there are 1 mappings"):
        RegularDistillationConfig(loss_types=["KL", "MSE"])


@pytest.mark.parametrize("cls,kwargs,expected", [
    (ModelArguments, {"framework": "jax"}, "model.framework 'jax' is not supported"),
    (ModelArguments, {"student_class": "AutoModel"}, "name the concrete class, e.g. 'MobileBertModel'"),
    (TeacherArguments, {"dtype": "float17"}, "teacher.dtype 'float17' is not a floating dtype"),
    (TeacherArguments, {"cache_max_gb": 0}, "teacher.cache_max_gb must be a positive finite number, got 0."),
    (DataArguments, {"task": "ner"}, "data.task 'ner' is not supported; use one of ['text-classification', "),
    (DataArguments, {"max_length": 4}, "data.max_length must be an integer in [5, 8192]"),
    (DataArguments, {"validation_split_size": 1.5}, "data.validation_split_size must be a share in (0, 1)"),
    (DataArguments, {"cache_dir": ""}, "data.cache_dir"),
    (DataArguments, {"cache_dir": __file__}, "is a file; give a directory (it is created when missing)"),
    (EvaluationArguments, {"metrics": []}, "auto_distillation.evaluation.metrics must be a non-empty list"),
    (EvaluationArguments, {"latency_num_threads": 0}, "latency_num_threads must be a positive integer of at most"),
    (EvaluationArguments, {"trust_remote_code": 1}, "trust_remote_code must be true or false, got 1."),
    (BaselineArguments, {"train_steps": -3}, "baseline.train_steps must be a positive integer number of steps"),
])
def test_sections_check_their_values(cls, kwargs, expected):
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert expected in str(info.value)


def test_auto_distillation_config_from_design_parses_once():
    design = {"search": {"search_space": SPACE}, "flash_distillation": {"knowledge_transfer": {"train_steps": 5},
                                                                          "regular_distillation": {"train_steps": 7}}}
    config = AutoDistillationConfig.from_design(design)
    assert config.flash_distillation.train_steps == 5 and config.regular_distillation.train_steps == 7
    assert AutoDistillationConfig.from_design(config) is config
    with pytest.raises(ConfigError, match="use AutoDistillationConfig.from_design"):
        AutoDistillationConfig(search={"search_space": SPACE})


def test_checks_helpers_refuse_bools_and_non_finite_numbers():
    with pytest.raises(ConfigError, match="x must be a positive integer, got True"):
        checks.positive_int(True, "x")
    with pytest.raises(ConfigError, match="x must be a finite number in \\[0, 1\\], got nan"):
        checks.probability(math.nan, "x")
    assert checks.non_finite_path({"a": [1.0, {"b": math.inf}]}) == "a[1].b"
    assert len(checks.shown(list(range(10**6)))) <= checks.MAX_SHOWN_CHARS
