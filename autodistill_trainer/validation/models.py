"""Validation against the models' structure, without weights: task, student class, base config, search space,
and hand-written module names checked on meta-device models."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import typing
from typing import Any, Mapping

from ..configs import checks
from ..configs.kd_knobs import KD_KNOBS
from ..errors import ConfigError, InvalidArchitectureError, did_you_mean
from .environment import hub_offline, resolve_model_source

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------- task

def check_task(data: Any, teacher: Any, model: Any, evaluation: Any) -> None:
    """``data.task`` is known and the teacher, student class and metrics suit it.

    ``pretraining`` distils a pretrained teacher (``teacher.model_name_or_path``, loaded with
    ``AutoModelForPreTraining``) into ``*ForPreTraining`` students on MLM + next-sentence pairs, scored by
    token-level metrics (``mlm_accuracy``). There is no fine-tuning in pretraining, so ``teacher.pretrained_encoder``
    (an encoder the CLI fine-tunes on labels first) is refused rather than silently reinterpreted.
    """
    from ..metrics import TOKEN_LEVEL_METRICS

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
    if forward is not None:
        import inspect

        if "next_sentence_label" not in inspect.signature(forward).parameters:
            raise ConfigError(
                f"model.student_class {model.student_class!r} does not take next_sentence_label; data.task: "
                "pretraining trains MLM + next-sentence students such as MobileBertForPreTraining."
            )


# ------------------------------------------------------------------------------------------------- models

# Set by the CLI from the tokenizer and the data: a recipe cannot override nor search them.
def student_class(name: str) -> Any:
    """The transformers class named `name` (``model.student_class``)."""
    import transformers

    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"model.student_class must be a transformers class name, got {checks.shown(name)}.")
    try:
        cls = getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError):
        candidates = [n for n in dir(transformers) if n.startswith(("MobileBert", "Bert"))]
        raise ConfigError(
            f"model.student_class {name!r} is not a transformers model class.{did_you_mean(name, candidates)}"
        ) from None
    if not isinstance(cls, type) or not (hasattr(cls, "from_config") or hasattr(cls, "config_class")):
        raise ConfigError(f"model.student_class {name!r} is not a model class "
                          "(e.g. MobileBertForSequenceClassification).")
    return cls


def build_student_base_config(model: Any, data: Any) -> Any:
    """The student's base config as the CLI builds it (:func:`~autodistill_trainer.builders.student_base_config`,
    default vocabulary and labels: module names do not depend on them); None when a named config is neither local
    nor in the Hugging Face cache (the student checks are then skipped, unless the Hub is switched off)."""
    from transformers import AutoConfig

    from ..builders import student_base_config

    if isinstance(model.base_config, str):
        source = resolve_model_source(model.base_config, "model.base_config")
        try:
            AutoConfig.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as error:
            if hub_offline():
                raise ConfigError(
                    f"model.base_config {checks.shown(model.base_config)} is not available offline (HF_HUB_OFFLINE is "
                    "set and it is not in the local Hugging Face cache); download it first, give a local directory, "
                    "or unset HF_HUB_OFFLINE."
                ) from None
            logger.info("model.base_config %r not in the local cache (%s); skipping the student checks",
                        model.base_config, error)
            return None
    try:
        return student_base_config(model, data)
    except (InvalidArchitectureError, TypeError, ValueError) as error:
        raise ConfigError(f"model.base_config is not a valid MobileBERT config: {error}") from None


def check_weight_selection(model: Any, search_space: Mapping[str, list], base_config: Any) -> None:
    """``model.select_teacher_weights`` needs MobileBERT students with BERT's layout: every layout field that
    the search space does not set has its BERT value in the base config, and ``embedding_size`` can equal
    ``hidden_size`` (the teacher-dependent checks, e.g. ``hidden_act``, run once the teacher is loaded)."""
    from ..weight_selection import BERT_LAYOUT

    if not model.select_teacher_weights:
        return
    if getattr(base_config, "model_type", None) != "mobilebert":
        raise ConfigError("model.select_teacher_weights needs MobileBERT students (model.student_class "
                          f"{model.student_class!r} builds {getattr(base_config, 'model_type', None)!r}); "
                          "set it false.")
    fixes = [f"{key}: {value!r} (now {getattr(base_config, key, None)!r})" for key, value in BERT_LAYOUT.items()
             if key not in search_space and getattr(base_config, key, None) != value]
    widths = {key: search_space.get(key, [getattr(base_config, key, None)])
              for key in ("embedding_size", "hidden_size")}
    if not set(widths["embedding_size"]) & set(widths["hidden_size"]):
        fixes.append(f"embedding_size equal to hidden_size (now {widths['embedding_size']} and "
                     f"{widths['hidden_size']})")
    if fixes:
        raise ConfigError("model.select_teacher_weights copies the teacher's BERT layers into the students, which "
                          "needs BERT's layout; set in model.base_config " + "; ".join(fixes) + ", or set "
                          "model.select_teacher_weights: false.")


def check_latency_seq_length(evaluation: Any, base_config: Any) -> None:
    """The latency sequence length fits the student's position table."""
    limit = getattr(base_config, "max_position_embeddings", None)
    length = evaluation.latency_seq_length
    if length is not None and isinstance(limit, int) and length > limit:
        raise ConfigError(
            f"auto_distillation.evaluation.latency_seq_length {length} exceeds the student's "
            f"max_position_embeddings ({limit}); use at most {limit} (or leave it out: data.max_length)."
        )


