"""The whole AutoDistillation config (the design's ``autodistillation_config``), parsed once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from .distillation import FlashDistillationConfig, RegularDistillationConfig, parse_distillation
from .search import SearchConfig, parse_search_config


@dataclass
class AutoDistillationConfig:
    """The design's AutoDistillation config as typed objects.

    Args:
        search: the ``search`` section (space, advisor, objectives, budgets, storage).
        flash_distillation: progressive knowledge transfer, or ``None`` to skip it.
        regular_distillation: distillation of the whole student on the teacher's logits, or ``None``.
    """

    search: SearchConfig = field(metadata={"help": "The search section (space, advisor, objectives, budgets)."})
    flash_distillation: FlashDistillationConfig | None = field(
        default=None, metadata={"help": "Progressive knowledge transfer, or null to skip it."})
    regular_distillation: RegularDistillationConfig | None = field(
        default=None, metadata={"help": "Distillation of the whole student on the teacher's logits, or null."})

    def __post_init__(self) -> None:
        if not isinstance(self.search, SearchConfig):
            raise ConfigError(f"AutoDistillationConfig.search must be a SearchConfig, got "
                              f"{type(self.search).__name__}; use AutoDistillationConfig.from_design(dict) for the "
                              "design's dict form.")
        for name, cls in (("flash_distillation", FlashDistillationConfig),
                          ("regular_distillation", RegularDistillationConfig)):
            value = getattr(self, name)
            if value is not None and not isinstance(value, cls):
                raise ConfigError(f"AutoDistillationConfig.{name} must be a {cls.__name__} or None, got "
                                  f"{type(value).__name__}; use AutoDistillationConfig.from_design(dict).")

    @classmethod
    def from_design(cls, value: Any) -> "AutoDistillationConfig":
        """Parse the design's dict form (``{'search': ..., 'flash_distillation': ..., 'regular_distillation': ...}``,
        with a regular config possibly nested inside the flash one); an instance is returned as it is."""
        if isinstance(value, cls):
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        if not isinstance(value, Mapping):
            raise ConfigError(
                "the AutoDistillation config must be a mapping {'search': {...}, 'flash_distillation': {...}, "
                f"'regular_distillation': {{...}}}}, got {type(value).__name__}."
            )
        search = parse_search_config(value)
        flash, regular = parse_distillation(value.get("flash_distillation"), value.get("regular_distillation"))
        return cls(search=search, flash_distillation=flash, regular_distillation=regular)
