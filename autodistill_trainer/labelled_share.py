"""A fixed labelled share per training batch (``data.labelled_fraction``) for distillation on unlabelled rows.

When the distillation train set holds rows without a label (-100: ``data.unlabeled_file``, ``data.augmentation``),
a plain shuffle gives each batch the set's labelled share: with WordNet's 9,600 labelled and 56,023 unlabelled
rows, ~15% of a batch carries the label loss. :class:`LabelledShareSampler` fixes the share instead: every batch
of ``batch_size`` rows holds exactly ``k = floor(fraction * batch_size + 0.5)`` labelled rows (the product rounded,
halves up) and ``batch_size - k`` unlabelled ones.

One epoch is ``ceil(labelled / k)`` batches: every labelled row once, in a fresh permutation (the last batches
are filled with rows of the next permutation), and as many unlabelled rows, drawn from consecutive permutations
of the unlabelled rows (each used at most once per permutation). The permutations are seeded by
``(seed, epoch)``, so a run is deterministic under its seed. With lengths (``train_sampling_strategy:
group_by_length``), batches are grouped by length within megabatches of :data:`MEGABATCH` batches, as
`transformers.LengthGroupedSampler` does: in each megabatch the labelled rows and the unlabelled rows are each
sorted longest first, and batch ``j`` takes the ``j``-th slice of both, so every batch keeps its share and holds
rows of similar length. Evaluation never uses this sampler.

:class:`LabelledShareMixin` gives a `transformers.Trainer` the sampler when its ``labelled_fraction`` is set
(``StageTrainer``: every distillation stage).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from .errors import ConfigError

logger = logging.getLogger(__name__)

#: Batches per length-sorted group under ``group_by_length`` (the value of `transformers.LengthGroupedSampler`).
MEGABATCH = 50
UNLABELLED = -100

__all__ = ["LabelledShareMixin", "LabelledShareSampler", "labelled_rows_per_batch"]


def labelled_rows_per_batch(fraction: float, batch_size: int) -> int:
    """``fraction * batch_size`` rounded half up; ConfigError when that leaves no labelled or no unlabelled row."""
    k = math.floor(fraction * batch_size + 0.5)
    if not 0 < k < batch_size:
        raise ConfigError(f"data.labelled_fraction {fraction} gives {k} labelled rows in a batch of {batch_size}; "
                          f"choose a fraction that leaves at least one labelled and one unlabelled row.")
    return k


class LabelledShareSampler(torch.utils.data.Sampler[int]):
    """Row indices whose consecutive chunks of `batch_size` hold a fixed number of labelled rows (module docstring).

    Args:
        labelled: per row, whether it carries a label (its label is not -100).
        fraction: the labelled share of each batch, in (0, 1).
        batch_size: rows per batch (the training dataloader's).
        seed: seeds the permutations (with the epoch).
        lengths: optional per-row lengths: batches are grouped by length (``group_by_length``).
    """

    def __init__(self, labelled: Sequence[bool], fraction: float, batch_size: int, seed: int,
                 lengths: Optional[Sequence[int]] = None):
        mask = np.asarray(labelled, dtype=bool)
        self.labelled_rows, self.unlabelled_rows = np.flatnonzero(mask), np.flatnonzero(~mask)
        if not len(self.labelled_rows) or not len(self.unlabelled_rows):
            which = "labelled" if not len(self.labelled_rows) else "unlabelled (-100)"
            raise ConfigError(f"data.labelled_fraction needs both labelled and unlabelled rows in the distillation "
                              f"train set, and it has no {which} row; set data.unlabeled_file or data.augmentation, "
                              "or remove data.labelled_fraction.")
        self.k = labelled_rows_per_batch(fraction, batch_size)
        self.batch_size, self.seed, self.epoch = batch_size, int(seed), 0
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batches = math.ceil(len(self.labelled_rows) / self.k)

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose permutations the next iteration draws (the Trainer sets it; else it counts up)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        k, m = self.k, self.batch_size - self.k
        labelled = _draw(self.labelled_rows, self.batches * k, rng)
        unlabelled = _draw(self.unlabelled_rows, self.batches * m, rng)
        order: list[int] = []
        for start in range(0, self.batches, MEGABATCH):
            count = min(MEGABATCH, self.batches - start)
            lab, unl = labelled[start * k:(start + count) * k], unlabelled[start * m:(start + count) * m]
            if self.lengths is not None:  # longest first; a stable sort keeps the permutation's order among ties
                lab = lab[np.argsort(-self.lengths[lab], kind="stable")]
                unl = unl[np.argsort(-self.lengths[unl], kind="stable")]
            for j in range(count):
                order.extend(lab[j * k:(j + 1) * k].tolist())
                order.extend(unl[j * m:(j + 1) * m].tolist())
        return iter(order)


def _draw(rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` rows from consecutive permutations of `rows`."""
    return np.concatenate([rng.permutation(rows) for _ in range(math.ceil(count / len(rows)))])[:count]


class LabelledShareMixin:
    """A `transformers.Trainer` mixin: with ``labelled_fraction`` set, training batches keep that labelled share
    (:class:`LabelledShareSampler`, grouped by length under ``train_sampling_strategy: group_by_length``)."""

    labelled_fraction: Optional[float] = None  #: ``data.labelled_fraction``; None: the Trainer's own sampler

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.labelled_fraction is None or dataset is None:
            return super()._get_train_sampler(train_dataset)
        labels = np.asarray(dataset["labels"] if "labels" in dataset.column_names else dataset["label"])
        if labels.ndim != 1:
            raise ConfigError("data.labelled_fraction applies to one label per row (text classification); remove it.")
        lengths = None
        if self.args.train_sampling_strategy == "group_by_length":
            lengths = [len(ids) for ids in dataset["input_ids"]]
        sampler = LabelledShareSampler(labels != UNLABELLED, self.labelled_fraction, self._train_batch_size,
                                       self.args.seed, lengths)
        logger.info("Training batches: %d labelled + %d unlabelled rows each (data.labelled_fraction %g)%s.",
                    sampler.k, sampler.batch_size - sampler.k, self.labelled_fraction,
                    ", grouped by length" if lengths is not None else "")
        return sampler