def check_auto_blocks(flash: Any, search_space: Mapping[str, list], base_config: Any) -> None:
    """``'auto'`` flash distillation makes one block per student layer: per-block lists must have that length."""
    layers = search_space.get("num_hidden_layers", [getattr(base_config, "num_hidden_layers", None)])
    for n in layers:
        if isinstance(n, int):
            flash.check_num_blocks(n, f"'auto' makes one block per student layer and a student has {n}")


def check_search_space(search_space: Mapping[str, list], base_config: Any, limit: int = 4096) -> None:
    """Names are fields of the student config; with at most `limit` architectures, at least one is valid."""
    from ..builders import DERIVED_BASE_CONFIG_KEYS, _config_fields, apply_architecture

    known = _config_fields(base_config)
    for key in (k for k in search_space if k not in KD_KNOBS):  # KD knobs configure the stages (configs.kd_knobs)
        if key in DERIVED_BASE_CONFIG_KEYS:
            raise ConfigError(
                f"auto_distillation.search.search_space.{key} cannot be searched: the CLI sets it from the tokenizer, "
                "the labels and data.max_length; remove it from the search space."
            )
        if key not in known:
            raise ConfigError(
                f"auto_distillation.search.search_space.{key} is not a field of the student config "
                f"({type(base_config).__name__}).{did_you_mean(key, sorted(known) + sorted(KD_KNOBS))} Besides config "
                f"fields, the search space takes the KD knobs {', '.join(KD_KNOBS)}."
            )
    if math.prod(len(v) for v in search_space.values()) > limit:
        return

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
        numbers = [v for v in values if checks.is_number(v)]
        arch[key] = min(numbers) if len(numbers) == len(values) else values[0]
    return arch


def _module_names_on_meta(build: Any) -> tuple[set[str], type]:
    import torch

    with torch.device("meta"):
        model = build()
    return {name for name, _ in model.named_modules()}, type(model)


def output_fields(cls: type) -> list[str] | None:
    """Fields of the ``ModelOutput`` that ``cls.forward`` returns (from its return annotation), or None if unknown."""

    try:
        returned = typing.get_type_hints(cls.forward).get("return")
    except (NameError, TypeError, AttributeError):  # unresolvable annotations: the keys cannot be checked
        return None
    outputs = [a for a in (typing.get_args(returned) or (returned,)) if dataclasses.is_dataclass(a)]
    return [f.name for a in outputs for f in dataclasses.fields(a)] if outputs else None


