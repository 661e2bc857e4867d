"""Set-up helpers of the criterion: input filtering, row selection, head alignment, the probabilities-or-logits
decision and the switch to eager attention.

These are pure functions on tensors and modules; :mod:`autodistill_trainer.criterion` wires them together.
"""

from __future__ import annotations

import inspect
import logging
import math
import weakref
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from . import module_overrides
from .errors import ConfigError

logger = logging.getLogger(__name__)

_NON_MODEL_INPUTS = {"labels", "label", "num_items_in_batch", "return_loss"}

# A float tensor is read as a probability distribution along its last dimension when it is non-negative
# and every row sums to 1 within max(MIN_ROW_SUM_TOLERANCE, eps(dtype) * sqrt(row length)).
MIN_ROW_SUM_TOLERANCE = 1e-3


def model_input_names(model: nn.Module) -> set[str] | None:
    """Names `model.forward` accepts (None when it takes **kwargs only)."""
    params = inspect.signature(model.forward).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names or None


def filter_model_inputs(inputs: Mapping[str, Any], accepted: set[str] | None) -> dict[str, Any]:
    """Keep the inputs a model accepts, never labels."""
    return {
        k: v
        for k, v in inputs.items()
        if k not in _NON_MODEL_INPUTS and not k.startswith("teacher_") and (accepted is None or k in accepted)
    }


def real_positions(feature: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """The rows of `feature` at real (non-padded) positions, and whether a selection was made.

    ``(B, L, D)`` -> ``(N, D)``; attention maps ``(B, H, L, L)`` -> ``(N, H, L)`` (real query rows);
    other shapes, or no mask, are returned unchanged. Losses then average over rows, which equals the
    masked mean over real positions while doing no work on padding.
    """
    if mask is None:
        return feature, False
    batch, length = mask.shape
    mask = mask.to(device=feature.device, dtype=torch.bool)
    if feature.ndim == 3 and tuple(feature.shape[:2]) == (batch, length):
        return feature[mask], True
    if feature.ndim == 4 and feature.shape[0] == batch and feature.shape[2] == length:
        return feature.transpose(1, 2)[mask], True
    return feature, False


def average_heads(attention: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Average attention maps ``(B, H, L, L)`` (or their real rows ``(N, H, L)``) in contiguous groups of
    ``H // num_heads`` heads (dimension 1)."""
    batch, heads = attention.shape[:2]
    if heads == num_heads:
        return attention
    return attention.reshape(batch, num_heads, heads // num_heads, *attention.shape[2:]).mean(2)


def row_sum_tolerance(dtype: torch.dtype, row_length: int) -> float:
    """How far from 1 the row sums of a probability tensor of `dtype` may be: rounding every entry of a
    row to `dtype` moves its sum by about ``eps * sqrt(row_length)`` (bf16: eps = 2^-7), never less than
    ``MIN_ROW_SUM_TOLERANCE``."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(MIN_ROW_SUM_TOLERANCE, eps * math.sqrt(max(1, row_length)))


def is_probability_tensor(tensor: torch.Tensor) -> bool:
    """Whether `tensor` holds probability distributions along its last dimension (e.g. attention maps).

    Non-negative entries whose rows sum to 1 within :func:`row_sum_tolerance` of the tensor's own dtype,
    so that fp16/bf16 attention maps are recognised like fp32 ones. Integer tensors are never
    probabilities.
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return False
    if not bool((tensor >= 0).all()):
        return False
    deviation = (tensor.double().sum(-1) - 1.0).abs().max().item()
    return deviation <= row_sum_tolerance(tensor.dtype, tensor.shape[-1])


def is_attention_map(tensor: torch.Tensor) -> bool:
    """Whether `tensor` has the shape of attention maps ``(B, H, L, L)``."""
    return tensor.ndim == 4 and tensor.shape[-1] == tensor.shape[-2]


def check_selected_feature(where: str, side: str, value: Any, process: Any) -> None:
    """Raise a ConfigError when a mapping's process did not select a tensor from the probe's output."""
    if value is None:
        raise ConfigError(
            f"{where}: the {side} output selected by {process!r} is None. For attention maps the "
            "model must run eager attention (attn_implementation='eager')."
        )
    if not isinstance(value, torch.Tensor):
        raise ConfigError(
            f"{where}: the {side} output selected by {process!r} is a {type(value).__name__}, not a "
            "tensor; select one element with an index string like '0' or a key like 'logits'."
        )


def align_heads(mode: str | None, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average attention heads as set-up decided: ``"teacher"`` or ``"student"`` (that side down to the
    other's head count), ``"both"`` (both to one map) or None (unchanged)."""
    if mode == "teacher":
        teacher = average_heads(teacher, student.shape[1])
    elif mode == "student":
        student = average_heads(student, teacher.shape[1])
    elif mode == "both":
        student, teacher = average_heads(student, 1), average_heads(teacher, 1)
    return student, teacher


def output_tensors(output: Any) -> Iterator[torch.Tensor]:
    """The tensors a module returned: the output itself, or the items of a tuple/list/dict/ModelOutput."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        yield from (item for item in output if isinstance(item, torch.Tensor))
    elif isinstance(output, Mapping) or hasattr(output, "values"):
        yield from (item for item in output.values() if isinstance(item, torch.Tensor))


def under(name: str, prefix: str) -> bool:
    """Whether module `name` is `prefix` or lies inside it (``""`` is the whole model)."""
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of a model's first floating-point parameter (float32 when it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def dummy_batch(*models: nn.Module) -> dict[str, torch.Tensor]:
    """A small batch of random token ids valid for every model (vocabulary and length from the configs),
    with two padded positions in its first row."""
    vocab, max_len = [], []
    for model in models:
        config = getattr(model, "config", None)
        vocab.append(getattr(config, "vocab_size", None) or 100)
        max_len.append(getattr(config, "max_position_embeddings", None) or 16)
    length = max(2, min(8, *max_len))
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, max(2, min(vocab)), (2, length), generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[0, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}


#: Models already told about the switch to eager attention (weak: a freed model leaves the set).
_TOLD_EAGER: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()


def hold_eager_attention(model: nn.Module, side: str, needed: bool) -> bool:
    """Switch `model` to eager attention when its maps are `needed` and it runs another implementation,
    or join a switch another criterion made; returns whether a hold was taken (release it when done)."""
    current = module_overrides.get_attn_implementation(model)
    if not needed or current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        return module_overrides.join(model, "attn_implementation")
    taken = module_overrides.hold(
        model, "attn_implementation", "eager",
        module_overrides.get_attn_implementation, module_overrides.set_attn_implementation,
    )
    # Said once per model: a schedule switches it again for every stage.
    log = logger.debug if model in _TOLD_EAGER else logger.warning
    _TOLD_EAGER.add(model)
    log("The %s model ran %r attention, which returns no attention maps; switched it to eager attention so that "
        "mapped attention maps can be distilled (restored when the criterion's hooks are removed).", side, current)
    return taken
