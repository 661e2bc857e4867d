"""Recipes: the design's AutoDistillation YAML plus teacher, data and baseline sections.

A recipe is read with :class:`~autodistill_trainer.configs.yaml_loader.RecipeLoader` (a ``yaml.SafeLoader`` that
also refuses duplicate keys, alias bombs and deep nesting) and validated as a whole before any model or dataset is
loaded: unknown or misspelled keys (with a suggestion), wrong types, non-finite or out-of-range numbers, an empty
search space, list lengths that disagree, unknown loss types or search algorithms all raise
:class:`~autodistill_trainer.errors.ConfigError` naming the key and how to fix it. Every section becomes a typed
object (:class:`Recipe`); the ``auto_distillation`` design keys become one
:class:`~autodistill_trainer.configs.AutoDistillationConfig`. Cheap checks run first; ``transformers`` is imported
for ``TrainingArguments`` and the meta-device model checks only once everything else is valid.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import yaml

from . import validation
from .configs import checks
from .configs.autodistillation import AutoDistillationConfig
from .configs.distillation import parse_distillation
from .configs.search import SearchConfig, parse_search_config
from .configs.search_supernet import check_supernet_recipe
from .configs.sections import BaselineArguments, DataArguments, EvaluationArguments, ModelArguments, TeacherArguments
from .configs.training import check_training_values
from .configs.yaml_loader import yaml_error_message, yaml_load
from .errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from transformers import TrainingArguments

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
    """A validated recipe: one typed object per section.

    Args:
        model: the ``model`` section.
        teacher: the ``teacher`` section.
        data: the ``data`` section.
        baseline: the ``baseline`` section.
        evaluation: ``auto_distillation.evaluation``.
        training: ``auto_distillation.train`` (with the top-level ``output_dir``) as ``TrainingArguments``.
        autodistillation: ``auto_distillation.search`` / ``flash_distillation`` / ``regular_distillation``.
        path: the recipe file, if read from one.
        raw: the recipe as plain data, after overrides.
    """

    model: ModelArguments
    teacher: TeacherArguments
    data: DataArguments
    baseline: BaselineArguments
    evaluation: EvaluationArguments
    training: "TrainingArguments"
    autodistillation: AutoDistillationConfig
    path: Optional[str] = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def output_dir(self) -> str:
        return self.training.output_dir


# ---------------------------------------------------------------------------- loading
def read_recipe(path: str) -> dict[str, Any]:
    """Read a YAML recipe as plain data (:class:`RecipeLoader`); bad YAML gives a ConfigError with the line."""
    if os.path.isdir(path):
        raise ConfigError(f"recipe {path!r} is a directory; give the path of a YAML recipe file (see recipes/).")
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
    from transformers import TrainingArguments

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
            raise ConfigError(f"unexpected argument {checks.shown(token)}: overrides are --key value "
                              "(e.g. --max_trials 3).")
        if "=" in token:
            key, text = token[2:].split("=", 1)
            i += 1
        else:
            key = token[2:]
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value (e.g. --{key} 3).")
            text = items[i + 1]
            i += 2
        if not key:
            raise ConfigError(f"{token!r} names no key; overrides are --key value (e.g. --max_trials 3).")
        if not text.strip():
            raise ConfigError(f"--{key} is given an empty value; give one (e.g. --{key} VALUE) or leave it out.")
        try:
            value = yaml_load(text)
        except yaml.YAMLError:
            value = text  # a plain string (never evaluated)
        if "." in key:
            path = tuple(key.split("."))
            if not all(path):
                raise ConfigError(f"--{key}: empty part in the dotted key; write --section.key value.")
        else:
            candidates = _leaf_paths(recipe).get(key, [])
            if not candidates:
                known = sorted(_leaf_paths(recipe))
                raise ConfigError(f"unknown override --{key}.{did_you_mean(key, known)} "
                                  "Use --section.key for nested values.")
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
    if origin is typing.Literal:  # the type here; the dataclass names the allowed values
        return any(type(value) is type(arg) for arg in typing.get_args(annotation))
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
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("NoneType", "null")


def _parse_section(cls: type, values: Any, where: str) -> Any:
    """Check the keys and value types of one section, then build its dataclass (which checks ranges)."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {checks.shown(values)}.")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {checks.shown(key)}.{did_you_mean(str(key), list(fields))}")
        if not _type_ok(value, hints.get(key, Any)):
            raise ConfigError(f"{where}.{key} must be {_type_name(hints.get(key))}, "
                              f"got {checks.shown(value)} ({type(value).__name__}).")
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{where}: {error}") from None


def _check_search_metrics(search: SearchConfig, evaluation: EvaluationArguments) -> None:
    """Every search objective is produced: by the profiler, the loss, or a shipped metric of the evaluation."""
    from .metrics import SHIPPED_METRICS

    produced = {"latency", "params", "flops", "loss"}
    scripts = []
    for spec in evaluation.metrics:
        name = spec.partition(":")[0]
        (produced.add(name) if name in SHIPPED_METRICS else scripts.append(spec))
    for metric in search.metrics:
        base = metric[len("eval_"):] if metric.startswith("eval_") else metric
        if base in produced or scripts:  # a metric script may return any keys: its names cannot be checked here
            continue
        raise ConfigError(
            f"auto_distillation.search.metrics: nothing produces {checks.shown(metric)}: the profiler gives latency, "
            f"params, flops and auto_distillation.evaluation.metrics {evaluation.metrics} give "
            f"{sorted(produced - {'latency', 'params', 'flops'})}.{did_you_mean(metric, sorted(produced))}"
        )


