"""autodistill-trainer: find and train small, fast students with a Hugging Face Trainer.

The public names load on first use (PEP 562), so that ``import autodistill_trainer.recipe`` (the CLI's recipe
validation) does not pay for torch and ``transformers.Trainer`` before a bad recipe is rejected.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InvalidArchitectureError

if TYPE_CHECKING:
    from .criterion import IntermediateLayersKnowledgeDistillationLoss
    from .losses import LOSS_REGISTRY, FeatureLoss, register_loss
    from .mappings import LayerMapping
    from .search import AutoDistillation, AutoDistillationResult
    from .trainer import DistillationTrainer

__version__ = "0.1.0"

_LAZY = {
    "AutoDistillation": ".search",
    "AutoDistillationResult": ".search",
    "DistillationTrainer": ".trainer",
    "FeatureLoss": ".losses",
    "IntermediateLayersKnowledgeDistillationLoss": ".criterion",
    "LOSS_REGISTRY": ".losses",
    "LayerMapping": ".mappings",
    "register_loss": ".losses",
}

__all__ = [
    "AutoDistillation",
    "AutoDistillationResult",
    "ConfigError",
    "DistillationTrainer",
    "FeatureLoss",
    "IntermediateLayersKnowledgeDistillationLoss",
    "InvalidArchitectureError",
    "LOSS_REGISTRY",
    "LayerMapping",
    "register_loss",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
