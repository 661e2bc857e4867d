"""Generate the design's per-block flash-distillation mappings for BERT-family models."""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import ConfigError


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """Teacher layer for each student layer, spread uniformly; the last maps to the last.

    ``uniform_layer_map(4, 12) == [2, 5, 8, 11]``; equal depths map one to one.
    """
    if num_student_layers <= 0 or num_teacher_layers <= 0:
        raise ConfigError("auto layer mappings need models with at least one layer each.")
    return [round((i + 1) * num_teacher_layers / num_student_layers) - 1 for i in range(num_student_layers)]


def _encoder_prefix(model: nn.Module, role: str) -> tuple[str, int]:
    prefix = getattr(model, "base_model_prefix", "")
    names = dict(model.named_modules())
    base = f"{prefix}." if prefix and prefix in names else ""
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    probe = f"{base}encoder.layer.0.attention.self"
    if layers is None or probe not in names or f"{base}encoder.layer.0.output" not in names:
        raise ConfigError(
            f"layer_mappings: auto supports BERT-family teachers and MobileBERT/BERT students (modules "
            f"'<prefix>.encoder.layer.N.attention.self' and '.output'); the {role} ({type(model).__name__}) has no "
            f"{probe!r}. Write the mappings by hand."
        )
    return base, int(layers)


def auto_flash_config(
    student: nn.Module,
    teacher: nn.Module,
    train_steps: int | list[int] = 500,
    include_embeddings: bool = True,
    attention_loss: str = "KL",
    output_loss: str = "MSE",
) -> dict[str, Any]:
    """The design's flash-distillation config for `student` and `teacher`.

    Per student block ``i`` (mapped to teacher layer ``uniform_layer_map(...)[i]``): attention maps with
    KL (``'<s>.encoder.layer.i.attention.self', '1'``) and the layer output with MSE
    (``'<s>.encoder.layer.i.output'``), equal weights. With `include_embeddings`, the first stage also
    trains the student's embeddings (they feed block 0 and have no teacher counterpart of their width).

    Returns a dict with ``block_names``, ``layer_mappings_for_knowledge_transfer``, ``loss_types``,
    ``train_steps`` (the flat YAML form).
    """
    s_base, s_layers = _encoder_prefix(student, "student")
    t_base, t_layers = _encoder_prefix(teacher, "teacher")
    layer_map = uniform_layer_map(s_layers, t_layers)
    blocks, mappings = [], []
    for i, t in enumerate(layer_map):
        block: Any = f"{s_base}encoder.layer.{i}"
        if i == 0 and include_embeddings and f"{s_base}embeddings" in dict(student.named_modules()):
            block = [f"{s_base}embeddings", block]
        blocks.append(block)
        mappings.append(
            [
                (f"{s_base}encoder.layer.{i}.attention.self", "1", f"{t_base}encoder.layer.{t}.attention.self", "1"),
                (f"{s_base}encoder.layer.{i}.output", f"{t_base}encoder.layer.{t}.output"),
            ]
        )
    return {
        "block_names": blocks,
        "layer_mappings_for_knowledge_transfer": mappings,
        "loss_types": [[attention_loss, output_loss] for _ in layer_map],
        "train_steps": train_steps if isinstance(train_steps, list) else [train_steps] * len(layer_map),
    }
