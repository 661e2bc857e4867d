"""What training must leave as it found it, or refuse to hand on: ``requires_grad`` flags, dtypes, finite weights."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .errors import ConfigError


class NonFiniteParametersError(RuntimeError):
    """Training left non-finite (inf/NaN) weights; the model must not be exported (a search fails the trial)."""


def teacher_in_dtype(teacher: nn.Module, teacher_dtype: torch.dtype | str | None) -> nn.Module:
    """The teacher converted to `teacher_dtype` (in place, as ``nn.Module.to`` does); unchanged when None."""
    if teacher_dtype is None:
        return teacher
    dtype = getattr(torch, teacher_dtype, None) if isinstance(teacher_dtype, str) else teacher_dtype
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"teacher_dtype {teacher_dtype!r} is not a torch dtype (e.g. 'float16', 'bfloat16').")
    return teacher.to(dtype)


@contextlib.contextmanager
def requires_grad_restored(*modules: nn.Module) -> Iterator[None]:
    """Context that gives each parameter of `modules` its ``requires_grad`` flag back on exit."""
    flags = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def check_finite_parameters(model: nn.Module) -> None:
    """Raise :class:`NonFiniteParametersError` naming the model's non-finite (inf/NaN) weights, if any."""
    bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteParametersError(
            f"training left non-finite (inf/NaN) weights in {shown}; the model is not usable. Lower the "
            "learning rate, enable gradient clipping (max_grad_norm) or use bf16 instead of fp16."
        )
