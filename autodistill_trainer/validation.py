"""Checks of a recipe that go beyond its shape: values, paths, and names against the models' structure.

Called by :func:`autodistill_trainer.config.build_recipe`; everything here runs in well under two seconds and
loads no weights and no data:

* :class:`RecipeLoader`: ``yaml.SafeLoader`` (never constructs Python objects) that also reads ``1e-3`` as a
  float (YAML 1.1 wants ``1.0e-3``; PyYAML would give the string ``'1e-3'``).
* :func:`check_training_arguments`: positive learning rate, batch sizes, steps and epochs; known ``report_to``.
* :func:`check_distillation_values`: steps, temperatures, learning rates, soft_freeze, loss names and weights of
  the flash and regular phases, also when their mappings are ``auto``.
* :func:`check_paths`: local teacher/encoder/base-config paths and data files exist; ``offline:`` names resolve.
* :func:`build_student_base_config` / :func:`check_search_space`: the student's base config overrides are
  MobileBERT fields, the search-space names are config fields, and at least one architecture is valid.
* :func:`check_module_names`: hand-written block names and layer mappings name real modules, checked against a
  student and a teacher instantiated on the ``meta`` device (no memory, no weights; the teacher's
  ``config.json`` only).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from typing import Any, Iterable, Mapping

import yaml

from .errors import ConfigError, InvalidArchitectureError, did_you_mean

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------- YAML


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` plus YAML 1.2 floats without a dot (``1e-3``, ``5E4``)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_load(stream: Any) -> Any:
    """Parse YAML as plain data (mappings, lists, strings, numbers, booleans, null), never Python objects."""
    return yaml.load(stream, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader subclass


def yaml_error_message(error: yaml.YAMLError, source: str) -> str:
    """A one-line message for a YAML error: where, and what; Python tags get an explanation."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    match = re.search(r"tag '?(tag:yaml\.org,2002:)?(python/[^' ]*)", problem)
    if match:
        return (
            f"{source}{where} uses the YAML tag '!!{match.group(2)}', which would build a Python object; recipes are "
            "plain data (read with yaml.safe_load), so tags that construct or call Python objects are refused. "
            "Write the value as a string, number, list or mapping."
        )
    return f"{source} is not valid YAML{where}: {problem}."


# ------------------------------------------------------------------------------------------------- values


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not (isinstance(value, float) and math.isnan(value))


