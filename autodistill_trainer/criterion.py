"""`IntermediateLayersKnowledgeDistillationLoss`: the criterion of flash (and regular) distillation."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError
from .features import FeatureCapture, StopForward
from .losses import FeatureLoss, get_loss_class
from .mappings import LayerMapping, parse_layer_mappings

logger = logging.getLogger(__name__)

_NON_MODEL_INPUTS = {"labels", "label", "num_items_in_batch", "return_loss"}


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


class IntermediateLayersKnowledgeDistillationLoss:
    """Knowledge-distillation loss on intermediate features of a student and a teacher.

    Features are captured by forward hooks during ordinary forwards: ``student(**inputs)`` fills
    `student_features`, `teacher_model_forward(inputs)` runs the teacher (eval mode, no grad) and
    fills `teacher_features`, and `loss_cal()` returns ``sum_i loss_weights[i] * loss_i`` as a scalar
    tensor, then drops the captured features (nothing piles up between steps).

    Set-up (in the constructor, before any optimizer exists) runs one dry forward of both models on a
    small dummy batch built from their configs (or `probe_inputs`). From it:

    * missing modules, output indices/keys and non-tensor selections are reported as `ConfigError`;
    * a model that returns ``None`` attention maps (SDPA) is switched to eager attention (logged);
    * for each mapping, whether its tensors are probabilities (teacher rows non-negative, summing to
      1, e.g. attention maps) or logits is fixed; KL/CE use it for the whole run;
    * attention dropout of student attention modules whose maps enter a loss is turned off
      (Transformers returns maps after dropout); it is restored by `remove_hooks()`;
    * head-count mismatch between attention maps ``(B, H, L, L)``: when one count divides the
      other, the side with more heads is averaged in contiguous groups down to the smaller count;
      otherwise both sides are averaged to one map. Never a random projection;
    * width mismatch (same shape but the last dimension) gets a trainable ``nn.Linear(student_dim,
      teacher_dim)`` feature matcher in `feature_matchers` (a ``ModuleDict`` keyed by mapping index),
      applied to the student feature by the capture hook, i.e. inside the student's forward (so DDP
      sees the matcher used in forward). :class:`~autodistill_trainer.DistillationTrainer` attaches it
      to the student during training so that the optimizer, DDP and checkpoints see it, and removes
      it before exporting the student. Used on its own, add ``criterion.feature_matchers.parameters()``
      to your optimizer.

    Reductions: see :mod:`autodistill_trainer.losses` (per position over the last dimension, then
    the mean over real positions given by the attention mask).

    Args:
        student_model: the model being trained.
        teacher_model: the fixed teacher.
        layer_mappings: list of ``(student_layer, teacher_layer)``, ``(student_layer, student_process,
            teacher_layer, teacher_process)`` or ``[(student_layer, process), (teacher_layer, process)]``.
        loss_types: one registered loss name per mapping (``MSE``, ``KL``, ``L1``, ``CE``, ``Cos``, or
            your own); default ``MSE`` everywhere.
        loss_weights: one weight per mapping; default ``1 / len(layer_mappings)`` each.
        temperature: softmax temperature for KL/CE on logits (the loss is scaled by T^2).
        add_origin_loss: whether the trainer adds the student's own loss (read by DistillationTrainer).
        probe_inputs: optional example batch for the set-up probe (defaults to random token ids).
        matcher_seed: feature matcher ``i`` is initialised (PyTorch's default ``nn.Linear`` init) under
            ``torch.manual_seed(matcher_seed + i)``, without touching the global random state.
        early_stop_teacher: end the teacher's forward once the last teacher feature the mappings need is
            captured (e.g. a flash stage on block 2 runs only the teacher's layers up to its mapped
            layer); `teacher_model_forward` then returns None. Off when a mapping reads the whole model.
    """

    def __init__(
        self,
        student_model: nn.Module,
        teacher_model: nn.Module,
        layer_mappings: Sequence[Any],
        loss_types: Sequence[str] | None = None,
        loss_weights: Sequence[float] | None = None,
        temperature: float = 1.0,
        add_origin_loss: bool = False,
        probe_inputs: Mapping[str, torch.Tensor] | None = None,
        matcher_seed: int = 42,
        early_stop_teacher: bool = True,
    ):
        self.student_model = student_model
        self.teacher_model = teacher_model
        self.layer_mappings: list[LayerMapping] = parse_layer_mappings(layer_mappings, "layer_mappings")
        n = len(self.layer_mappings)
        self.loss_types = list(loss_types) if loss_types is not None else ["MSE"] * n
        self.loss_weights = [float(w) for w in loss_weights] if loss_weights is not None else [1.0 / n] * n
        for key, values in (("loss_types", self.loss_types), ("loss_weights", self.loss_weights)):
            if len(values) != n:
                raise ConfigError(
                    f"{key} has {len(values)} entries but layer_mappings has {n}: give one per mapping."
                )
        for loss_type in self.loss_types:
            get_loss_class(loss_type)  # unknown names fail here, before any forward
        self.temperature = float(temperature)
        self.add_origin_loss = bool(add_origin_loss)
        self.matcher_seed = int(matcher_seed)
        self.layer_output_process = [(m.student_process, m.teacher_process) for m in self.layer_mappings]
        self.loss_names = self._unique_names()

        self._student_capture = FeatureCapture(
            student_model, [(m.student_layer, m.student_process) for m in self.layer_mappings], role="student"
        )
        self._teacher_capture = FeatureCapture(
            teacher_model, [(m.teacher_layer, m.teacher_process) for m in self.layer_mappings], role="teacher"
        )
        self.student_features = self._student_capture.features
        self.teacher_features = self._teacher_capture.features
        self._teacher_inputs = model_input_names(teacher_model)
        self._student_inputs = model_input_names(student_model)
        self.attention_mask: torch.Tensor | None = None
        self.feature_matchers = nn.ModuleDict()
        self.head_alignment: list[str | None] = [None] * n
        self.inputs_are_probabilities: list[bool] = [False] * n
        self._disabled_dropouts: list[tuple[nn.Dropout, float]] = []
        self.last_loss_terms: dict[str, torch.Tensor] = {}

        self._student_mask: torch.Tensor | None = None
        self._mask_hook = student_model.register_forward_pre_hook(self._record_student_mask, with_kwargs=True)
        self._set_up(probe_inputs)
        self.loss_funcs: list[FeatureLoss] = self.init_loss_funcs()
        self._teacher_stop_key = None
        if early_stop_teacher and all(m.teacher_layer for m in self.layer_mappings) and self._teacher_order:
            self._teacher_stop_key = self._teacher_order[-1]

    # ------------------------------------------------------------------ set-up
    def _unique_names(self) -> list[str]:
        names, seen = [], {}
        for mapping, loss_type in zip(self.layer_mappings, self.loss_types):
            name = f"{loss_type}:{mapping.name}"
            seen[name] = seen.get(name, 0) + 1
            names.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
        return names

    def _record_student_mask(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        self._student_mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    def _match(self, i: int, value: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Feature matcher ``i`` on the real positions of a captured student feature (inside the forward)."""
        rows, selected = real_positions(value, self._student_mask)
        return self.feature_matchers[str(i)](rows), selected

    def _dummy_batch(self) -> dict[str, torch.Tensor]:
        vocab, max_len = [], []
        for model in (self.student_model, self.teacher_model):
            config = getattr(model, "config", None)
            vocab.append(getattr(config, "vocab_size", None) or 100)
            max_len.append(getattr(config, "max_position_embeddings", None) or 16)
        length = max(2, min(8, *max_len))
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(1, max(2, min(vocab)), (2, length), generator=generator)
        attention_mask = torch.ones(2, length, dtype=torch.long)
        attention_mask[0, -2:] = 0
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}

    def _probe(self, batch: Mapping[str, torch.Tensor]) -> list[tuple[Any, Any]]:
        device = _model_device(self.student_model)
        student_inputs = {k: v.to(device) for k, v in filter_model_inputs(batch, self._student_inputs).items()}
        was_training = self.student_model.training
        self.student_model.eval()
        try:
            with torch.no_grad():
                self.student_model(**student_inputs)
                self.teacher_model_forward(batch)
            self._teacher_order = list(self._teacher_capture.capture_order)
            pairs = [
                (
                    self._student_capture.get(m.student_layer, m.student_process),
                    self._teacher_capture.get(m.teacher_layer, m.teacher_process),
                )
                for m in self.layer_mappings
            ]
        finally:
            self.student_model.train(was_training)
            self._clear()
        return pairs

    def _set_up(self, probe_inputs: Mapping[str, torch.Tensor] | None) -> None:
        batch = dict(probe_inputs) if probe_inputs is not None else self._dummy_batch()
        pairs = self._probe(batch)
        # Attention maps are None under SDPA/flash attention: switch the model to eager and probe again.
        switched = False
        for side, model, index in (("student", self.student_model, 0), ("teacher", self.teacher_model, 1)):
            if any(pair[index] is None for pair in pairs) and _switch_to_eager(model, side):
                switched = True
        if switched:
            pairs = self._probe(batch)

        for i, ((student, teacher), mapping) in enumerate(zip(pairs, self.layer_mappings)):
            where = f"layer_mappings[{i}] ({mapping.student_layer} -> {mapping.teacher_layer})"
            for side, value, process in (("student", student, mapping.student_process), ("teacher", teacher, mapping.teacher_process)):
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
            self._analyse_mapping(i, where, student, teacher)

    def _analyse_mapping(self, i: int, where: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if student.ndim != teacher.ndim:
            raise ConfigError(
                f"{where}: student feature has shape {tuple(student.shape)} and teacher feature "
                f"{tuple(teacher.shape)}; no matcher can bridge a different number of dimensions."
            )
        is_distribution = bool(
            (teacher >= 0).all()
            and torch.allclose(teacher.float().sum(-1), torch.ones_like(teacher.float().sum(-1)), atol=1e-3)
        )
        self.inputs_are_probabilities[i] = is_distribution
        is_attention_map = student.ndim == 4 and student.shape[-1] == student.shape[-2]
        if is_attention_map and student.shape[1] != teacher.shape[1]:
            s_heads, t_heads = student.shape[1], teacher.shape[1]
            self.head_alignment[i] = (
                "teacher" if t_heads % s_heads == 0 else "student" if s_heads % t_heads == 0 else "both"
            )
            student, teacher = self._align_heads(i, student, teacher)
            logger.debug(
                "%s: student has %d heads, teacher %d: averaging %s heads in groups.",
                where, s_heads, t_heads, self.head_alignment[i] if self.head_alignment[i] != "both" else "all",
            )
        if is_attention_map and is_distribution:
            module = dict(self.student_model.named_modules())[self.layer_mappings[i].student_layer]
            dropout = getattr(module, "dropout", None)
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                self._disabled_dropouts.append((dropout, dropout.p))
                dropout.p = 0.0
                logger.debug("%s: attention dropout of the student's mapped attention set to 0 (was %s).", where, self._disabled_dropouts[-1][1])
        if student.shape == teacher.shape:
            return
        if student.shape[:-1] == teacher.shape[:-1] and not is_attention_map:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.matcher_seed + i)  # documented, reproducible initialisation
                matcher = self.init_feature_matcher(student.shape[-1], teacher.shape[-1])
            self.feature_matchers[str(i)] = matcher.to(
                device=student.device, dtype=_model_dtype(self.student_model)
            )
            mapping = self.layer_mappings[i]
            self._student_capture.add_transform(
                mapping.student_layer, mapping.student_process, ("matched", i), functools.partial(self._match, i)
            )
            logger.debug("%s: feature matcher Linear(%d, %d) added.", where, student.shape[-1], teacher.shape[-1])
            return
        raise ConfigError(
            f"{where}: student feature has shape {tuple(student.shape)} and teacher feature "
            f"{tuple(teacher.shape)}; a feature matcher only bridges the last (width) dimension and "
            "attention maps may differ only in their number of heads. Map layers whose shapes agree."
        )

    def _align_heads(self, i: int, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mode = self.head_alignment[i]
        if mode == "teacher":
            teacher = average_heads(teacher, student.shape[1])
        elif mode == "student":
            student = average_heads(student, teacher.shape[1])
        elif mode == "both":
            student, teacher = average_heads(student, 1), average_heads(teacher, 1)
        return student, teacher

    def init_feature_matcher(self, student_dim: int, teacher_dim: int) -> nn.Module:
        """Create the linear feature matcher mapping a student width to a teacher width."""
        return nn.Linear(student_dim, teacher_dim)

    def init_loss_funcs(self) -> list[FeatureLoss]:
        """Instantiate one registered loss per mapping, with the set-up's probabilities/logits decision."""
        return [
            get_loss_class(loss_type)(temperature=self.temperature, inputs_are_probabilities=probs)
            for loss_type, probs in zip(self.loss_types, self.inputs_are_probabilities)
        ]

    # ------------------------------------------------------------------ per step
    def teacher_model_forward(self, inputs: Mapping[str, Any]) -> Any:
        """Run the teacher on `inputs` (eval mode, no grad), filling `teacher_features`.

        Labels and inputs the teacher does not accept are dropped; the attention mask is recorded
        so that losses ignore padded positions. Returns the teacher's outputs, or None when the
        forward stopped early after the last needed feature (see `early_stop_teacher`).
        """
        device = _model_device(self.teacher_model)
        teacher_inputs = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v
            for k, v in filter_model_inputs(inputs, self._teacher_inputs).items()
        }
        if self.teacher_model.training:
            self.teacher_model.eval()
        # Armed only during this call, so that other criteria hooked on the same teacher are unaffected.
        self._teacher_capture.stop_after = getattr(self, "_teacher_stop_key", None)
        with torch.no_grad():
            try:
                outputs = self.teacher_model(**teacher_inputs)
            except StopForward:  # every needed feature is captured: the rest of the teacher is skipped
                outputs = None
            finally:
                self._teacher_capture.stop_after = None
        self.attention_mask = inputs.get("attention_mask")
        return outputs

    def loss_cal(
        self,
        teacher_outputs: Sequence[torch.Tensor] | None = None,
        scales: Mapping[str, float] | None = None,
    ) -> torch.Tensor:
        """Weighted sum of the mapping losses on the features captured by the last forwards.

        Args:
            teacher_outputs: precomputed teacher features, one per mapping (e.g. from a cache); when
                given, `teacher_model_forward` need not run.
            scales: optional factor per kind of position a term averages over: ``"token"`` (terms
                masked by the attention mask) or ``"sample"`` (per-sample terms such as logits). The
                trainer uses it to turn micro-batch means into exact means over an accumulated batch.

        The unweighted value of each term is kept in `last_loss_terms` (detached) for logging.
        Captured features are dropped afterwards.
        """
        try:
            total = None
            terms: dict[str, torch.Tensor] = {}
            mask = self.attention_mask
            for i, mapping in enumerate(self.layer_mappings):
                if str(i) in self.feature_matchers:  # matched inside the forward, on real rows when it could
                    self._student_capture.get(mapping.student_layer, mapping.student_process)
                    student, student_rows = self._student_capture.features[("matched", i)]
                else:
                    student = self._student_capture.get(mapping.student_layer, mapping.student_process)
                    student_rows = False
                if teacher_outputs is not None:
                    teacher = teacher_outputs[i]
                else:
                    teacher = self._teacher_capture.get(mapping.teacher_layer, mapping.teacher_process)
                teacher = teacher.to(device=student.device, dtype=student.dtype)
                teacher, per_token = real_positions(teacher, mask)
                if not student_rows:
                    # real rows first ((B, H, L, L) -> (N, H, L)), then heads: no work on padded rows
                    student, _ = real_positions(student, mask)
                    student, teacher = self._align_heads(i, student, teacher)
                if student.shape != teacher.shape:
                    raise RuntimeError(
                        f"{self.loss_names[i]}: student rows {tuple(student.shape)} and teacher rows {tuple(teacher.shape)} "
                        "differ: the student and the teacher saw different attention masks in this step."
                    )
                loss = self.loss_funcs[i](student, teacher)
                terms[self.loss_names[i]] = loss.detach()
                weighted = self.loss_weights[i] * loss
                if scales is not None:
                    weighted = weighted * scales["token" if per_token else "sample"]
                total = weighted if total is None else total + weighted
            self.last_loss_terms = terms
            return total
        finally:
            self._clear()

    def __call__(self, student_outputs: Any = None, targets: Any = None) -> torch.Tensor:
        """Alias of `loss_cal()` so the criterion can be called like a loss module."""
        return self.loss_cal()

    def _clear(self) -> None:
        self._student_capture.clear()
        self._teacher_capture.clear()

    def clear_features(self) -> None:
        """Drop captured features and the recorded attention mask (e.g. after an evaluation forward)."""
        self._clear()
        self.attention_mask = None

    @contextlib.contextmanager
    def suspended(self):
        """Context in which the hooks capture nothing (e.g. while other criteria train the same student)."""
        previous = (self._student_capture.enabled, self._teacher_capture.enabled)
        self._student_capture.enabled = self._teacher_capture.enabled = False
        try:
            yield self
        finally:
            self._student_capture.enabled, self._teacher_capture.enabled = previous

    def remove_hooks(self) -> None:
        """Remove all hooks and restore the attention dropout that set-up turned off."""
        self._mask_hook.remove()
        self._student_capture.remove()
        self._teacher_capture.remove()
        for dropout, p in self._disabled_dropouts:
            dropout.p = p
        self._disabled_dropouts.clear()
        self.attention_mask = None


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _switch_to_eager(model: nn.Module, side: str) -> bool:
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if config is None or current in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        return False
    model.set_attn_implementation("eager")
    logger.warning(
        "The %s model ran %r attention, which returns no attention maps; switched it to eager attention so "
        "that mapped attention maps can be distilled.", side, current
    )
    return True
