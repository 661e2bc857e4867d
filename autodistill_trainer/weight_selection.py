"""Students initialised from the teacher by weight selection: leading slices of the teacher's own weights.

A student trained from scratch on a few thousand labelled texts has none of the teacher's pre-training; the
teacher's weights do. Weight selection ("Initializing Models with Larger Ones", Xu et al., ICLR 2024; DistilBERT
initialises from every other teacher layer the same way) copies, for every weight of the student, the leading
slice of the teacher weight it corresponds to:

* the residual stream keeps the teacher's first ``hidden_size`` dimensions everywhere (embeddings, every
  projection's input and output, LayerNorms, pooler, classifier), so the selected dimensions are the same ones in
  every layer;
* attention keeps the first heads (whole heads when the student's head size equals the teacher's), the
  feed-forward network its first ``intermediate_size`` units;
* student layer ``i`` starts from teacher layer ``uniform_layer_map(L_s, L_t)[i]`` (the same map flash
  distillation's ``auto`` mappings use: ``[1, 2, 4, 5]`` for 4 of 6 layers).

With ``model.selection_order: importance`` (the default) the CLI selects from a copy of the teacher rewired by
importance first (:mod:`.rewiring`: heads, feed-forward units and residual dimensions sorted, most important first,
a permutation that leaves the teacher's function unchanged), so the leading slices are the teacher's most important
ones; ``leading`` selects from the teacher as it is.

It needs a student with BERT's layout, which MobileBERT reaches with ``use_bottleneck: false``,
``num_feedforward_networks: 1``, ``trigram_input: false``, ``embedding_size`` equal to ``hidden_size``,
``normalization_type: layer_norm`` and the teacher's ``hidden_act``: then a MobileBERT layer computes exactly a
BERT layer (a student as wide and deep as its teacher reproduces the teacher's logits), and the teacher is any
BERT-family encoder with ``embeddings`` / ``encoder.layer.N`` / ``pooler`` modules under its base model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .auto_mappings import uniform_layer_map

logger = logging.getLogger(__name__)

__all__ = ["BERT_LAYOUT", "SelectionSource", "bert_layout_mismatches", "check_teacher_for_selection",
           "select_teacher_weights", "student_initialisation", "try_select_teacher_weights"]

#: The MobileBERT config values that make a student's layers BERT layers (``embedding_size`` must also equal
#: ``hidden_size`` and ``hidden_act`` the teacher's; checked by :func:`bert_layout_mismatches`).
BERT_LAYOUT: dict[str, Any] = {
    "use_bottleneck": False,
    "use_bottleneck_attention": False,
    "num_feedforward_networks": 1,
    "trigram_input": False,
    "normalization_type": "layer_norm",
}

#: Module names under the base model, per layer and outside the layers, that carry weights over one to one.
_LAYER_MODULES = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                  "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")
_EMBEDDING_MODULES = ("embeddings.word_embeddings", "embeddings.position_embeddings",
                      "embeddings.token_type_embeddings", "embeddings.LayerNorm")


def bert_layout_mismatches(config: Any, teacher_config: Any | None = None) -> dict[str, str]:
    """What keeps a MobileBERT student config from BERT's layout: config key -> ``"key is X; set Y"`` (empty: none).

    ``teacher_config`` adds the checks that need the teacher: the same ``hidden_act``, and ``hidden_size``,
    ``intermediate_size`` and ``num_attention_heads`` no larger than the teacher's.
    """
    problems = {key: f"{key} is {getattr(config, key, None)!r}; set {value!r}" for key, value in BERT_LAYOUT.items()
                if getattr(config, key, None) != value}
    if getattr(config, "embedding_size", None) != getattr(config, "hidden_size", None):
        problems["embedding_size"] = (f"embedding_size is {getattr(config, 'embedding_size', None)!r}; set it equal "
                                      f"to hidden_size ({getattr(config, 'hidden_size', None)!r})")
    if teacher_config is not None:
        if getattr(config, "hidden_act", None) != getattr(teacher_config, "hidden_act", None):
            problems["hidden_act"] = (f"hidden_act is {getattr(config, 'hidden_act', None)!r}; set the teacher's "
                                      f"{getattr(teacher_config, 'hidden_act', None)!r}")
        for key in ("hidden_size", "intermediate_size", "num_attention_heads"):
            student_value, teacher_value = getattr(config, key, None), getattr(teacher_config, key, None)
            if student_value is not None and teacher_value is not None and student_value > teacher_value:
                problems[key] = f"{key} is {student_value}, more than the teacher's {teacher_value}"
    return problems


def _base(model: nn.Module) -> tuple[nn.Module, str]:
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    return (base, f"{prefix}.") if isinstance(base, nn.Module) else (model, "")


def _copy_leading(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Copy the leading slice of ``teacher`` into ``student`` (same number of dimensions, none larger)."""
    student.copy_(teacher[tuple(slice(0, size) for size in student.shape)].to(student.dtype))


