"""Typed configs of the two distillation phases, parsed from every form the design writes them in.

Flash distillation (MobileBERT's progressive knowledge transfer) accepts

* the design's Trainer-usage dict ``{'knowledge_transfer': {'block_names', 'layer_mappings_for_knowledge_transfer',
  'loss_types', 'loss_weights', 'train_steps'}}`` (optionally with ``'regular_distillation'`` nested beside
  ``'knowledge_transfer'``, as in the design's ``autodistillation_config``);
* the flat YAML form of the design's AutoDistillation config (the same keys at top level);
* a :class:`FlashDistillationConfig`.

Regular distillation accepts the nested dict form (``[[mapping, ...]]``, ``[['KL']]``, ``[True]``, ``[25000]``),
the flat YAML form (``[mapping, ...]``, ``['KL']``, ``True``, ``25000``) and a :class:`RegularDistillationConfig`.

Defaults where the design's OOB config leaves values out follow its advanced example: equal loss weights,
500 steps per block, 25000 regular steps. Flash blocks add no origin loss unless asked; regular
distillation adds it by default (the design's examples all set ``add_origin_loss: True``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Union

from ..errors import ConfigError, did_you_mean
from . import checks

if TYPE_CHECKING:  # mappings imports torch (features); configs stay importable without it
    from ..mappings import LayerMapping

DEFAULT_FLASH_STEPS = 500
DEFAULT_REGULAR_STEPS = 25000
AUTO = "auto"

#: One layer mapping as written: ``(student, teacher)``, ``(student, s_proc, teacher, t_proc)``,
#: ``[(student, s_proc), (teacher, t_proc)]``, a dict with ``student_layer``/``teacher_layer`` keys, or a LayerMapping.
MappingSpec = Union["LayerMapping", tuple, list, dict]


#: Losses shipped in :mod:`autodistill_trainer.losses` (upper case); other names are looked up in its registry.
BUILTIN_LOSSES = frozenset({"MSE", "L1", "COS", "KL", "CE"})


def _check_loss_names(value: Any) -> None:
    """Every loss name (nested lists allowed) is registered; the registry lives with the torch losses, imported only
    for names that are not built in (custom losses registered with ``@register_loss``)."""
    for name in _flatten(value):
        if not (isinstance(name, str) and name.upper() in BUILTIN_LOSSES):
            from ..losses import get_loss_class

            get_loss_class(name)


def _flatten(value: Any):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    elif value is not None:
        yield value


def _check_common(config: Any, phase: str) -> None:
    """The fields both phases share: steps, origin loss, learning rate, temperature, loss names and weights."""
    steps = config.train_steps
    if isinstance(steps, (list, tuple)) and not steps:
        raise ConfigError(f"{phase}.train_steps is an empty list; give a positive number of steps (or one per block).")
    if isinstance(steps, (list, tuple)):
        for i, item in enumerate(steps):
            checks.positive_int(item, f"{phase}.train_steps[{i}]", what="integer number of steps")
    else:
        checks.positive_int(steps, f"{phase}.train_steps", what="integer number of steps (or a list of them)")
    origin = config.add_origin_loss
    if not all(isinstance(o, bool) for o in (origin if isinstance(origin, (list, tuple)) else [origin])):
        raise ConfigError(f"{phase}.add_origin_loss must be true/false (or a list of them per block), "
                          f"got {checks.shown(origin)}.")
    checks.positive_number(config.learning_rate, f"{phase}.learning_rate", optional=True)
    checks.positive_number(config.temperature, f"{phase}.temperature")
    _check_loss_names(config.loss_types)
    for weight in _flatten(config.loss_weights):
        checks.non_negative_number(weight, f"{phase}.loss_weights entries", hint=" (a weight per mapping)")


@dataclass
class KnowledgeTransferStage:
    """One flash-distillation stage: train `block_prefixes` for `train_steps` on its own criterion.

    Args:
        index: position of the stage (0-based).
        block_prefixes: module prefixes trained in this stage.
        layer_mappings: the stage's feature mappings.
        loss_types: one loss name per mapping.
        loss_weights: one weight per mapping, or None for equal weights.
        train_steps: optimisation steps of the stage.
        add_origin_loss: also add the student's own loss.
    """

    index: int
    block_prefixes: list[str]
    layer_mappings: list["LayerMapping"]
    loss_types: list[str]
    loss_weights: list[float] | None
    train_steps: int
    add_origin_loss: bool = False

    @property
    def name(self) -> str:
        return "+".join(self.block_prefixes)


@dataclass
class FlashDistillationConfig:
    """Progressive knowledge transfer, block by block.

    Args:
        block_names: one entry per stage: a module prefix (``'mobilebert.encoder.layer.0'``) or a list of
            prefixes trained together (e.g. the embeddings with the first block). Matching is exact:
            ``layer.1`` means the module ``layer.1`` and its children, never ``layer.10``.
            ``'auto'`` derives blocks and mappings from the models
            (:func:`~autodistill_trainer.auto_mappings.auto_flash_config`): one block per student layer.
        layer_mappings: one list of mappings per stage, or ``'auto'``.
        loss_types: one list of loss names per stage (default ``MSE`` for every mapping).
        loss_weights: one list of weights per stage (default equal weights).
        train_steps: steps per stage (a list, or one int for every stage); default 500.
        add_origin_loss: per stage (list or one bool); default False.
        soft_freeze: learning-rate multiplier in [0, 1] for blocks already transferred, which keep training
            (MobileBERT's official recipe uses 0.1). Default ``None``: earlier blocks are frozen and
            each stage trains only its block and its feature matchers.
        learning_rate: learning rate of the flash stages (default: the TrainingArguments').
        temperature: temperature of KL/CE on logits (> 0).

    Raises:
        ConfigError: naming the field, when a value is out of range or the per-stage lists disagree.
    """

    block_names: Literal["auto"] | list[str | list[str]] = field(
        default=AUTO, metadata={"help": "'auto' or one module prefix (or list of prefixes) per stage."})
    layer_mappings: Literal["auto"] | list[list[MappingSpec]] = field(
        default=AUTO, metadata={"help": "'auto' or one list of layer mappings per stage."})
    loss_types: list[list[str] | str | None] | None = field(
        default=None, metadata={"help": "One list of loss names per stage (default MSE for every mapping)."})
    loss_weights: list[list[float] | None] | None = field(
        default=None, metadata={"help": "One list of non-negative weights per stage (default equal weights)."})
    train_steps: int | list[int] = field(
        default=DEFAULT_FLASH_STEPS, metadata={"help": "Steps per stage: one positive int, or one per stage."})
    add_origin_loss: bool | list[bool] = field(
        default=False, metadata={"help": "Add the student's own loss: one bool, or one per stage."})
    soft_freeze: float | None = field(
        default=None, metadata={"help": "LR multiplier in [0, 1] of blocks already transferred; null freezes them."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the flash stages (default: the TrainingArguments')."})
    temperature: float = field(default=1.0, metadata={"help": "Temperature of KL/CE losses on logits (> 0)."})

    def __post_init__(self) -> None:
        _check_common(self, "flash_distillation")
        checks.probability(
            self.soft_freeze, "flash_distillation.soft_freeze", optional=True,
            hint=" (learning-rate multiplier of blocks already transferred; MobileBERT uses 0.1; null freezes them)",
        )
        if not self.is_auto:
            self.stages()

    @property
    def is_auto(self) -> bool:
        return self.layer_mappings == AUTO or self.block_names == AUTO

    def check_num_blocks(self, n: int, why: str) -> None:
        """Per-stage lists (train_steps, add_origin_loss, loss_types, loss_weights) have `n` entries (`why`)."""
        for key in ("train_steps", "add_origin_loss", "loss_types", "loss_weights"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)) and len(value) != n:
                raise ConfigError(
                    f"flash_distillation.{key} has {len(value)} entries but there are {n} blocks ({why}): "
                    "give one entry per block, or one value for every block."
                )

    def stages(self) -> list[KnowledgeTransferStage]:
        """Validated stages (``'auto'`` must be resolved first, see
        :func:`~autodistill_trainer.auto_mappings.auto_flash_config`)."""
        from ..mappings import parse_layer_mappings

        if self.is_auto:
            raise ConfigError("flash_distillation: 'auto' mappings must be resolved against the models first.")
        blocks = _as_list(self.block_names, "flash_distillation.block_names")
        n = len(blocks)
        if n == 0:
            raise ConfigError("flash_distillation.block_names is empty: give at least one block.")
        mappings = _as_list(self.layer_mappings, "flash_distillation.layer_mappings_for_knowledge_transfer")
        loss_types = self.loss_types if self.loss_types is not None else [None] * n
        loss_weights = self.loss_weights if self.loss_weights is not None else [None] * n
        steps = _broadcast(self.train_steps, n, "flash_distillation.train_steps")
        origin = _broadcast(self.add_origin_loss, n, "flash_distillation.add_origin_loss")
        for key, values in (
            ("layer_mappings_for_knowledge_transfer", mappings),
            ("loss_types", loss_types),
            ("loss_weights", loss_weights),
        ):
            if not isinstance(values, (list, tuple)) or len(values) != n:
                got = len(values) if isinstance(values, (list, tuple)) else checks.shown(values)
                raise ConfigError(
                    f"flash_distillation.{key} has {got} entries but block_names has {n}: give one entry per block."
                )
        stages = []
        for i in range(n):
            where = f"flash_distillation.layer_mappings_for_knowledge_transfer[{i}]"
            block_mappings = parse_layer_mappings(mappings[i], where)
            types = _stage_list(loss_types[i], len(block_mappings), f"flash_distillation.loss_types[{i}]", "MSE")
            weights = loss_weights[i]
            if weights is not None:
                weights = [float(w) for w in _stage_list(
                    weights, len(block_mappings), f"flash_distillation.loss_weights[{i}]", None)]
            prefixes = [blocks[i]] if isinstance(blocks[i], str) else list(blocks[i])
            if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
                raise ConfigError(f"flash_distillation.block_names[{i}] must be a module name or a list of them, "
                                  f"got {checks.shown(blocks[i])}.")
            stages.append(KnowledgeTransferStage(i, prefixes, block_mappings, types, weights, steps[i], origin[i]))
        return stages


@dataclass
class RegularDistillationConfig:
    """Regular distillation: the whole student on the teacher's logits (plus its own loss).

    Args:
        layer_mappings: e.g. ``[('classifier', 'classifier')]`` for sequence classification,
            ``[('cls', '0', 'cls', '0')]`` for MobileBertForPreTraining's MLM logits, or ``'auto'``
            (``[('', 'logits', '', 'logits')]``: the models' output logits).
        loss_types: one loss name per mapping; default ``['KL']``.
        loss_weights: one non-negative weight per mapping; default equal weights.
        add_origin_loss: add the student's own loss (default True).
        train_steps: positive number of steps; default 25000.
        learning_rate: learning rate of this phase (default: the TrainingArguments').
        temperature: temperature of KL/CE on logits (loss scaled by T^2), > 0.

    Raises:
        ConfigError: naming the field, when a value is out of range or the lists disagree with the mappings.
    """

    layer_mappings: Literal["auto"] | list[MappingSpec] = field(
        default=AUTO, metadata={"help": "Layer mappings of the phase, or 'auto' (the models' output logits)."})
    loss_types: list[str] | None = field(default=None, metadata={"help": "One loss name per mapping (default KL)."})
    loss_weights: list[float] | None = field(
        default=None, metadata={"help": "One non-negative weight per mapping (default equal weights)."})
    add_origin_loss: bool = field(default=True, metadata={"help": "Add the student's own (label) loss."})
    train_steps: int = field(default=DEFAULT_REGULAR_STEPS, metadata={"help": "Steps of the phase (positive)."})
    learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the phase (default: the TrainingArguments')."})
    temperature: float = field(default=1.0, metadata={"help": "Temperature of KL/CE on logits (> 0)."})

    def __post_init__(self) -> None:
        if isinstance(self.train_steps, (list, tuple)):
            raise ConfigError(f"regular_distillation.train_steps must be a positive integer number of steps (or a "
                              f"list of them), got {checks.shown(self.train_steps)}.")
        _check_common(self, "regular_distillation")
        mappings = self.mappings()
        _stage_list(self.loss_types, len(mappings), "regular_distillation.loss_types", "KL")
        if self.loss_weights is not None:
            _stage_list(self.loss_weights, len(mappings), "regular_distillation.loss_weights", None)

    def mappings(self) -> list["LayerMapping"]:
        from ..mappings import parse_layer_mappings

        raw = [("", "logits", "", "logits")] if self.layer_mappings == AUTO else self.layer_mappings
        return parse_layer_mappings(raw, "regular_distillation.layer_mappings_for_knowledge_transfer")

    def validated(self) -> "RegularDistillationConfig":
        """A copy with the default loss types filled in (one per mapping)."""
        types = _stage_list(self.loss_types, len(self.mappings()), "regular_distillation.loss_types", "KL")
        return dataclasses.replace(self, loss_types=types)


_FLASH_KEYS = {
    "block_names", "layer_mappings_for_knowledge_transfer", "layer_mappings", "loss_types", "loss_weights",
    "train_steps", "add_origin_loss", "soft_freeze", "learning_rate", "temperature",
}
_REGULAR_KEYS = {
    "layer_mappings_for_knowledge_transfer", "layer_mappings", "loss_types", "loss_weights", "add_origin_loss",
    "train_steps", "learning_rate", "temperature",
}


def parse_flash_distillation(value: Any) -> tuple[FlashDistillationConfig | None, RegularDistillationConfig | None]:
    """Parse a flash-distillation config; also returns a regular config nested inside it, if any."""
    if value is None:
        return None, None
    if isinstance(value, FlashDistillationConfig):
        return value, None
    if not isinstance(value, Mapping):
        raise ConfigError(f"flash_distillation must be a mapping, got {type(value).__name__}.")
    value = dict(value)
    nested_regular = None
    if "regular_distillation" in value:
        nested_regular = parse_regular_distillation(value.pop("regular_distillation"))
    if "knowledge_transfer" in value:
        extra = set(value) - {"knowledge_transfer"}
        if extra:
            raise ConfigError(
                f"flash_distillation: unknown key {sorted(extra)[0]!r} beside 'knowledge_transfer' "
                "(expected only 'knowledge_transfer' and 'regular_distillation')."
            )
        value = dict(value["knowledge_transfer"] or {})
        where = "flash_distillation.knowledge_transfer"
    else:
        where = "flash_distillation"
    _check_keys(value, _FLASH_KEYS, where)
    kwargs = _rename_mappings(value, where)
    return FlashDistillationConfig(**kwargs), nested_regular


def parse_regular_distillation(value: Any) -> RegularDistillationConfig | None:
    """Parse a regular-distillation config in the nested (one-element lists) or flat form."""
    if value is None:
        return None
    if isinstance(value, RegularDistillationConfig):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"regular_distillation must be a mapping, got {type(value).__name__}.")
    value = dict(value)
    _check_keys(value, _REGULAR_KEYS, "regular_distillation")
    kwargs = _rename_mappings(value, "regular_distillation")
    loss_types = kwargs.get("loss_types")
    nested = isinstance(loss_types, (list, tuple)) and loss_types and isinstance(loss_types[0], (list, tuple))
    if nested:
        for key in ("layer_mappings", "loss_types", "loss_weights", "add_origin_loss", "train_steps"):
            if key in kwargs and kwargs[key] is not None:
                items = kwargs[key]
                if not isinstance(items, (list, tuple)) or len(items) != 1:
                    raise ConfigError(
                        f"regular_distillation.{key}: in the nested form every key is a one-element list "
                        f"(one regular stage), got {checks.shown(items)}."
                    )
                kwargs[key] = items[0]
    return RegularDistillationConfig(**kwargs)


def parse_distillation(
    flash_distillation: Any = None, regular_distillation: Any = None
) -> tuple[FlashDistillationConfig | None, RegularDistillationConfig | None]:
    """Parse both phases, accepting a regular config nested inside the flash one (design's Trainer usage)."""
    flash, nested_regular = parse_flash_distillation(flash_distillation)
    regular = parse_regular_distillation(regular_distillation)
    if nested_regular is not None and regular is not None:
        raise ConfigError("regular_distillation is given twice: inside flash_distillation and beside it; keep one.")
    return flash, regular or nested_regular


def _check_keys(value: Mapping[str, Any], allowed: set[str], where: str) -> None:
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}.{did_you_mean(str(key), sorted(allowed))}")


def _rename_mappings(value: dict[str, Any], where: str) -> dict[str, Any]:
    if "layer_mappings_for_knowledge_transfer" in value and "layer_mappings" in value:
        raise ConfigError(f"{where}: give layer_mappings_for_knowledge_transfer or layer_mappings, not both.")
    if "layer_mappings_for_knowledge_transfer" in value:
        value["layer_mappings"] = value.pop("layer_mappings_for_knowledge_transfer")
    return value


def _as_list(value: Any, key: str) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"{key} must be a list (one entry per block), got {checks.shown(value)}.")


def _broadcast(value: Any, n: int, key: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(
                f"{key} has {len(value)} entries but block_names has {n}: give one per block or a single value."
            )
        return list(value)
    return [value] * n


def _stage_list(value: Any, n: int, key: str, default: Any) -> list:
    if value is None:
        return [default] * n
    if isinstance(value, (str, int, float)):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) != n:
        got = len(value) if isinstance(value, (list, tuple)) else checks.shown(value)
        raise ConfigError(f"{key} has {got} entries but there are {n} mappings: give one per mapping.")
    return list(value)
