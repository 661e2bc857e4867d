"""``search.strategy`` and ``search.supernet``: the weight-sharing (supernet) search strategy's settings.

``search.strategy`` is ``plain`` (every candidate trained for the full budget), ``multi_fidelity`` (successive
halving, ``search.multi_fidelity``) or ``supernet`` (one elastic MobileBERT supernet distilled once; candidates are
evaluated with inherited weights, ``search.supernet``). Default: ``multi_fidelity`` when ``search.multi_fidelity`` is
given, else ``plain``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any, Literal, Mapping

from ..errors import ConfigError, did_you_mean
from . import checks

__all__ = ["MAX_SUPERNET_CANDIDATES", "SEARCH_STRATEGIES", "SUPERNET_FIELDS", "SUPERNET_STEPS_MULTIPLE",
           "SupernetConfig", "resolve_strategy"]

SEARCH_STRATEGIES = ("plain", "multi_fidelity", "supernet")
#: Default cap on the sub-networks evaluated with inherited weights (``num_candidates`` default:
#: ``min(space size, MAX_SUPERNET_CANDIDATES)``).
MAX_SUPERNET_CANDIDATES = 1000
#: Default supernet training steps: this multiple of the regular stage's ``train_steps`` (each step trains
#: ``2 + num_random`` sub-networks).
SUPERNET_STEPS_MULTIPLE = 2
#: The MobileBERT fields a supernet can make elastic (``supernet.space.ELASTIC_FIELDS``).
SUPERNET_FIELDS = ("hidden_size", "intra_bottleneck_size", "num_attention_heads", "intermediate_size",
                   "num_feedforward_networks", "num_hidden_layers")


@dataclasses.dataclass
class SupernetConfig:
    """``search.supernet``: the supernet strategy (``search.strategy: supernet``).

    Args:
        num_candidates: sub-networks evaluated with inherited weights (proxies); default: the whole search space
            up to :data:`MAX_SUPERNET_CANDIDATES`.
        finalists: proxies that get their own short distillation and a final evaluation (the only rows that make
            the front, the best architecture and ``best_model/``).
        train_steps: supernet training steps; default :data:`SUPERNET_STEPS_MULTIPLE` x the regular stage's steps.
        num_random: random sub-networks per sandwich step (besides the largest and the smallest).
        inplace_distillation: the smaller sub-networks' KD target: ``teacher`` (the teacher's logits) or
            ``largest`` (the largest sub-network's detached logits).
        finalist_budget: fraction of the regular stage's steps each finalist trains, in (0, 1].
        eval_samples: proxy evaluation on the first ``eval_samples`` validation examples (default: all of them).
        latency_measurements: architectures whose latency is measured before the proxies, to fit the latency model
            (proxy latencies are predicted; finalists' are measured).

    Raises:
        ConfigError: naming the field, when a value has the wrong type or is out of range.
    """

    num_candidates: int | None = field(
        default=None, metadata={"help": "Sub-networks evaluated with inherited weights (default: the whole search "
                                        f"space, at most {MAX_SUPERNET_CANDIDATES})."})
    finalists: int = field(
        default=3, metadata={"help": "Proxies trained on their own and evaluated again (the front's candidates)."})
    train_steps: int | None = field(
        default=None, metadata={"help": f"Supernet training steps (default: {SUPERNET_STEPS_MULTIPLE} x "
                                        "regular_distillation.train_steps)."})
    num_random: int = field(
        default=2, metadata={"help": "Random sub-networks per step, besides the largest and the smallest (>= 0)."})
    inplace_distillation: Literal["teacher", "largest"] = field(
        default="teacher", metadata={"help": "KD target of the sub-networks: 'teacher' logits or the 'largest' "
                                             "sub-network's detached logits."})
    finalist_budget: float = field(
        default=1.0, metadata={"help": "Fraction of regular_distillation.train_steps each finalist trains, (0, 1]."})
    eval_samples: int | None = field(
        default=None, metadata={"help": "Proxy evaluation on the first N validation examples (default: all)."})
    latency_measurements: int = field(
        default=8, metadata={"help": "Architectures measured to fit the latency model before the proxies (>= 2)."})

    def __post_init__(self) -> None:
        checks.positive_int(self.num_candidates, "'search.supernet.num_candidates'", optional=True,
                            maximum=100_000)
        checks.positive_int(self.finalists, "'search.supernet.finalists'", maximum=1000)
        checks.positive_int(self.train_steps, "'search.supernet.train_steps'", optional=True)
        checks.integer(self.num_random, "'search.supernet.num_random'", minimum=0, maximum=64, hint=" (e.g. 2)")
        if self.inplace_distillation not in ("teacher", "largest"):
            raise ConfigError(f"'search.supernet.inplace_distillation' is {checks.shown(self.inplace_distillation)}; "
                              "choose 'teacher' or 'largest'.")
        checks.finite_number(self.finalist_budget, "'search.supernet.finalist_budget'", minimum=0,
                             exclusive_minimum=True, maximum=1)
        checks.positive_int(self.eval_samples, "'search.supernet.eval_samples'", optional=True)
        checks.integer(self.latency_measurements, "'search.supernet.latency_measurements'", minimum=2,
                       maximum=1000, hint=" (e.g. 8)")

    def candidates(self, space_size: int) -> int:
        """Proxies to evaluate: ``num_candidates``, or the space up to :data:`MAX_SUPERNET_CANDIDATES`; never more
        than the space holds."""
        wanted = self.num_candidates if self.num_candidates is not None else MAX_SUPERNET_CANDIDATES
        return min(wanted, space_size)

    def supernet_steps(self, regular_steps: int) -> int:
        """Supernet training steps: ``train_steps``, else :data:`SUPERNET_STEPS_MULTIPLE` x ``regular_steps``."""
        return self.train_steps if self.train_steps is not None else SUPERNET_STEPS_MULTIPLE * int(regular_steps)

    def finalist_steps(self, regular_steps: int) -> int:
        """Regular-distillation steps of each finalist: ``ceil(finalist_budget * regular_steps)``."""
        return max(1, math.ceil(self.finalist_budget * int(regular_steps) - 1e-9))

    @classmethod
    def parse(cls, value: Any) -> "SupernetConfig | None":
        """``None``, an instance, or the recipe's mapping ``{num_candidates: ..., finalists: ..., ...}``."""
        return checks.section(cls, value, "search.supernet", "{num_candidates: 1000, finalists: 3, ...}")


def resolve_strategy(strategy: Any, multi_fidelity: Any, supernet: Any, search_space: Mapping[str, Any]) -> str:
    """The search strategy, checked against the sections given (a contradiction is an error).

    Raises:
        ConfigError: an unknown strategy, a section of another strategy, or a supernet search space with
            fields that cannot be elastic.
    """
    if strategy is None:
        if supernet is not None and multi_fidelity is not None:
            raise ConfigError("'search.supernet' and 'search.multi_fidelity' are both given: set search.strategy to "
                              "'supernet' or 'multi_fidelity' and remove the other section.")
        strategy = "supernet" if supernet is not None else "multi_fidelity" if multi_fidelity is not None else "plain"
    if not isinstance(strategy, str) or strategy not in SEARCH_STRATEGIES:
        raise ConfigError(f"'search.strategy' is {checks.shown(strategy)}; choose one of {list(SEARCH_STRATEGIES)}."
                          + did_you_mean(str(strategy), SEARCH_STRATEGIES))
    if multi_fidelity is not None and strategy != "multi_fidelity":
        raise ConfigError(f"'search.multi_fidelity' is given but search.strategy is {strategy!r}: remove "
                          "search.multi_fidelity or set search.strategy: multi_fidelity.")
    if supernet is not None and strategy != "supernet":
        raise ConfigError(f"'search.supernet' is given but search.strategy is {strategy!r}: remove search.supernet "
                          "or set search.strategy: supernet.")
    if strategy == "supernet":
        for name in search_space:
            if name not in SUPERNET_FIELDS:
                raise ConfigError(f"'search.search_space.{name}' cannot be searched with search.strategy: supernet "
                                  f"(a supernet nests only {list(SUPERNET_FIELDS)}); remove it or use another "
                                  "strategy.")
    return strategy


#: The student class a supernet strategy can build (its extracted students are this class).
SUPERNET_STUDENT_CLASS = "MobileBertForSequenceClassification"


def check_supernet_recipe(strategy: str, student_class: str | None, regular_distillation: Any,
                          flash_distillation: Any = None) -> None:
    """Refuse, before any training, a supernet search the built-in (OOB) pipeline cannot run.

    A ``flash_distillation`` is run on the supernet, block by block, before its regular (sandwich) stage
    (:func:`~autodistill_trainer.supernet.flash.train_supernet_flash`): the automatic criterion only
    (``block_names`` and ``layer_mappings_for_knowledge_transfer`` ``auto``, attention KL + matched layer-output MSE),
    one ``train_steps`` per supernet layer, the flash stage's ``learning_rate``.

    Raises:
        ConfigError: a student other than :data:`SUPERNET_STUDENT_CLASS`, no ``regular_distillation`` (the
            supernet and the finalists are trained with it), or a ``flash_distillation`` key the supernet's flash
            stages do not apply.
    """
    if strategy != "supernet":
        return
    if student_class != SUPERNET_STUDENT_CLASS:
        raise ConfigError(f"search.strategy: supernet needs model.student_class: {SUPERNET_STUDENT_CLASS} (the elastic "
                          f"supernet is a MobileBERT classifier), got {checks.shown(student_class)}; change the "
                          "student class or the strategy.")
    if regular_distillation is None:
        raise ConfigError("search.strategy: supernet trains the supernet and its finalists with regular_distillation, "
                          "and none is given: add auto_distillation.regular_distillation.")
    if flash_distillation is not None:
        check_supernet_flash(flash_distillation)


def check_supernet_flash(flash: Any) -> None:
    """Refuse a ``flash_distillation`` whose settings the supernet's flash stages would not apply (see
    :func:`check_supernet_recipe`)."""
    where = "auto_distillation.flash_distillation"
    fixed = "with search.strategy: supernet, the flash stages distil every supernet layer with the automatic criterion"
    if flash.block_names != "auto" or flash.layer_mappings != "auto":
        key = "block_names" if flash.block_names != "auto" else "layer_mappings_for_knowledge_transfer"
        raise ConfigError(f"{where}.{key}: {fixed} (attention KL + matched layer-output MSE); set it to auto or "
                          "remove it.")
    for key, default in (("loss_types", None), ("loss_weights", None), ("soft_freeze", None),
                         ("add_origin_loss", False)):
        if getattr(flash, key) != default:
            raise ConfigError(f"{where}.{key}: {fixed}, which does not take {key}; remove it (got "
                              f"{checks.shown(getattr(flash, key))}).")
    if not isinstance(flash.train_steps, int) or isinstance(flash.train_steps, bool):
        raise ConfigError(f"{where}.train_steps: {fixed}; give one positive int (steps per supernet layer), got "
                          f"{checks.shown(flash.train_steps)}.")