def select_teacher_weights(student: nn.Module, teacher: nn.Module) -> dict[str, Any]:
    """Initialise ``student``'s embeddings, layers, pooler and classifier from leading slices of the teacher's.

    Returns what was done: ``{"layers": teacher layer per student layer, "tensors": number of tensors copied,
    "skipped": names of student modules left as initialised}`` (the classifier when its shape is not a slice of the
    teacher's, e.g. a different number of labels). The ``embedding_transformation`` of a MobileBERT student keeps its
    initial weights: with BERT's layout its forward does not use it.

    Raises:
        ValueError: the student is not in BERT's layout (each mismatch named, with the value to set), or a module
            this needs is missing from the teacher or the student.
    """
    problems = bert_layout_mismatches(student.config, teacher.config)
    if problems:
        raise ValueError("weight selection from the teacher needs a student in BERT's layout: "
                         + "; ".join(problems.values()) + ".")
    s_base, s_prefix = _base(student)
    t_base, t_prefix = _base(teacher)
    s_modules, t_modules = dict(s_base.named_modules()), dict(t_base.named_modules())
    layer_map = uniform_layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    pairs = [(name, name) for name in _EMBEDDING_MODULES]
    pairs += [(f"encoder.layer.{i}.{name}", f"encoder.layer.{t}.{name}")
              for i, t in enumerate(layer_map) for name in _LAYER_MODULES]
    if "pooler.dense" in s_modules:
        pairs.append(("pooler.dense", "pooler.dense"))
    missing = [f"{t_prefix}{t}" for s, t in pairs if t not in t_modules]
    missing += [f"{s_prefix}{s}" for s, t in pairs if s not in s_modules]
    if missing:
        raise ValueError(f"weight selection from the teacher needs BERT-family modules; missing: {missing[:4]}.")
    modules = [(s_modules[s], t_modules[t], f"{s_prefix}{s}") for s, t in pairs]
    s_head, t_head = getattr(student, "classifier", None), getattr(teacher, "classifier", None)
    skipped = []
    if isinstance(s_head, nn.Linear) and isinstance(t_head, nn.Linear) and s_head.out_features == t_head.out_features:
        modules.append((s_head, t_head, "classifier"))
    elif s_head is not None:
        skipped.append("classifier")
    tensors = 0
    with torch.no_grad():
        for s_module, t_module, name in modules:
            for param_name, s_param in s_module.named_parameters(recurse=False):
                t_param = getattr(t_module, param_name, None)
                if t_param is None or t_param.dim() != s_param.dim() or any(
                        s > t for s, t in zip(s_param.shape, t_param.shape)):
                    skipped.append(f"{name}.{param_name}")
                    continue
                _copy_leading(s_param, t_param)
                tensors += 1
    if skipped:
        logger.info("weight selection left these as initialised: %s", ", ".join(skipped))
    logger.info("student initialised from the teacher by weight selection (teacher layers %s, %d tensors)",
                layer_map, tensors)
    return {"layers": layer_map, "tensors": tensors, "skipped": skipped}


def check_teacher_for_selection(base_config: Any, teacher: nn.Module, searched: Any = ()) -> None:
    """Before any training: the teacher has the BERT modules weight selection copies, and the students' base config
    matches the teacher where the search space (``searched``: its field names) does not decide.

    Raises:
        ConfigError: naming ``model.select_teacher_weights`` or the ``model.base_config`` key to change.
    """
    from .errors import ConfigError

    base, prefix = _base(teacher)
    names = dict(base.named_modules())
    wanted = [*_EMBEDDING_MODULES, *(f"encoder.layer.0.{name}" for name in _LAYER_MODULES)]
    missing = [f"{prefix}{name}" for name in wanted if name not in names]
    if missing:
        raise ConfigError(f"model.select_teacher_weights needs a BERT-family teacher; {type(teacher).__name__} has no "
                          f"{missing[0]!r}. Set model.select_teacher_weights: false.")
    decided = set(searched) | ({"embedding_size"} if "hidden_size" in searched else set())
    problems = [p for key, p in bert_layout_mismatches(base_config, teacher.config).items() if key not in decided]
    if problems:
        raise ConfigError("model.select_teacher_weights: the students' base config does not fit the teacher; in "
                          "model.base_config " + "; ".join(problems) + ".")


def try_select_teacher_weights(student: nn.Module, teacher: nn.Module) -> bool:
    """:func:`select_teacher_weights` when the student has BERT's layout; otherwise log why not and return False
    (a searched architecture outside the layout keeps its usual initialisation)."""
    problems = bert_layout_mismatches(student.config, teacher.config)
    if problems:
        logger.info("student not initialised from the teacher's weights (%s); usual initialisation",
                    "; ".join(problems.values()))
        return False
    select_teacher_weights(student, teacher)
    return True


class SelectionSource:
    """What weight selection copies from, per ``model.selection_order``: the teacher as it is (``leading``), or a
    copy of it rewired by importance on ``dataset`` (``importance``, :mod:`.rewiring`), built on first use only.

    ``dataset`` is the tokenized training split and ``collator`` the task's data collator.
    """

    def __init__(self, teacher: nn.Module, order: str, dataset: Any = None, collator: Any = None):
        if order not in ("importance", "leading"):
            raise ValueError(f"selection order {order!r} is not one of 'importance', 'leading'.")
        self.teacher, self.order, self.dataset, self.collator = teacher, order, dataset, collator
        self._rewired: nn.Module | None = None

    def get(self) -> nn.Module:
        """The model to select from."""
        if self.order == "leading":
            return self.teacher
        if self._rewired is None:
            from .rewiring import importance_batches, rewired_teacher

            self._rewired = rewired_teacher(self.teacher, importance_batches(self.dataset, self.collator))
        return self._rewired


def student_initialisation(model_args: Any, student_config: Any, teacher_config: Any) -> str:
    """How a student of the recipe started, in words for its model card (weights derived from the teacher's are worth
    knowing when the card is read without the recipe, also for the license)."""
    if model_args.select_teacher_weights and not bert_layout_mismatches(student_config, teacher_config):
        if getattr(model_args, "selection_order", "leading") == "importance":
            return ("the teacher's most important heads, feed-forward units and residual dimensions (weight selection "
                    "after sorting them by importance on training batches: embeddings, layers, pooler, classifier)")
        return "leading slices of the teacher's weights (weight selection: embeddings, layers, pooler, classifier)"
    if model_args.init_embeddings_from_teacher:
        return "word embeddings from the teacher's (PCA to the student's width), other weights random"
    return "random"
