"""Cell formatting shared by the results table and the model card."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["human_int", "fmt_md"]


def human_int(value: int) -> str:
    """2_740_000 -> '2.74M'; small ints unchanged."""
    for unit, scale, threshold in (("G", 1e9, 1e9), ("M", 1e6, 1e6), ("k", 1e3, 1e4)):
        if abs(value) >= threshold:
            return f"{value / scale:.3g}{unit}"
    return str(value)


def fmt_md(value: Any, column: str = "") -> str:
    """Human-readable cell for the Markdown table / model card."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return human_int(value) if column in ("params", "flops") else str(value)
    if isinstance(value, float):
        if column == "duration_s":
            return f"{value:.1f}"
        if column in ("params", "flops") and value.is_integer():
            return human_int(int(value))
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.4g}" if abs(value) >= 1 else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")