def check_positive_number(value: Any, key: str, allow_none: bool = True, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if not _is_number(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"{key} must be {bound} number, got {value!r}.")


def check_positive_int(value: Any, key: str, what: str = "integer") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive {what}, got {value!r}.")


def _known_report_integrations() -> set[str] | None:
    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    except ImportError:  # pragma: no cover - layout changed
        return None
    return set(INTEGRATION_TO_CALLBACK)


def check_training_arguments(args: Any, where: str) -> None:
    """Values of a parsed ``TrainingArguments`` that would only fail (or silently misbehave) at training time."""
    check_positive_number(args.learning_rate, f"{where}.learning_rate", allow_none=False)
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        check_positive_int(getattr(args, key), f"{where}.{key}")
    if isinstance(args.max_steps, bool) or not isinstance(args.max_steps, int) or args.max_steps == 0 or args.max_steps < -1:
        raise ConfigError(f"{where}.max_steps must be a positive number of steps (or -1 to train num_train_epochs), got {args.max_steps!r}.")
    if args.max_steps == -1:
        check_positive_number(args.num_train_epochs, f"{where}.num_train_epochs", allow_none=False)
    for key in ("logging_steps", "eval_steps", "save_steps"):
        check_positive_number(getattr(args, key, None), f"{where}.{key}")
    check_positive_number(args.warmup_steps, f"{where}.warmup_steps", allow_zero=True)
    known = _known_report_integrations()
    report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
    if known is not None:
        for name in report_to:
            if name not in known and name not in ("all", "none", None):
                raise ConfigError(
                    f"{where}.report_to: unknown integration {name!r}; use [] (none), 'all' or some of "
                    f"{sorted(known)}.{did_you_mean(str(name), sorted(known))}"
                )


def _loss_names(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _loss_names(item)
    elif value is not None:
        yield value


def _numbers(value: Any) -> Iterable[Any]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _numbers(item)
    elif value is not None:
        yield value


def _check_steps(value: Any, key: str) -> None:
    items = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and not value:
        raise ConfigError(f"{key} is an empty list; give a positive number of steps (or one per block).")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
            raise ConfigError(f"{key} must be a positive integer number of steps (or a list of them), got {value!r}.")


def check_distillation_values(flash: Any, regular: Any) -> None:
    """Scalars of both phases, including those that ``'auto'`` mappings leave unchecked until the models exist."""
    from .losses import get_loss_class

    for phase, config in (("flash_distillation", flash), ("regular_distillation", regular)):
        if config is None:
            continue
        _check_steps(config.train_steps, f"{phase}.train_steps")
        check_positive_number(config.temperature, f"{phase}.temperature", allow_none=False)
        check_positive_number(config.learning_rate, f"{phase}.learning_rate")
        origin = config.add_origin_loss
        if not all(isinstance(o, bool) for o in (origin if isinstance(origin, (list, tuple)) else [origin])):
            raise ConfigError(f"{phase}.add_origin_loss must be true/false (or a list of them per block), got {origin!r}.")
        for name in _loss_names(config.loss_types):
            get_loss_class(name)
        for weight in _numbers(config.loss_weights):
            if not _is_number(weight) or weight < 0:
                raise ConfigError(f"{phase}.loss_weights must hold non-negative numbers, got {config.loss_weights!r}.")
    if flash is not None and flash.soft_freeze is not None:
        if not _is_number(flash.soft_freeze) or not 0 <= flash.soft_freeze <= 1:
            raise ConfigError(
                f"flash_distillation.soft_freeze must be a number in [0, 1] (learning-rate multiplier of blocks already "
                f"transferred; MobileBERT uses 0.1) or null to freeze them, got {flash.soft_freeze!r}."
            )


def check_metric_names(metrics: list[str], key: str) -> None:
    """A name that is neither shipped nor a local path goes to the Hub; one very close to a shipped name is a typo."""
    import difflib

    from .metrics import SHIPPED_METRICS

    for spec in metrics:
        name = spec.partition(":")[0]
        if name in SHIPPED_METRICS or os.path.exists(spec) or os.path.exists(name):
            continue
        close = difflib.get_close_matches(name.lower(), list(SHIPPED_METRICS), n=1, cutoff=0.75)
        if close:
            raise ConfigError(
                f"{key}: {spec!r} is not a shipped metric ({', '.join(SHIPPED_METRICS)}) nor a local path. "
                f"Did you mean: {close[0]!r}? (Other names are loaded from the Hub with evaluate.load.)"
            )


DATA_TASKS = ("text-classification", "pretraining")


def check_task(data: Any, teacher: Any, model: Any, evaluation: Any) -> None:
    """``data.task`` is known and the teacher, student class and metrics suit it.

    ``pretraining`` distils a pretrained teacher (``teacher.model_name_or_path``, loaded with
    ``AutoModelForPreTraining``) into ``*ForPreTraining`` students on MLM + next-sentence pairs, scored by
    token-level metrics (``mlm_accuracy``). There is no fine-tuning in pretraining, so ``teacher.pretrained_encoder``
    (an encoder the CLI fine-tunes on labels first) is refused rather than silently reinterpreted.
    """
    from .metrics import TOKEN_LEVEL_METRICS

    if data.task not in DATA_TASKS:
        raise ConfigError(f"data.task {data.task!r} is not supported; use one of {list(DATA_TASKS)}."
                          + did_you_mean(str(data.task), DATA_TASKS))
    token_level = [m for m in evaluation.metrics if m.partition(":")[0] in TOKEN_LEVEL_METRICS]
    if data.task == "text-classification":
        if token_level:
            raise ConfigError(
                f"auto_distillation.evaluation.metrics: {token_level} score masked tokens; they need data.task: "
                "pretraining (text classification uses e.g. accuracy, f1)."
            )
        return
    if teacher.pretrained_encoder:
        raise ConfigError(
            "teacher.pretrained_encoder is an encoder the CLI fine-tunes on labels, which data.task: pretraining has "
            "none of; give teacher.model_name_or_path: a pretrained model with MLM + next-sentence heads "
            "(e.g. bert-large-uncased, loaded with AutoModelForPreTraining)."
        )
    if data.text_pair_column:
        raise ConfigError("data.text_pair_column is not used by data.task: pretraining (the pairs are consecutive "
                          "lines of data.text_column); remove it.")
    if len(token_level) != len(evaluation.metrics):
        raise ConfigError(
            f"auto_distillation.evaluation.metrics {evaluation.metrics}: data.task: pretraining evaluates masked-token "
            f"predictions; use metrics: [mlm_accuracy] (and search metrics such as [mlm_accuracy, latency])."
        )
    cls = student_class(model.student_class)
    forward = getattr(cls, "forward", None)
    if not model.student_class.startswith("Auto") and forward is not None:
        import inspect

        if "next_sentence_label" not in inspect.signature(forward).parameters:
            raise ConfigError(
                f"model.student_class {model.student_class!r} does not take next_sentence_label; data.task: "
                "pretraining trains MLM + next-sentence students such as MobileBertForPreTraining."
            )


# ------------------------------------------------------------------------------------------------- paths

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def resolve_model_source(name_or_path: str, key: str) -> str:
    """``offline:`` names resolved; a path that is neither an existing directory nor a Hub id is an error."""
    from .teacher import resolve_model_path

    try:
        resolved = resolve_model_path(name_or_path)
    except FileNotFoundError as error:
        raise ConfigError(f"{key} {name_or_path!r}: {error}") from None
    except ConfigError as error:
        raise ConfigError(f"{key}: {error}") from None
    if os.path.exists(resolved):
        if not os.path.isdir(resolved):
            raise ConfigError(f"{key} {name_or_path!r} is a file; give the directory holding config.json (a save_pretrained output).")
        if not os.path.isfile(os.path.join(resolved, "config.json")):
            raise ConfigError(f"{key} {name_or_path!r} holds no config.json; give a directory written by save_pretrained.")
        return resolved
    if not _HUB_ID.match(name_or_path):
        raise ConfigError(
            f"{key} {name_or_path!r} is neither an existing directory nor a Hub model id ('name' or 'org/name'); "
            "fix the path (or use 'offline:all-MiniLM-L6-v2')."
        )
    return resolved


def check_paths(teacher: Any, data: Any, model: Any) -> None:
    if teacher.model_name_or_path:
        resolve_model_source(teacher.model_name_or_path, "teacher.model_name_or_path")
    if teacher.pretrained_encoder:
        resolve_model_source(teacher.pretrained_encoder, "teacher.pretrained_encoder")
    if isinstance(model.base_config, str):
        resolve_model_source(model.base_config, "model.base_config")
    for key in ("train_file", "validation_file"):
        path = getattr(data, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"data.{key} {path!r} does not exist; give the path of a local csv or json file.")
    if data.validation_file and not data.train_file:
        raise ConfigError("data.validation_file is given without data.train_file; give both local files.")
    if data.validation_split_size is not None:
        size = data.validation_split_size
        if not _is_number(size) or size <= 0 or (isinstance(size, float) and not size.is_integer() and size >= 1):
            raise ConfigError(
                f"data.validation_split_size must be a share in (0, 1) or a positive count of examples, got {size!r}."
            )
    if teacher.dtype is not None and teacher.dtype not in ("float32", "float16", "bfloat16", "float64"):
        raise ConfigError(
            f"teacher.dtype {teacher.dtype!r} is not a floating dtype; use float32, float16 or bfloat16 (or null)."
            + did_you_mean(str(teacher.dtype), ["float32", "float16", "bfloat16"])
        )


# ------------------------------------------------------------------------------------------------- models

# Set by the CLI from the tokenizer and the data: a recipe cannot override them in model.base_config.
_CLI_BASE_CONFIG_KEYS = ("num_labels", "vocab_size", "pad_token_id", "max_position_embeddings", "id2label", "label2id")


def student_class(name: str) -> Any:
    import transformers

    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"model.student_class must be a transformers class name, got {name!r}.")
    try:
        cls = getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError):
        candidates = [n for n in dir(transformers) if n.startswith(("MobileBert", "AutoModel", "Bert"))]
        raise ConfigError(
            f"model.student_class {name!r} is not a transformers model class.{did_you_mean(name, candidates)}"
        ) from None
    if not isinstance(cls, type) or not (hasattr(cls, "from_config") or hasattr(cls, "config_class")):
        raise ConfigError(f"model.student_class {name!r} is not a model class (e.g. MobileBertForSequenceClassification).")
    return cls


