"""autodistill-trainer: find and train small, fast students with a Hugging Face Trainer."""

from .criterion import IntermediateLayersKnowledgeDistillationLoss
from .errors import ConfigError, InvalidArchitectureError
from .losses import LOSS_REGISTRY, FeatureLoss, register_loss
from .mappings import LayerMapping
from .search import AutoDistillation, AutoDistillationResult
from .trainer import DistillationTrainer

__version__ = "0.1.0"

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
