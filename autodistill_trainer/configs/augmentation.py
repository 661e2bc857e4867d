"""``data.augmentation``: TinyBERT-style copies of the training texts for the teacher to teach on (KD terms only)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError, did_you_mean
from . import checks

#: Augmentation methods: word replacement by teacher-embedding neighbours, masking, span deletion.
AUGMENTATION_METHODS = ("replace", "mask", "delete")
#: Most augmented copies of one text (each copy is a training row whose teacher outputs are cached).
MAX_COPIES = 64
MAX_TOP_K = 1000


@dataclass
class AugmentationArguments:
    """How the train split (and ``data.unlabeled_file``) is augmented; augmented rows are unlabelled (-100).

    Each copy of a text uses one method drawn (with ``seed``) from ``methods``: ``replace`` changes each
    whole-word token with probability ``word_prob`` into one of its ``top_k`` nearest neighbours (cosine) in the
    teacher's input-embedding matrix; ``mask`` changes each word with probability ``word_prob`` into the
    tokenizer's mask token; ``delete`` removes one span of 1..``max_delete_words`` words. A copy equal to its
    source text is dropped.
    """

    copies: int = field(default=4, metadata={"help": f"Augmented copies of each text (1..{MAX_COPIES})."})
    methods: list[str] = field(
        default_factory=lambda: list(AUGMENTATION_METHODS),
        metadata={"help": "Methods each copy draws one of: 'replace' (teacher-embedding neighbours), 'mask' "
                          "(the tokenizer's mask token), 'delete' (a span of words)."},
    )
    word_prob: float = field(
        default=0.3, metadata={"help": "replace/mask: probability that a word is changed, in (0, 1]."})
    top_k: int = field(
        default=10, metadata={"help": f"replace: nearest neighbours drawn from (1..{MAX_TOP_K})."})
    max_delete_words: int = field(default=3, metadata={"help": "delete: longest span of words removed (>= 1)."})
    seed: int = field(default=0, metadata={"help": "Seed: the same texts and seed give the same copies."})

    def __post_init__(self) -> None:
        where = "data.augmentation"
        checks.positive_int(self.copies, f"{where}.copies", maximum=MAX_COPIES)
        if not isinstance(self.methods, (list, tuple)) or not self.methods:
            raise ConfigError(f"{where}.methods must be a non-empty list of {list(AUGMENTATION_METHODS)}, "
                              f"got {checks.shown(self.methods)}.")
        for method in self.methods:
            if method not in AUGMENTATION_METHODS:
                raise ConfigError(f"{where}.methods: unknown method {checks.shown(method)}; use "
                                  f"{list(AUGMENTATION_METHODS)}.{did_you_mean(str(method), AUGMENTATION_METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"{where}.methods has repeated methods: {checks.shown(self.methods)}.")
        self.methods = list(self.methods)
        checks.finite_number(self.word_prob, f"{where}.word_prob", minimum=0, exclusive_minimum=True, maximum=1)
        checks.positive_int(self.top_k, f"{where}.top_k", maximum=MAX_TOP_K)
        checks.positive_int(self.max_delete_words, f"{where}.max_delete_words")
        checks.seed(self.seed, f"{where}.seed")

    @classmethod
    def from_value(cls, value: Any) -> "AugmentationArguments":
        """From a recipe mapping (unknown keys rejected with the allowed ones), or an instance as it is."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"data.augmentation must be a mapping (e.g. {{copies: 4}}) or null, "
                              f"got {checks.shown(value)}.")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in value:
            if key not in names:
                raise ConfigError(f"data.augmentation: unknown key {checks.shown(key)}; allowed: {names}."
                                  f"{did_you_mean(str(key), names)}")
        return cls(**value)