def build_student_base_config(model: Any, data: Any) -> Any:
    """The student's base config as the CLI builds it (default vocabulary and labels: names do not depend on them)."""
    from transformers import AutoConfig, MobileBertConfig

    from .builders import _config_fields, default_mobilebert_base_config

    if isinstance(model.base_config, str):
        try:
            return AutoConfig.from_pretrained(resolve_model_source(model.base_config, "model.base_config"), local_files_only=True)
        except (OSError, ValueError) as error:
            logger.info("model.base_config %r not readable offline (%s); skipping the student checks", model.base_config, error)
            return None
    overrides = dict(model.base_config or {})
    known = _config_fields(MobileBertConfig()) | {"attn_implementation"}
    for key in overrides:
        if key in _CLI_BASE_CONFIG_KEYS:
            raise ConfigError(
                f"model.base_config.{key} is set by the CLI (from the tokenizer, the labels and data.max_length); remove it."
            )
        if key not in known:
            raise ConfigError(f"model.base_config: {key!r} is not a MobileBertConfig field.{did_you_mean(str(key), sorted(known))}")
    try:
        return default_mobilebert_base_config(max_position_embeddings=max(512, data.max_length), **overrides)
    except (InvalidArchitectureError, TypeError, ValueError) as error:
        raise ConfigError(f"model.base_config is not a valid MobileBERT config: {error}") from None


