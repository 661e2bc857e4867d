"""Recipes: the design's AutoDistillation YAML plus teacher, data and baseline sections.

A recipe is read with ``yaml.safe_load`` and validated as a whole before any model or dataset is
loaded: unknown or misspelled keys (with a suggestion), wrong types, non-positive steps or trials,
an empty search space, list lengths that disagree, unknown loss types or search algorithms all raise
:class:`~autodistill_trainer.errors.ConfigError` naming the key and how to fix it.

Layout (every section optional but ``auto_distillation.search``)::

    model:               # the design's model section plus the student class and its base config
      name: rotten_tomatoes_demo
      framework: pytorch
      student_class: MobileBertForSequenceClassification
      base_config: {num_hidden_layers: 4}      # overrides on the built-in MobileBERT base config
    teacher:
      model_name_or_path: path/or/hub-name      # a fine-tuned teacher, or
      pretrained_encoder: offline:all-MiniLM-L6-v2   # an encoder the CLI fine-tunes first
      finetune: {num_train_epochs: 1, learning_rate: 1.0e-4}
    data:
      dataset_name: rotten_tomatoes_demo        # or a Hub dataset (glue + dataset_config_name sst2), or
      train_file: train.csv                     # local csv/json files
      max_length: 64
    auto_distillation:
      search: {search_space: {...}, search_algorithm: BO, metrics: [accuracy, latency], ...}
      flash_distillation: {...}                 # the design's flat YAML form, or layer_mappings: auto
      regular_distillation: {...}
      train: {learning_rate: 1.0e-3, ...}       # TrainingArguments of the distillation runs
      evaluation: {metrics: [accuracy], latency_batch_size: 1}
    baseline: {enabled: true}                   # the best architecture trained without distillation
    output_dir: outputs/demo

Command-line overrides: ``--section.key value`` for any recipe value (``--auto_distillation.search.max_trials 3``),
or ``--key value`` when ``key`` names exactly one recipe field (``--max_trials 3``, ``--learning_rate 1e-3``).
Values are parsed as YAML (``3`` is an int, ``[1, 2]`` a list, ``true`` a bool).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .configs.distillation import parse_distillation
from .configs.sections import BaselineArguments, DataArguments, EvaluationArguments, ModelArguments, TeacherArguments
from .errors import ConfigError, did_you_mean
from . import validation
from .configs.search import SearchConfig, parse_search_config
from .validation import yaml_error_message, yaml_load


SECTION_CLASSES = {
    "model": ModelArguments,
    "teacher": TeacherArguments,
    "data": DataArguments,
    "baseline": BaselineArguments,
}
AUTO_DISTILLATION_KEYS = ("search", "flash_distillation", "regular_distillation", "train", "evaluation")
TOP_LEVEL_KEYS = (*SECTION_CLASSES, "auto_distillation", "output_dir")


@dataclass
class Recipe:
    """A validated recipe."""

    model: ModelArguments
    teacher: TeacherArguments
    data: DataArguments
    baseline: BaselineArguments
    evaluation: EvaluationArguments
    training: TrainingArguments
    autodistillation_config: dict[str, Any]  # search / flash_distillation / regular_distillation, as the design
    raw: dict[str, Any]
    path: Optional[str] = None

    @property
    def output_dir(self) -> str:
        return self.training.output_dir


# ---------------------------------------------------------------------------- loading
def read_recipe(path: str) -> dict[str, Any]:
    """Read a YAML recipe as plain data (a ``yaml.SafeLoader``); invalid YAML gives a ConfigError with the line."""
    if not os.path.isfile(path):
        raise ConfigError(f"recipe {path!r} does not exist; give the path of a YAML recipe (see recipes/).")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml_load(f)
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_message(error, f"recipe {path!r}")) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"recipe {path!r} cannot be read: {error}.") from None
    if data is None:
        raise ConfigError(f"recipe {path!r} is empty.")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path!r} must be a YAML mapping of sections, got a {type(data).__name__}.")
    return data


def _leaf_paths(recipe: Mapping[str, Any]) -> dict[str, list[tuple[str, ...]]]:
    """Every overridable field name -> the dotted paths it can mean."""
    paths: dict[str, list[tuple[str, ...]]] = {}

    def add(path: tuple[str, ...]) -> None:
        paths.setdefault(path[-1], []).append(path)

    for section, cls in SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            add((section, f.name))
    for f in dataclasses.fields(EvaluationArguments):
        add(("auto_distillation", "evaluation", f.name))
    for f in dataclasses.fields(TrainingArguments):
        if f.init and f.name != "output_dir":
            add(("auto_distillation", "train", f.name))
    add(("output_dir",))
    for f in dataclasses.fields(SearchConfig):
        add(("auto_distillation", "search", f.name))
    for section in ("flash_distillation", "regular_distillation"):
        value = (recipe.get("auto_distillation") or {}).get(section) or {}
        for key in value if isinstance(value, Mapping) else ():
            add(("auto_distillation", section, key))
    return paths


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--key value`` / ``--a.b.c value`` / ``--key=value`` overrides (values parsed as YAML)."""
    recipe = copy.deepcopy(recipe)
    items = list(overrides)
    i = 0
    while i < len(items):
        token = items[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}: overrides are --key value (e.g. --max_trials 3).")
        if "=" in token:
            key, text = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value (e.g. --{key} 3).")
            text = items[i + 1]
            i += 2
        try:
            value = yaml_load(text)
        except yaml.YAMLError:
            value = text  # a plain string (never evaluated)
        if not key:
            raise ConfigError(f"{token!r} names no key; overrides are --key value (e.g. --max_trials 3).")
        if "." in key:
            path = tuple(key.split("."))
            if not all(path):
                raise ConfigError(f"--{key}: empty part in the dotted key; write --section.key value.")
        else:
            candidates = _leaf_paths(recipe).get(key, [])
            if not candidates:
                known = sorted(_leaf_paths(recipe))
                raise ConfigError(f"unknown override --{key}.{did_you_mean(key, known)} Use --section.key for nested values.")
            if len(candidates) > 1:
                options = ", ".join("--" + ".".join(p) for p in candidates)
                raise ConfigError(f"--{key} is ambiguous; use one of {options}.")
            path = candidates[0]
        node = recipe
        for part in path[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--{key}: {part!r} is not a section in the recipe.")
            node = node[part]
        node[path[-1]] = value
    return recipe


# ---------------------------------------------------------------------------- validation
def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is Any or annotation is None:
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if isinstance(annotation, type):
        if issubclass(annotation, str):  # str enums (IntervalStrategy...)
            return isinstance(value, str)
        return isinstance(value, annotation) or isinstance(value, (str, dict))
    return True


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "null")


