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
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import ConfigError, did_you_mean
from ..losses import get_loss_class
from ..mappings import LayerMapping, parse_layer_mappings

DEFAULT_FLASH_STEPS = 500
DEFAULT_REGULAR_STEPS = 25000
AUTO = "auto"


@dataclass
class KnowledgeTransferStage:
    """One flash-distillation stage: train `block_prefixes` for `train_steps` on its own criterion."""

    index: int
    block_prefixes: list[str]
    layer_mappings: list[LayerMapping]
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
            ``'auto'`` derives blocks and mappings from the models (:func:`~autodistill_trainer.auto_mappings.auto_flash_config`).
        layer_mappings: one list of mappings per stage, or ``'auto'``.
        loss_types: one list of loss names per stage (default ``MSE`` for every mapping).
        loss_weights: one list of weights per stage (default equal weights).
        train_steps: steps per stage (a list, or one int for every stage); default 500.
        add_origin_loss: per stage (list or one bool); default False.
        soft_freeze: learning-rate multiplier for blocks already transferred, which keep training
            (MobileBERT's official recipe uses 0.1). Default ``None``: earlier blocks are frozen and
            each stage trains only its block and its feature matchers.
        learning_rate: learning rate of the flash stages (default: the TrainingArguments').
        temperature: temperature of KL/CE on logits.
    """

    block_names: Any = AUTO
    layer_mappings: Any = AUTO
    loss_types: Any = None
    loss_weights: Any = None
    train_steps: Any = DEFAULT_FLASH_STEPS
    add_origin_loss: Any = False
    soft_freeze: float | None = None
    learning_rate: float | None = None
    temperature: float = 1.0

    @property
    def is_auto(self) -> bool:
        return self.layer_mappings == AUTO or self.block_names == AUTO

    def stages(self) -> list[KnowledgeTransferStage]:
        """Validated stages (``auto`` must be resolved first, see `resolve_auto`)."""
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
                got = len(values) if isinstance(values, (list, tuple)) else repr(values)
                raise ConfigError(
                    f"flash_distillation.{key} has {got} entries but block_names has {n}: give one entry per block."
                )
        if self.soft_freeze is not None and not 0 <= float(self.soft_freeze) <= 1:
            raise ConfigError(f"flash_distillation.soft_freeze must be in [0, 1] (MobileBERT uses 0.1), got {self.soft_freeze}.")
        stages = []
        for i in range(n):
            where = f"flash_distillation.layer_mappings_for_knowledge_transfer[{i}]"
            block_mappings = parse_layer_mappings(mappings[i], where)
            types = _stage_list(loss_types[i], len(block_mappings), f"flash_distillation.loss_types[{i}]", "MSE")
            for t in types:
                get_loss_class(t)
            weights = loss_weights[i]
            if weights is not None:
                weights = [float(w) for w in _stage_list(weights, len(block_mappings), f"flash_distillation.loss_weights[{i}]", None)]
            prefixes = [blocks[i]] if isinstance(blocks[i], str) else list(blocks[i])
            if not prefixes or not all(isinstance(p, str) and p for p in prefixes):
                raise ConfigError(f"flash_distillation.block_names[{i}] must be a module name or a list of them, got {blocks[i]!r}.")
            stages.append(
                KnowledgeTransferStage(i, prefixes, block_mappings, types, weights, _positive_int(steps[i], f"flash_distillation.train_steps[{i}]"), bool(origin[i]))
            )
        return stages


@dataclass
class RegularDistillationConfig:
    """Regular distillation: the whole student on the teacher's logits (plus its own loss).

    Args:
        layer_mappings: e.g. ``[('classifier', 'classifier')]`` for sequence classification,
            ``[('cls', '0', 'cls', '0')]`` for MobileBertForPreTraining's MLM logits, or ``'auto'``
            (``[('', 'logits', '', 'logits')]``: the models' output logits).
        loss_types: default ``['KL']``.
        loss_weights: default equal weights.
        add_origin_loss: add the student's own loss (default True).
        train_steps: default 25000.
        learning_rate: learning rate of this phase (default: the TrainingArguments').
        temperature: temperature of KL/CE on logits (loss scaled by T^2).
    """

    layer_mappings: Any = AUTO
    loss_types: Any = None
    loss_weights: Any = None
    add_origin_loss: bool = True
    train_steps: int = DEFAULT_REGULAR_STEPS
    learning_rate: float | None = None
    temperature: float = 1.0

    def mappings(self) -> list[LayerMapping]:
        raw = [("", "logits", "", "logits")] if self.layer_mappings == AUTO else self.layer_mappings
        return parse_layer_mappings(raw, "regular_distillation.layer_mappings_for_knowledge_transfer")

    def validated(self) -> "RegularDistillationConfig":
        mappings = self.mappings()
        types = _stage_list(self.loss_types, len(mappings), "regular_distillation.loss_types", "KL")
        for t in types:
            get_loss_class(t)
        if self.loss_weights is not None:
            _stage_list(self.loss_weights, len(mappings), "regular_distillation.loss_weights", None)
        _positive_int(self.train_steps, "regular_distillation.train_steps")
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
    nested_regular = parse_regular_distillation(value.pop("regular_distillation")) if "regular_distillation" in value else None
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
                        f"(one regular stage), got {items!r}."
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
    raise ConfigError(f"{key} must be a list (one entry per block), got {value!r}.")


def _broadcast(value: Any, n: int, key: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(f"{key} has {len(value)} entries but block_names has {n}: give one per block or a single value.")
        return list(value)
    return [value] * n


def _stage_list(value: Any, n: int, key: str, default: Any) -> list:
    if value is None:
        return [default] * n
    if isinstance(value, (str, int, float)):
        value = [value]
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise ConfigError(f"{key} has {len(value) if isinstance(value, (list, tuple)) else value!r} entries but there are {n} mappings: give one per mapping.")
    return list(value)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer number of steps, got {value!r}.")
    return value