def check_search_space(search_space: Mapping[str, list], base_config: Any, limit: int = 4096) -> None:
    """Names are fields of the student config; with at most `limit` architectures, at least one is valid."""
    from .builders import _config_fields, apply_architecture

    known = _config_fields(base_config)
    for key in search_space:
        if key not in known:
            raise ConfigError(
                f"auto_distillation.search.search_space.{key} is not a field of the student config "
                f"({type(base_config).__name__}).{did_you_mean(key, sorted(known))}"
            )
    if math.prod(len(v) for v in search_space.values()) > limit:
        return
    import itertools

    keys = list(search_space)
    first_reason = None
    for values in itertools.product(*(search_space[k] for k in keys)):
        try:
            apply_architecture(base_config, dict(zip(keys, values)))
            return
        except InvalidArchitectureError as error:
            first_reason = first_reason or f"{dict(zip(keys, values))}: {error}"
        except (TypeError, ValueError) as error:  # e.g. a string where a size is expected
            raise ConfigError(f"auto_distillation.search.search_space: {error}") from None
    raise ConfigError(
        f"auto_distillation.search.search_space has no valid architecture (for example {first_reason}); "
        "fix the values (e.g. heads must divide intra_bottleneck_size)."
    )


def _structural_arch(search_space: Mapping[str, list]) -> dict[str, Any]:
    """The smallest value of every numeric field (fewest layers/FFNs: the names every student has)."""
    arch = {}
    for key, values in search_space.items():
        numbers = [v for v in values if _is_number(v)]
        arch[key] = min(numbers) if len(numbers) == len(values) else values[0]
    return arch