def _parse_section(cls: type, values: Any, where: str):
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {values!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}.{did_you_mean(str(key), list(fields))}")
        if not _type_ok(value, hints.get(key, Any)):
            raise ConfigError(f"{where}.{key} must be {_type_name(hints.get(key))}, got {value!r} ({type(value).__name__}).")
    try:
        (parsed,) = HfArgumentParser(cls).parse_dict(dict(values), allow_extra_keys=False)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from None
    return parsed


def _positive(value: Any, key: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key} must be a positive number, got {value!r}.")


def build_recipe(data: Mapping[str, Any], path: Optional[str] = None, check_models: bool = True) -> Recipe:
    """Validate a recipe mapping (already overridden) into a :class:`Recipe`; no weights or data are loaded.

    With ``check_models`` (default), hand-written block names and layer mappings are checked against a student and
    a teacher instantiated on the meta device (the teacher's ``config.json`` is read; see
    :func:`autodistill_trainer.validation.check_module_names`).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a recipe must be a mapping of sections, got {type(data).__name__}.")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(f"recipe: unknown section {key!r}.{did_you_mean(str(key), TOP_LEVEL_KEYS)}")
    auto = data.get("auto_distillation")
    if not isinstance(auto, Mapping):
        raise ConfigError("recipe: the auto_distillation section is required (with at least auto_distillation.search).")
    for key in auto:
        if key not in AUTO_DISTILLATION_KEYS:
            raise ConfigError(f"auto_distillation: unknown key {key!r}.{did_you_mean(str(key), AUTO_DISTILLATION_KEYS)}")

    model = _parse_section(ModelArguments, data.get("model"), "model")
    if model.framework != "pytorch":
        raise ConfigError(f"model.framework {model.framework!r} is not supported; use 'pytorch'.")
    teacher = _parse_section(TeacherArguments, data.get("teacher"), "teacher")
    if bool(teacher.model_name_or_path) == bool(teacher.pretrained_encoder):
        raise ConfigError(
            "teacher: give exactly one of teacher.model_name_or_path (a fine-tuned teacher) or "
            "teacher.pretrained_encoder (an encoder to fine-tune first)."
        )
    data_args = _parse_section(DataArguments, data.get("data"), "data")
    if not data_args.dataset_name and not data_args.train_file:
        raise ConfigError("data: give data.dataset_name (Hub or 'rotten_tomatoes_demo') or data.train_file.")
    _positive(data_args.max_length, "data.max_length", allow_none=False)
    _positive(data_args.max_train_samples, "data.max_train_samples")
    _positive(data_args.max_eval_samples, "data.max_eval_samples")
    baseline = _parse_section(BaselineArguments, data.get("baseline"), "baseline")
    _positive(baseline.train_steps, "baseline.train_steps")
    evaluation = _parse_section(EvaluationArguments, auto.get("evaluation"), "auto_distillation.evaluation")
    for key in ("latency_batch_size", "latency_num_threads", "latency_repeats", "latency_seq_length"):
        _positive(getattr(evaluation, key), f"auto_distillation.evaluation.{key}")
    if not evaluation.metrics or not all(isinstance(m, str) for m in evaluation.metrics):
        raise ConfigError("auto_distillation.evaluation.metrics must be a non-empty list of metric names.")
    validation.check_metric_names(evaluation.metrics, "auto_distillation.evaluation.metrics")
    validation.check_task(data_args, teacher, model, evaluation)

    if not isinstance(auto.get("train") or {}, Mapping):
        raise ConfigError(f"auto_distillation.train must be a mapping of TrainingArguments, got {auto.get('train')!r}.")
    train = dict(auto.get("train") or {})
    if "output_dir" in train:
        raise ConfigError("auto_distillation.train.output_dir: set output_dir at the top level of the recipe.")
    train["output_dir"] = data.get("output_dir") or os.path.join("outputs", model.name)
    if not isinstance(train["output_dir"], str) or not train["output_dir"]:
        raise ConfigError(f"output_dir must be a path string, got {train['output_dir']!r}.")
    training = _parse_section(TrainingArguments, train, "auto_distillation.train")
    validation.check_training_arguments(training, "auto_distillation.train")
    # teacher.finetune holds TrainingArguments too (merged over the fine-tuning defaults by the CLI)
    finetune = dict(teacher.finetune)
    if "output_dir" in finetune:
        raise ConfigError("teacher.finetune.output_dir: the teacher is fine-tuned under output_dir/teacher-finetune; remove it.")
    finetune_args = _parse_section(
        TrainingArguments, {**finetune, "output_dir": os.path.join(train["output_dir"], "teacher-finetune")}, "teacher.finetune"
    )
    validation.check_training_arguments(finetune_args, "teacher.finetune")

    if "search" not in auto:
        raise ConfigError("auto_distillation.search is required (search_space at least).")
    search = parse_search_config({"search": auto["search"]})
    flash, regular = parse_distillation(auto.get("flash_distillation"), auto.get("regular_distillation"))
    if flash is None and regular is None:
        raise ConfigError("auto_distillation: give flash_distillation, regular_distillation or both.")
    validation.check_distillation_values(flash, regular)
    if flash is not None and not flash.is_auto:
        flash.stages()
    if regular is not None:
        regular.validated()
    for metric in search.metrics:
        known = {"latency", "params", "flops", *evaluation.metrics, *(f"eval_{m}" for m in evaluation.metrics)}
        if metric not in known and not any(metric.startswith(m) for m in evaluation.metrics):
            raise ConfigError(
                f"auto_distillation.search.metrics: {metric!r} is neither measured by the profiler (latency, params, "
                f"flops) nor one of auto_distillation.evaluation.metrics {evaluation.metrics}.{did_you_mean(metric, sorted(known))}"
            )
    # Against the models' structure, without weights: student class, base config, search-space names, module names.
    validation.check_paths(teacher, data_args, model)
    validation.student_class(model.student_class)
    base_config = validation.build_student_base_config(model, data_args)
    if base_config is not None:
        validation.check_search_space(search.search_space, base_config)
    if check_models:
        validation.check_module_names(flash, regular, model, teacher, data_args, search.search_space)
    config = {
        "search": dict(auto["search"]),
        "flash_distillation": auto.get("flash_distillation"),
        "regular_distillation": auto.get("regular_distillation"),
    }
    return Recipe(model, teacher, data_args, baseline, evaluation, training, config, dict(data), path)


def load_recipe(path: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe (see the module docstring)."""
    return build_recipe(apply_overrides(read_recipe(path), overrides or []), path)