def _check_output_keys(keys: list[tuple[Any, str]], cls: type | None, role: str) -> None:
    """Keys selected from the whole model's output (layer ``''``) exist in its ``ModelOutput``."""
    fields = output_fields(cls) if cls is not None else None
    if fields is None:
        return
    for key, where in keys:
        if isinstance(key, str) and key and not key.lstrip("-").isdigit() and key not in fields:
            raise ConfigError(
                f"{where}: {role} output has no key {checks.shown(key)} ({cls.__name__} returns {fields})."
                f"{did_you_mean(key, fields)}"
            )


def student_module_names(cls: Any, base_config: Any, search_space: Mapping[str, list]) -> set[str] | None:
    config = copy.deepcopy(base_config)
    for key, value in _structural_arch(search_space).items():
        setattr(config, key, value)
    if getattr(config, "model_type", None) == "mobilebert":
        config.true_hidden_size = config.intra_bottleneck_size if config.use_bottleneck else config.hidden_size
    try:
        return _module_names_on_meta(
            lambda: cls.from_config(config) if not hasattr(cls, "config_class") else cls(config))[0]
    except Exception as error:  # names cannot be checked; the trials report the real problem
        logger.info("could not instantiate the student on the meta device (%s); skipping the module-name check", error)
        return None


def teacher_module_names(teacher: Any, task: str = "text-classification") -> set[str] | None:
    """Module names of the teacher built from its config on the meta device (None when it cannot be built)."""
    found = _teacher_on_meta(teacher, task)
    return found[0] if found is not None else None


def _teacher_on_meta(teacher: Any, task: str) -> tuple[set[str], type] | None:
    from transformers import AutoConfig, AutoModelForPreTraining, AutoModelForSequenceClassification

    auto_cls = AutoModelForPreTraining if task == "pretraining" else AutoModelForSequenceClassification

    source = teacher.model_name_or_path or teacher.pretrained_encoder
    key = "teacher.model_name_or_path" if teacher.model_name_or_path else "teacher.pretrained_encoder"
    path = resolve_model_source(source, key)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=teacher.trust_remote_code, local_files_only=True)
    except (OSError, ValueError) as error:  # a Hub id not in the local cache: checked when the teacher loads
        logger.info("teacher config %r not available offline (%s); skipping the teacher module-name check",
                    source, error)
        return None
    try:
        return _module_names_on_meta(
            lambda: auto_cls.from_config(config, trust_remote_code=teacher.trust_remote_code)
        )
    except Exception as error:
        logger.info("could not instantiate the teacher on the meta device (%s); skipping the module-name check", error)
        return None


def check_module_names(flash: Any, regular: Any, model: Any, teacher: Any, data: Any,
                       search_space: Mapping[str, list]) -> None:
    """Hand-written block names and mappings against the modules of a meta-device student and teacher."""
    student_names: list[tuple[str, str]] = []  # (name, where)
    teacher_names: list[tuple[str, str]] = []
    student_keys: list[tuple[Any, str]] = []  # (output key of the whole model, where)
    teacher_keys: list[tuple[Any, str]] = []
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
            if not m.student_layer:
                student_keys.append((m.student_process, f"{where} (student side)"))
            if not m.teacher_layer:
                teacher_keys.append((m.teacher_process, f"{where} (teacher side)"))
    student_names = [(n, w) for n, w in student_names if n]  # '' is the whole model
    teacher_names = [(n, w) for n, w in teacher_names if n]
    if student_names or student_keys:
        cls = student_class(model.student_class)
        _check_output_keys(student_keys, cls, f"the student ({cls.__name__})")
    if student_names:
        base = build_student_base_config(model, data)
        known = student_module_names(cls, base, search_space) if base is not None else None
        if known is not None:
            _check_names(student_names, known, f"the student ({cls.__name__})")
    if teacher_names or teacher_keys:
        found = _teacher_on_meta(teacher, getattr(data, "task", "text-classification"))
        if found is not None:
            _check_names(teacher_names, found[0], "the teacher")
            _check_output_keys(teacher_keys, found[1], "the teacher")


def _check_names(names: list[tuple[str, str]], known: set[str], role: str) -> None:
    for name, where in names:
        if name not in known:
            raise ConfigError(
                f"{where}: {role} has no module {name!r}.{did_you_mean(name, [k for k in known if k])} "
                "Names are dotted paths as listed by model.named_modules() (or 'auto')."
            )