def _module_names_on_meta(build: Any) -> set[str]:
    import torch

    with torch.device("meta"):
        model = build()
    return {name for name, _ in model.named_modules()}


def student_module_names(cls: Any, base_config: Any, search_space: Mapping[str, list]) -> set[str] | None:
    config = copy.deepcopy(base_config)
    for key, value in _structural_arch(search_space).items():
        setattr(config, key, value)
    if getattr(config, "model_type", None) == "mobilebert":
        config.true_hidden_size = config.intra_bottleneck_size if config.use_bottleneck else config.hidden_size
    try:
        return _module_names_on_meta(lambda: cls.from_config(config) if not hasattr(cls, "config_class") else cls(config))
    except Exception as error:  # names cannot be checked; the trials report the real problem
        logger.info("could not instantiate the student on the meta device (%s); skipping the module-name check", error)
        return None


def teacher_module_names(teacher: Any, task: str = "text-classification") -> set[str] | None:
    from transformers import AutoConfig, AutoModelForPreTraining, AutoModelForSequenceClassification

    auto_cls = AutoModelForPreTraining if task == "pretraining" else AutoModelForSequenceClassification

    source = teacher.model_name_or_path or teacher.pretrained_encoder
    key = "teacher.model_name_or_path" if teacher.model_name_or_path else "teacher.pretrained_encoder"
    path = resolve_model_source(source, key)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=teacher.trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as error:  # a Hub id not in the local cache: checked when the teacher loads
        logger.info("teacher config %r not available offline (%s); skipping the teacher module-name check", source, error)
        return None
    try:
        return _module_names_on_meta(
            lambda: auto_cls.from_config(config, trust_remote_code=teacher.trust_remote_code)
        )
    except Exception as error:
        logger.info("could not instantiate the teacher on the meta device (%s); skipping the module-name check", error)
        return None


def check_module_names(flash: Any, regular: Any, model: Any, teacher: Any, data: Any, search_space: Mapping[str, list]) -> None:
    """Hand-written block names and mappings against the modules of a meta-device student and teacher."""
    student_names: list[tuple[str, str]] = []  # (name, where)
    teacher_names: list[tuple[str, str]] = []
    if flash is not None and not flash.is_auto:
        for i, stage in enumerate(flash.stages()):
            student_names += [(p, f"flash_distillation.block_names[{i}]") for p in stage.block_prefixes]
            where = f"flash_distillation.layer_mappings_for_knowledge_transfer[{i}]"
            for j, m in enumerate(stage.layer_mappings):
                student_names.append((m.student_layer, f"{where}[{j}] (student side)"))
                teacher_names.append((m.teacher_layer, f"{where}[{j}] (teacher side)"))
    if regular is not None and regular.layer_mappings != "auto":
        for j, m in enumerate(regular.mappings()):
            where = f"regular_distillation.layer_mappings_for_knowledge_transfer[{j}]"
            student_names.append((m.student_layer, f"{where} (student side)"))
            teacher_names.append((m.teacher_layer, f"{where} (teacher side)"))
    student_names = [(n, w) for n, w in student_names if n]  # '' is the whole model
    teacher_names = [(n, w) for n, w in teacher_names if n]
    if student_names:
        cls = student_class(model.student_class)
        base = build_student_base_config(model, data)
        known = student_module_names(cls, base, search_space) if base is not None else None
        if known is not None:
            _check_names(student_names, known, f"the student ({cls.__name__})")
    if teacher_names:
        known = teacher_module_names(teacher, getattr(data, "task", "text-classification"))
        if known is not None:
            _check_names(teacher_names, known, "the teacher")


def _check_names(names: list[tuple[str, str]], known: set[str], role: str) -> None:
    for name, where in names:
        if name not in known:
            raise ConfigError(
                f"{where}: {role} has no module {name!r}.{did_you_mean(name, [k for k in known if k])} "
                "Names are dotted paths as listed by model.named_modules() (or 'auto')."
            )
