"""TinyBERT-style data augmentation: more text for the teacher to teach on (``data.augmentation``).

Each training text (and each ``data.unlabeled_file`` text) gets ``copies`` augmented copies; each copy uses one
method drawn from ``methods``:

* ``replace``: each word that is one whole-word token of the teacher's vocabulary (not a ``##`` continuation
  piece, letters only) is, with probability ``word_prob``, replaced by one of its ``top_k`` nearest neighbours by
  cosine similarity in the teacher's input-embedding matrix (TinyBERT uses BERT's predictions and GloVe
  neighbours; the embedding space of the teacher we distil is the one at hand);
* ``mask``: each word is, with probability ``word_prob``, replaced by the tokenizer's mask token;
* ``delete``: one span of 1..``max_delete_words`` consecutive words is removed (never every word).

A copy equal to its source is dropped. Copies are deterministic: each one's random stream is seeded by
``(seed, copy number, text)``, so the same texts and settings always give the same copies. Augmented rows are
unlabelled (label -100): they feed the KD terms only (TinyBERT's rule), never the label loss, the teacher's
fine-tuning, the labels-only baseline or the validation split. Their dataset's fingerprint is a hash of the
source's fingerprint, the settings, the tokenizer and the teacher's embedding matrix, so the teacher-output cache
computes their teacher outputs once and reruns read them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import re
from typing import Any, Iterable, Optional

import torch
from datasets import Dataset
from datasets.fingerprint import Hasher

from ..configs.augmentation import AugmentationArguments
from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["TeacherNeighbours", "TextAugmenter", "augment_dataset"]

# Bump when the augmentation's output changes for the same inputs, so stale cached copies are not reused.
_AUGMENTATION_VERSION = "1"
_WORD = re.compile(r"(\w+)")
_NEIGHBOUR_CHUNK = 1024


class TeacherNeighbours:
    """Nearest whole-word neighbours (cosine) of whole-word tokens in a teacher's input-embedding matrix.

    Args:
        embeddings: the ``(vocab, dim)`` input-embedding matrix of the teacher.
        tokenizer: the teacher's tokenizer (its vocabulary indexes the rows of `embeddings`).
        top_k: neighbours kept per token.
    """

    def __init__(self, embeddings: torch.Tensor, tokenizer: Any, top_k: int):
        self.tokenizer = tokenizer
        self.top_k = int(top_k)
        vocab = tokenizer.get_vocab()
        special = set(getattr(tokenizer, "all_special_tokens", ()))
        rows = embeddings.shape[0]
        self._text: dict[int, str] = {}
        for token, index in vocab.items():
            if index >= rows or token in special or token.startswith("##"):
                continue
            text = tokenizer.convert_tokens_to_string([token]).strip()
            if text.isalpha():
                self._text[index] = text
        self._ids = torch.tensor(sorted(self._text), dtype=torch.long)
        matrix = embeddings.detach().float().cpu()
        self._unit = torch.nn.functional.normalize(matrix, dim=-1)
        self._candidates = self._unit[self._ids] if len(self._ids) else self._unit[:0]
        self._table: dict[int, list[str]] = {}
        self._ids_of: dict[str, Optional[int]] = {}

    def token_id(self, word: str) -> Optional[int]:
        """The id of `word` when the tokenizer makes it one whole-word token, else None."""
        if word not in self._ids_of:
            tokens = self.tokenizer.tokenize(word)
            index = self.tokenizer.convert_tokens_to_ids(tokens[0]) if len(tokens) == 1 else None
            self._ids_of[word] = index if index in self._text else None
        return self._ids_of[word]

    def prepare(self, words: Iterable[str]) -> None:
        """Compute the neighbours of every whole-word token among `words` (batched matrix products)."""
        ids = sorted({i for i in (self.token_id(w) for w in set(words)) if i is not None} - set(self._table))
        k = min(self.top_k + 1, len(self._ids))
        for start in range(0, len(ids), _NEIGHBOUR_CHUNK):
            chunk = ids[start:start + _NEIGHBOUR_CHUNK]
            similarity = self._unit[chunk] @ self._candidates.T
            best = similarity.topk(k, dim=-1).indices
            for index, row in zip(chunk, best.tolist()):
                found = [int(self._ids[j]) for j in row]
                self._table[index] = [self._text[j] for j in found if j != index][: self.top_k]

    def neighbours(self, word: str) -> list[str]:
        """Up to ``top_k`` nearest whole words of `word` (most similar first); [] when it is not one token."""
        index = self.token_id(word)
        if index is None:
            return []
        if index not in self._table:
            self.prepare([word])
        return self._table[index]


class TextAugmenter:
    """Augmented copies of texts (see the module docstring)."""

    def __init__(self, args: AugmentationArguments, tokenizer: Any, neighbours: Optional[TeacherNeighbours] = None):
        self.args = args
        if "mask" in args.methods and not getattr(tokenizer, "mask_token", None):
            raise ConfigError("data.augmentation.methods has 'mask', and the teacher's tokenizer has no mask token; "
                              "remove 'mask' from the methods.")
        if "replace" in args.methods and neighbours is None:
            raise ConfigError("data.augmentation: 'replace' needs the teacher's embedding neighbours.")
        self.mask_token = getattr(tokenizer, "mask_token", None)
        self.neighbours = neighbours

    def copies(self, *texts: str) -> list[tuple[str, ...]]:
        """Up to ``args.copies`` copies of `texts` (a text, or the two texts of a pair: each copy applies one
        method to both); a copy equal to its source is dropped."""
        out: list[tuple[str, ...]] = []
        for number in range(self.args.copies):
            rng = random.Random("|".join([str(self.args.seed), str(number), *texts]))
            method = rng.choice(self.args.methods)
            new = tuple(self.apply(method, text, rng) for text in texts)
            if new != texts and all(t.strip() for t in new):
                out.append(new)
        return out

    def apply(self, method: str, text: str, rng: random.Random) -> str:
        """One augmentation `method` of `text` with the random stream `rng`."""
        parts = _WORD.split(text)  # odd indices hold the words, even ones what lies between them
        words = [i for i in range(1, len(parts), 2)]
        if not words:
            return text
        if method == "delete":
            if len(words) < 2:
                return text
            length = rng.randint(1, min(self.args.max_delete_words, len(words) - 1))
            first = rng.randrange(len(words) - length + 1)
            drop = set(range(words[first], words[first + length - 1] + 2))  # the span and the gap after it
            return " ".join("".join(p for i, p in enumerate(parts) if i not in drop).split())
        for i in words:
            if rng.random() >= self.args.word_prob:
                continue
            if method == "mask":
                parts[i] = self.mask_token
            else:
                options = self.neighbours.neighbours(parts[i]) if self.neighbours is not None else []
                if options:
                    choice = options[rng.randrange(len(options))]
                    parts[i] = choice.capitalize() if parts[i][:1].isupper() else choice
        return "".join(parts)


def _embedding_digest(teacher: Any) -> str:
    weight = teacher.get_input_embeddings().weight.detach().float().cpu().contiguous()
    return hashlib.sha256(weight.numpy().tobytes()).hexdigest()


def augment_dataset(dataset: Dataset, args: AugmentationArguments, tokenizer: Any, teacher: Any) -> Dataset:
    """Augmented copies of the texts of `dataset` (columns ``text`` and optionally ``text_pair``), without labels.

    The result has the text columns only (pairs keep their pairing: both texts of a copy use the same method).
    Its fingerprint is a hash of the source's, the settings, the tokenizer and the teacher's input embeddings.
    """
    columns = [c for c in ("text", "text_pair") if c in dataset.column_names]
    if "text" not in columns:
        raise ConfigError(f"data.augmentation: the data has no 'text' column; columns: {dataset.column_names}.")
    neighbours = None
    if "replace" in args.methods:
        neighbours = TeacherNeighbours(teacher.get_input_embeddings().weight, tokenizer, args.top_k)
        neighbours.prepare(w for c in columns for t in dataset[c] for w in _WORD.findall(t or ""))
    augmenter = TextAugmenter(args, tokenizer, neighbours)
    key = Hasher.hash((dataset._fingerprint, dataclasses.asdict(args), Hasher.hash(tokenizer),
                       _embedding_digest(teacher), _AUGMENTATION_VERSION))

    def augment(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {c: [] for c in columns}
        for row in range(len(batch["text"])):
            for copy in augmenter.copies(*(batch[c][row] for c in columns)):
                for column, text in zip(columns, copy):
                    out[column].append(text)
        return out

    augmented = dataset.map(augment, batched=True, remove_columns=dataset.column_names, new_fingerprint=key,
                            desc="Augmenting")
    logger.info("Augmentation (%s, %d copies each): %d new rows from %d texts", ", ".join(args.methods),
                args.copies, len(augmented), len(dataset))
    return augmented