def _build_training_arguments(train: Any, output_dir: str, where: str) -> "TrainingArguments":
    from transformers import TrainingArguments

    args = _parse_section(TrainingArguments, {**train, "output_dir": output_dir}, where)
    validation.check_report_to(args, where)
    return args


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
            raise ConfigError(f"recipe: unknown section {checks.shown(key)}.{did_you_mean(str(key), TOP_LEVEL_KEYS)}")
    bad = checks.non_finite_path(dict(data))
    if bad is not None:
        raise ConfigError(f"{bad} is not a finite number (.inf/.nan); give a finite value.")
    auto = data.get("auto_distillation")
    if not isinstance(auto, Mapping):
        raise ConfigError("recipe: the auto_distillation section is required (with at least auto_distillation.search).")
    for key in auto:
        if key not in AUTO_DISTILLATION_KEYS:
            raise ConfigError(f"auto_distillation: unknown key {checks.shown(key)}."
                              f"{did_you_mean(str(key), AUTO_DISTILLATION_KEYS)}")

    # 1. Plain values, section by section (no torch or transformers import).
    model = _parse_section(ModelArguments, data.get("model"), "model")
    teacher = _parse_section(TeacherArguments, data.get("teacher"), "teacher")
    if bool(teacher.model_name_or_path) == bool(teacher.pretrained_encoder):
        raise ConfigError(
            "teacher: give exactly one of teacher.model_name_or_path (a fine-tuned teacher) or "
            "teacher.pretrained_encoder (an encoder to fine-tune first)."
        )
    data_args = _parse_section(DataArguments, data.get("data"), "data")
    if not data_args.dataset_name and not data_args.train_file:
        raise ConfigError("data: give data.dataset_name (Hub or 'rotten_tomatoes_demo') or data.train_file.")
    baseline = _parse_section(BaselineArguments, data.get("baseline"), "baseline")
    evaluation = _parse_section(EvaluationArguments, auto.get("evaluation"), "auto_distillation.evaluation")
    validation.check_metric_names(evaluation.metrics, "auto_distillation.evaluation.metrics",
                                  evaluation.trust_remote_code)
    validation.check_task(data_args, teacher, model, evaluation)
    if "search" not in auto:
        raise ConfigError("auto_distillation.search is required (search_space at least).")
    search = parse_search_config({"search": auto["search"]})
    _check_search_metrics(search, evaluation)
    train = auto.get("train") or {}
    if not isinstance(train, Mapping):
        raise ConfigError(f"auto_distillation.train must be a mapping of TrainingArguments, got {checks.shown(train)}.")
    if "output_dir" in train:
        raise ConfigError("auto_distillation.train.output_dir: set output_dir at the top level of the recipe.")
    if "output_dir" in teacher.finetune:
        raise ConfigError("teacher.finetune.output_dir: the teacher is fine-tuned under output_dir/teacher-finetune; "
                          "remove it.")
    check_training_values(train, "auto_distillation.train")
    check_training_values(teacher.finetune, "teacher.finetune")
    output_dir = data.get("output_dir")
    if output_dir is None:
        output_dir = os.path.join("outputs", model.name)
    if not isinstance(output_dir, str) or not output_dir.strip():
        raise ConfigError(f"output_dir must be a non-empty path string, got {checks.shown(output_dir)}.")
    validation.check_output_dir(output_dir)
    if search.storage is not None:
        validation.check_storage_url(search.storage, "auto_distillation.search.storage")

    # 2. The distillation phases (layer mappings import torch), then TrainingArguments (imports transformers).
    flash, regular = parse_distillation(auto.get("flash_distillation"), auto.get("regular_distillation"))
    if flash is None and regular is None:
        raise ConfigError("auto_distillation: give flash_distillation, regular_distillation or both.")
    autodistillation = AutoDistillationConfig(search=search, flash_distillation=flash, regular_distillation=regular)
    check_supernet_recipe(search.strategy, model.student_class, regular, flash)
    if search.strategy == "supernet" and data_args.labelled_fraction is not None:
        raise ConfigError("data.labelled_fraction is not applied by search.strategy: supernet (its sandwich steps "
                          "sample batches from the whole training set): remove data.labelled_fraction or use the "
                          "plain or multi_fidelity strategy.")
    if search.strategy == "supernet" and model.select_teacher_weights:
        raise ConfigError("model.select_teacher_weights does not apply to search.strategy: supernet (its students are "
                          "slices of the supernet's weights): set it false or use the plain or multi_fidelity "
                          "strategy.")
    if "selection_order" in (data.get("model") or {}) and not model.select_teacher_weights:
        raise ConfigError("model.selection_order applies only to students initialised from the teacher's weights: "
                          "set model.select_teacher_weights: true, or remove model.selection_order.")
    training = _build_training_arguments(train, output_dir, "auto_distillation.train")
    _build_training_arguments(teacher.finetune, os.path.join(output_dir, "teacher-finetune"), "teacher.finetune")

    # 3. Against the outside world and the models' structure, without weights.
    validation.check_paths(teacher, data_args, model)
    validation.student_class(model.student_class)
    base_config = validation.build_student_base_config(model, data_args)
    if base_config is not None:
        validation.check_search_space(search.search_space, base_config)
        validation.check_latency_seq_length(evaluation, base_config)
        validation.check_weight_selection(model, search.search_space, base_config)
        if flash is not None and flash.is_auto:
            validation.check_auto_blocks(flash, search.search_space, base_config)
    if check_models:
        validation.check_module_names(flash, regular, model, teacher, data_args, search.search_space)
    return Recipe(model=model, teacher=teacher, data=data_args, baseline=baseline, evaluation=evaluation,
                  training=training, autodistillation=autodistillation, path=path, raw=dict(data))


def load_recipe(path: str, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe (see the module docstring)."""
    return build_recipe(apply_overrides(read_recipe(path), overrides or []), path)
