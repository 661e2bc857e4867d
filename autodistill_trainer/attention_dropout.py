"""The dropout rule: attention maps that enter a loss are taken before dropout.

Transformers returns attention maps *after* attention dropout, so in train mode a student's mapped maps
would not be distributions (rows sum to 0.4-1.1 with dropout 0.5) and a KL against the teacher would
measure noise. For every mapping whose student feature is an attention map, set-up finds the module that
*computes* the map, wherever the mapping points (the attention module itself, or a parent such as BERT's
``layer.N.attention``, which passes its child's maps on as output ``1``): the deepest module under the
mapped one whose own output holds that very tensor (an ``nn.Dropout`` called as a module returns its input
in eval mode, so it is found itself). Its attention dropout (that ``nn.Dropout``, or an ``nn.Dropout`` or a
float probability in one of :data:`ATTENTION_DROPOUT_ATTRIBUTES`) is set to 0, and a train-mode forward then
checks that the mapped maps are distributions; when they are not, the mapping is refused with a message
naming the module. The caller's values come back when the criterion's hooks are removed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import module_overrides
from .criterion_setup import is_probability_tensor, model_device, output_tensors, under
from .errors import ConfigError
from .mappings import LayerMapping

logger = logging.getLogger(__name__)

# Attributes through which attention modules hold the dropout of their attention probabilities:
# an ``nn.Dropout`` (BERT, MobileBERT: ``dropout``; ALBERT: ``attention_dropout``) or a float probability
# passed to the attention function (Llama-style ``attention_dropout``).
ATTENTION_DROPOUT_ATTRIBUTES = ("dropout", "attention_dropout", "attn_dropout", "attn_pdrop", "dropout_p")

Forward = Callable[[bool], None]  # runs the student once (True: train mode), its capture hooks filling features
Feature = Callable[[LayerMapping], torch.Tensor]  # the student feature the last forward captured for a mapping


def hold_attention_dropout(module: nn.Module, where: str) -> list[tuple[Any, str]]:
    """Set the attention-probability dropout that `module` applies to 0; return the holds taken.

    `module` may be that ``nn.Dropout`` itself; otherwise its :data:`ATTENTION_DROPOUT_ATTRIBUTES` are looked
    at: an ``nn.Dropout`` gets ``p = 0``, a float probability gets 0.0. An override another criterion already
    holds is joined, so that it is restored only when the last criterion is done (see
    :mod:`autodistill_trainer.module_overrides`).
    """
    holds: list[tuple[Any, str]] = []
    if isinstance(module, nn.Dropout):  # the maps leave an nn.Dropout called as a module: that is the one
        candidates = [(module, "p")]
    else:
        candidates = []
        for attribute in ATTENTION_DROPOUT_ATTRIBUTES:
            value = getattr(module, attribute, None)
            if isinstance(value, nn.Dropout):
                candidates.append((value, "p"))
            elif isinstance(value, float):
                candidates.append((module, attribute))
    for target, name in candidates:
        current = getattr(target, name)
        if current > 0 or module_overrides.is_held(target, name):
            if module_overrides.hold(
                target, name, 0.0, module_overrides.get_attribute(name), module_overrides.set_attribute(name)
            ):
                holds.append((target, name))
                logger.debug("%s: attention dropout %s of the student set to 0 (was %s).", where, name, current)
    return holds


def attention_map_owners(
    model: nn.Module, mappings: Sequence[LayerMapping], forward: Forward, feature: Feature
) -> list[str]:
    """For each mapping, the deepest module of `model` (the mapped one or one inside it) whose own output
    holds the very tensor the mapping captures: the module that computes the maps."""
    prefixes = {mapping.student_layer for mapping in mappings}
    outputs: dict[str, list[torch.Tensor]] = {}

    def recorder(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            outputs.setdefault(name, []).extend(output_tensors(output))

        return hook

    handles = [
        module.register_forward_hook(recorder(name))
        for name, module in model.named_modules()
        if any(under(name, prefix) for prefix in prefixes)
    ]
    try:
        forward(False)
        owners = []
        for mapping in mappings:
            value = feature(mapping)
            found = [
                name for name, tensors in outputs.items()
                if under(name, mapping.student_layer) and any(t is value for t in tensors)
            ]
            owners.append(max(found, key=lambda name: (name.count("."), len(name)), default=mapping.student_layer))
        return owners
    finally:
        for handle in handles:
            handle.remove()


def switch_off_attention_dropout(
    model: nn.Module, mappings: Sequence[LayerMapping], wheres: Sequence[str], forward: Forward, feature: Feature
) -> list[tuple[Any, str]]:
    """Apply the dropout rule (module docstring) to the student `model` for `mappings` (attention maps);
    returns the holds taken, to release with :func:`module_overrides.release` when done."""
    modules = dict(model.named_modules())
    owners = attention_map_owners(model, mappings, forward, feature)
    holds: list[tuple[Any, str]] = []
    for owner, where in zip(owners, wheres):
        holds.extend(hold_attention_dropout(modules[owner], where))
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in modules.values()):
        return holds  # a train-mode forward would update running statistics of the caller's model
    device = model_device(model)
    try:  # the train-mode forward draws dropout masks: the caller's random streams are left as they were
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            forward(True)
        for mapping, owner, where in zip(mappings, owners, wheres):
            if not is_probability_tensor(feature(mapping)):
                raise ConfigError(
                    f"{where}: in train mode the student's mapped attention maps are not distributions: a dropout "
                    f"inside {owner!r} acts on them and could not be switched off. Map the module that computes "
                    "the attention probabilities (its dropout named `dropout` or `attention_dropout`), or set the "
                    "student's attention_probs_dropout_prob to 0."
                )
    except BaseException:
        for target, name in holds:
            module_overrides.release(target, name)
        raise
    return holds
