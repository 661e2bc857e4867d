"""Typed configuration: what a recipe or a design-form dict means, parsed once."""

from .autodistillation import AutoDistillationConfig
from .distillation import (
    FlashDistillationConfig,
    KnowledgeTransferStage,
    RegularDistillationConfig,
    parse_distillation,
    parse_flash_distillation,
    parse_regular_distillation,
)
from .search import SEARCH_ALGORITHMS, SearchConfig, parse_search_config
from .sections import BaselineArguments, DataArguments, EvaluationArguments, ModelArguments, TeacherArguments

__all__ = [
    "AutoDistillationConfig",
    "SEARCH_ALGORITHMS",
    "BaselineArguments",
    "DataArguments",
    "EvaluationArguments",
    "FlashDistillationConfig",
    "KnowledgeTransferStage",
    "ModelArguments",
    "RegularDistillationConfig",
    "SearchConfig",
    "TeacherArguments",
    "parse_distillation",
    "parse_flash_distillation",
    "parse_regular_distillation",
    "parse_search_config",
]
