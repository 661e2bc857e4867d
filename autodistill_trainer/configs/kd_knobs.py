"""KD knobs: distillation settings that ``search.search_space`` may search next to the architecture fields.

They are not fields of the student's config: :func:`split_knobs` takes them off an architecture before it is
built (:func:`~autodistill_trainer.builders.apply_architecture`, the search's builder), and
:func:`apply_kd_knobs` applies a trial's values to its planned stages (:func:`~autodistill_trainer.schedule.
plan_stages`):

* ``temperature`` (> 0): the softmax temperature of the regular stage's KD terms on logits.
* ``kd_weight`` (>= 0): multiplies the regular stage's KD loss weights (default ``1/n`` each for ``n``
  mappings); the student's label loss keeps weight 1. ``0`` trains the regular stage on labels only.
* ``flash_share`` (in [0, 1)): the fraction of the trial's total steps (flash stages + regular stage, as
  configured) given to the flash stages; the total is unchanged, so trials with different shares train for as
  many steps (and the labels-only baseline too). The flash steps are split over the blocks in proportion to their
  configured steps (at least 1 each); ``0`` drops the flash stages.

Every knob configures the regular stage, so a search space with knobs needs ``regular_distillation``;
``flash_share`` > 0 also needs ``flash_distillation``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from ..errors import ConfigError
from . import checks

#: Knob name -> what its values must be (for messages).
KD_KNOBS: dict[str, str] = {
    "temperature": "a number > 0 (the regular stage's KD temperature)",
    "kd_weight": "a number >= 0 (multiplies the regular stage's KD loss weights; the label loss keeps weight 1)",
    "flash_share": "a number in [0, 1) (the share of the trial's total steps given to the flash stages)",
}

__all__ = ["KD_KNOBS", "apply_kd_knobs", "check_knob_values", "check_knobs_apply", "split_knobs"]


def split_knobs(arch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(architecture fields, KD knobs)`` of one point of the search space."""
    fields = {k: v for k, v in arch.items() if k not in KD_KNOBS}
    return fields, {k: v for k, v in arch.items() if k in KD_KNOBS}


def check_knob_values(name: str, values: Sequence[Any]) -> None:
    """Raise a ConfigError naming ``search.search_space.<name>`` when a value is out of the knob's range."""
    for value in values:
        ok = checks.is_finite_number(value)
        if ok and name == "temperature":
            ok = value > 0
        elif ok and name == "kd_weight":
            ok = value >= 0
        elif ok and name == "flash_share":
            ok = 0 <= value < 1
        if not ok:
            raise ConfigError(f"'search.search_space.{name}' holds {checks.shown(value)}; each value must be "
                              f"{KD_KNOBS[name]}.")


def check_knobs_apply(search_space: Mapping[str, Any], flash: Any, regular: Any) -> None:
    """Raise a ConfigError when the search space has knobs that the configured stages cannot take."""
    knobs = [k for k in search_space if k in KD_KNOBS]
    if knobs and regular is None:
        raise ConfigError(f"search.search_space has {knobs}, which configure the regular stage: add "
                          "regular_distillation, or remove them.")
    if "flash_share" in search_space and flash is None and any(v > 0 for v in search_space["flash_share"]):
        raise ConfigError("search.search_space.flash_share > 0 needs flash_distillation (the flash stages it sizes); "
                          "add flash_distillation, or remove flash_share.")


def _flash_steps(configured: list[int], target: int) -> list[int]:
    """`target` steps split over stages in proportion to `configured` (largest remainder; at least 1 each)."""
    total = sum(configured)
    exact = [target * s / total for s in configured]
    steps = [max(1, math.floor(x)) for x in exact]
    order = sorted(range(len(configured)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    for i in order[: max(0, target - sum(steps))]:
        steps[i] += 1
    return steps


def apply_kd_knobs(stages: list, knobs: Mapping[str, Any] | None) -> list:
    """`stages` (``schedule.Stage`` objects, planned for a trial) with the trial's KD knobs applied.

    Raises:
        ConfigError: a knob needs a stage that is not planned, or ``flash_share`` leaves no step to the regular stage.
    """
    if not knobs:
        return stages
    unknown = sorted(set(knobs) - set(KD_KNOBS))
    if unknown:
        raise ConfigError(f"unknown KD knob(s) {unknown}; the knobs are {sorted(KD_KNOBS)}.")
    for name, value in knobs.items():
        check_knob_values(name, [value])
    regular = [s for s in stages if s.kind == "regular"]
    if not regular:
        raise ConfigError(f"KD knobs {sorted(knobs)} configure the regular stage, and none is planned: add "
                          "regular_distillation.")
    flash = [s for s in stages if s.kind == "flash"]
    out = []
    for stage in stages:
        if stage.kind == "regular":
            changes: dict[str, Any] = {}
            if "temperature" in knobs:
                changes["temperature"] = float(knobs["temperature"])
            if "kd_weight" in knobs:
                n = len(stage.layer_mappings)
                weights = stage.loss_weights if stage.loss_weights is not None else [1.0 / n] * n
                changes["loss_weights"] = [float(knobs["kd_weight"]) * w for w in weights]
            stage = dataclasses.replace(stage, **changes)
        out.append(stage)
    if "flash_share" not in knobs:
        return out
    share = float(knobs["flash_share"])
    if share > 0 and not flash:
        raise ConfigError("flash_share > 0 needs flash stages: add flash_distillation.")
    total = sum(s.steps for s in out)
    target = round(share * total)
    flash_steps = _flash_steps([s.steps for s in flash], target) if share > 0 else []
    regular_steps = total - sum(flash_steps)
    if regular_steps < 1:
        raise ConfigError(f"flash_share={share} leaves no step to the regular stage ({total} steps in all, "
                          f"{len(flash)} flash stages of at least 1 step); lower flash_share.")
    steps = iter(flash_steps)
    resized = []
    for stage in out:
        if stage.kind == "flash":
            if share > 0:
                resized.append(dataclasses.replace(stage, steps=next(steps)))
        else:
            resized.append(dataclasses.replace(stage, steps=regular_steps))
    return resized
