"""Exceptions shared across the package."""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """A recipe, argument or mapping is invalid. The message names the key or value and how to fix it."""


class InvalidArchitectureError(ValueError):
    """A proposed architecture cannot be built (e.g. heads that do not divide the attention width).

    The search records the reason and neither trains the architecture nor counts it as a trial.
    """


def closest_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to `n` candidates closest to `name` (for "did you mean" hints)."""
    candidates = list(candidates)
    same_depth = [c for c in candidates if c.count(".") == name.count(".")]
    close = difflib.get_close_matches(name, same_depth, n=n, cutoff=0.5) or difflib.get_close_matches(
        name, candidates, n=n, cutoff=0.5
    )
    if not close:
        # Fall back to candidates sharing the longest dotted prefix, so a misspelt layer index still helps.
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:depth]) + "."
            close = [c for c in candidates if c.startswith(prefix)][:n]
            if close:
                break
    return close


def did_you_mean(name: str, candidates: Iterable[str], n: int = 5) -> str:
    """A ' Did you mean: a, b?' suffix, or '' when nothing is close."""
    close = closest_names(name, candidates, n)
    return f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""
