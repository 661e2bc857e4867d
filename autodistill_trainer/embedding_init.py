"""Student word embeddings initialised from the teacher's (PCA to the student's width).

The projection depends only on the teacher, so the caller builds one :class:`TeacherEmbeddingProjection` next to
its teacher and every trial's student reuses it; no module-level cache (object ids are reused once freed).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["TeacherEmbeddingProjection", "init_embeddings_from_teacher"]


class TeacherEmbeddingProjection:
    """The teacher's word embeddings projected by PCA to a student's embedding width, computed once per width.

    The projection (top principal directions of the centred teacher embeddings, rescaled to the teacher's
    per-dimension standard deviation; zero-padded when the student is wider) depends only on the teacher, so a
    search builds one of these next to its teacher and every trial reuses it. It holds no global state: its
    results live and die with this object.
    """

    def __init__(self, teacher: Any) -> None:
        embeddings = teacher.get_input_embeddings()
        self.vocab_size: int | None = None if embeddings is None else int(embeddings.weight.shape[0])
        self._weight = None if embeddings is None else embeddings.weight.detach().float().cpu().clone()
        self._by_width: dict[int, torch.Tensor] = {}

    def __call__(self, width: int) -> torch.Tensor:
        """The ``(vocab_size, width)`` initial embeddings for a student of embedding width ``width``."""
        if self._weight is None:
            raise ValueError("the teacher has no input embeddings to project")
        if width not in self._by_width:
            weight = self._weight
            centred = weight - weight.mean(0, keepdim=True)
            if width >= weight.shape[1]:
                projected = torch.nn.functional.pad(centred, (0, width - weight.shape[1]))
            else:
                # pca_lowrank draws from the global generator: seed a fork so the caller's stream is untouched
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    _, _, v = torch.pca_lowrank(centred, q=width, center=False, niter=4)
                projected = centred @ v[:, :width]
                projected = projected / projected.std(0, keepdim=True).clamp_min(1e-6) * weight.std()
            self._by_width[width] = projected
        return self._by_width[width]


def init_embeddings_from_teacher(student: Any, projection: TeacherEmbeddingProjection) -> bool:
    """Initialise the student's word embeddings from the teacher's, projected to the student's width.

    Only when both share the vocabulary (same number of rows). Returns whether it was applied.
    """
    s_emb = student.get_input_embeddings()
    if s_emb is None or projection.vocab_size is None or s_emb.weight.shape[0] != projection.vocab_size:
        logger.info("word embeddings not initialised from the teacher: the vocabularies differ")
        return False
    with torch.no_grad():
        s_emb.weight.copy_(projection(int(s_emb.weight.shape[1])).to(s_emb.weight.dtype))
    return True
