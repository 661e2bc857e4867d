"""`IntermediateLayersKnowledgeDistillationLoss`: the criterion of flash (and regular) distillation."""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from . import module_overrides
from .attention_dropout import switch_off_attention_dropout
from .criterion_setup import (
    align_heads, average_heads, check_selected_feature, dummy_batch, filter_model_inputs, hold_eager_attention,
    is_attention_map, is_probability_tensor, model_device, model_dtype, model_input_names, real_positions,
)
from .errors import ConfigError
from .features import FeatureCapture, StopForward
from .losses import FeatureLoss, get_loss_class
from .mappings import LayerMapping, loss_names, parse_layer_mappings

logger = logging.getLogger(__name__)

# The tensor helpers stay importable from here (they live in criterion_setup).
__all__ = ["IntermediateLayersKnowledgeDistillationLoss", "average_heads", "filter_model_inputs",
           "model_input_names", "real_positions"]


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
    * for each mapping, whether its tensors are probabilities or logits is fixed for the whole run:
      probabilities when the teacher's are non-negative with rows summing to 1 within a tolerance of
      their dtype (:func:`~autodistill_trainer.criterion_setup.is_probability_tensor`: fp16/bf16 maps too);
    * the dropout rule (:mod:`autodistill_trainer.attention_dropout`): the attention dropout of the student
      module that computes mapped maps (the mapped module or one inside it) is set to 0;
    * the teacher's early stop is armed at the last capture of the forward, unless that module runs
      several times per forward (ALBERT's shared layer), whose features are its last call's output;
    * head-count mismatch between attention maps ``(B, H, L, L)``: when one count divides the
      other, the side with more heads is averaged in contiguous groups down to the smaller count;
      otherwise both sides are averaged to one map. Never a random projection;
    * width mismatch (same shape but the last dimension) gets a trainable ``nn.Linear(student_dim,
      teacher_dim)`` feature matcher in `feature_matchers` (a ``ModuleDict`` keyed by mapping index),
      applied by the capture hook inside the student's forward (so DDP sees it used).
      :class:`~autodistill_trainer.DistillationTrainer` attaches it to the student during training and
      removes it before export; used on its own, add ``criterion.feature_matchers.parameters()`` to your
      optimizer.

    `remove_hooks()` removes every hook and gives the models back as they were given: the attention
    implementation and dropout set-up changed are restored once no other criterion holds the same change.

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
        self.loss_names = loss_names(self.layer_mappings, self.loss_types)

        self._student_capture = FeatureCapture(
            student_model, [(m.student_layer, m.student_process) for m in self.layer_mappings], role="student"
        )
        try:
            self._teacher_capture = FeatureCapture(
                teacher_model, [(m.teacher_layer, m.teacher_process) for m in self.layer_mappings], role="teacher"
            )
        except ConfigError:
            self._student_capture.remove()  # no hook is left on the caller's student
            raise
        self.student_features = self._student_capture.features
        self.teacher_features = self._teacher_capture.features
        self._teacher_inputs = model_input_names(teacher_model)
        self._student_inputs = model_input_names(student_model)
        self.attention_mask: torch.Tensor | None = None
        self.feature_matchers = nn.ModuleDict()
        self.head_alignment: list[str | None] = [None] * n
        self.inputs_are_probabilities: list[bool] = [False] * n
        self._is_attention: list[bool] = [False] * n
        # (object, name) of every override this criterion holds on the models (eager attention, attention
        # dropout); released by remove_hooks() so that the caller's models are left as they were given.
        self._holds: list[tuple[Any, str]] = []
        self.last_loss_terms: dict[str, torch.Tensor] = {}
        self.teacher_stop_key: tuple[str, str] | None = None

        self._student_mask: torch.Tensor | None = None
        self._mask_hook = student_model.register_forward_pre_hook(self._record_student_mask, with_kwargs=True)
        try:
            self._set_up(probe_inputs)
        except BaseException:
            self.remove_hooks()
            raise
        self.loss_funcs: list[FeatureLoss] = self.init_loss_funcs()
        if not early_stop_teacher or not all(m.teacher_layer for m in self.layer_mappings):
            self.teacher_stop_key = None

    # ------------------------------------------------------------------ set-up
    def _record_student_mask(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        self._student_mask = mask.bool() if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None

    def _match(self, i: int, value: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Feature matcher ``i`` on the real positions of a captured student feature (inside the forward)."""
        rows, selected = real_positions(value, self._student_mask)
        return self.feature_matchers[str(i)](rows), selected

    def _student_forward(self, batch: Mapping[str, torch.Tensor], train: bool) -> None:
        """One no-grad student forward on `batch` in train or eval mode (the mode is restored after)."""
        device = model_device(self.student_model)
        student_inputs = {k: v.to(device) for k, v in filter_model_inputs(batch, self._student_inputs).items()}
        was_training = self.student_model.training
        self.student_model.train(train)
        try:
            with torch.no_grad():
                self.student_model(**student_inputs)
        finally:
            self.student_model.train(was_training)

    def _probe(self, batch: Mapping[str, torch.Tensor]) -> list[tuple[Any, Any]]:
        self.teacher_stop_key = None  # the probe runs the whole teacher
        try:
            self._student_forward(batch, train=False)
            self.teacher_model_forward(batch)
            self.teacher_stop_key = self._teacher_capture.early_stop_key()
            return [
                (
                    self._student_capture.get(m.student_layer, m.student_process),
                    self._teacher_capture.get(m.teacher_layer, m.teacher_process),
                )
                for m in self.layer_mappings
            ]
        finally:
            self._clear()

    def _set_up(self, probe_inputs: Mapping[str, torch.Tensor] | None) -> None:
        batch = dict(probe_inputs) if probe_inputs is not None else dummy_batch(self.student_model, self.teacher_model)
        pairs = self._probe(batch)
        # Attention maps are None under SDPA/flash attention: switch the model to eager and probe again.
        switched = False
        for side, model, index in (("student", self.student_model, 0), ("teacher", self.teacher_model, 1)):
            needed = any(pair[index] is None for pair in pairs)
            if hold_eager_attention(model, side, needed):
                self._holds.append((model, "attn_implementation"))
                switched = switched or needed
        if switched:
            pairs = self._probe(batch)

        for i, ((student, teacher), mapping) in enumerate(zip(pairs, self.layer_mappings)):
            where = f"layer_mappings[{i}] ({mapping.student_layer} -> {mapping.teacher_layer})"
            check_selected_feature(where, "student", student, mapping.student_process)
            check_selected_feature(where, "teacher", teacher, mapping.teacher_process)
            self._analyse_mapping(i, where, student, teacher)
        self._switch_off_attention_dropout(batch)

    def _switch_off_attention_dropout(self, batch: Mapping[str, torch.Tensor]) -> None:
        """The dropout rule (:mod:`autodistill_trainer.attention_dropout`) for the mapped student maps."""
        indices = [i for i, probs in enumerate(self.inputs_are_probabilities) if probs and self._is_attention[i]]
        if not indices:
            return
        mappings = [self.layer_mappings[i] for i in indices]
        wheres = [f"layer_mappings[{i}] ({m.student_layer})" for i, m in zip(indices, mappings)]
        try:
            self._holds.extend(switch_off_attention_dropout(
                self.student_model, mappings, wheres,
                forward=lambda train: self._student_forward(batch, train=train),
                feature=lambda m: self._student_capture.get(m.student_layer, m.student_process),
            ))
        finally:
            self._clear()

    def _analyse_mapping(self, i: int, where: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
        if student.ndim != teacher.ndim:
            raise ConfigError(
                f"{where}: student feature has shape {tuple(student.shape)} and teacher feature "
                f"{tuple(teacher.shape)}; no matcher can bridge a different number of dimensions."
            )
        self.inputs_are_probabilities[i] = is_probability_tensor(teacher)
        attention = is_attention_map(student)
        self._is_attention[i] = attention
        if attention and student.shape[1] != teacher.shape[1]:
            s_heads, t_heads = student.shape[1], teacher.shape[1]
            self.head_alignment[i] = (
                "teacher" if t_heads % s_heads == 0 else "student" if s_heads % t_heads == 0 else "both"
            )
            student, teacher = align_heads(self.head_alignment[i], student, teacher)
            logger.debug(
                "%s: student has %d heads, teacher %d: averaging %s heads in groups.",
                where, s_heads, t_heads, self.head_alignment[i] if self.head_alignment[i] != "both" else "all",
            )
        if student.shape == teacher.shape:
            return
        if student.shape[:-1] == teacher.shape[:-1] and not attention:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.matcher_seed + i)  # documented, reproducible initialisation
                matcher = self.init_feature_matcher(student.shape[-1], teacher.shape[-1])
            self.feature_matchers[str(i)] = matcher.to(
                device=student.device, dtype=model_dtype(self.student_model)
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
        device = model_device(self.teacher_model)
        teacher_inputs = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v
            for k, v in filter_model_inputs(inputs, self._teacher_inputs).items()
        }
        if self.teacher_model.training:
            self.teacher_model.eval()
        # Armed only during this call, so that other criteria hooked on the same teacher are unaffected.
        self._teacher_capture.stop_after = self.teacher_stop_key
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
                    student, teacher = align_heads(self.head_alignment[i], student, teacher)
                if student.shape != teacher.shape:
                    raise RuntimeError(
                        f"{self.loss_names[i]}: student rows {tuple(student.shape)} and teacher rows "
                        f"{tuple(teacher.shape)} "
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
        """Remove all hooks and undo what set-up changed on the models: the attention implementation it
        switched to eager and the attention dropout it set to 0 come back (once no other criterion still
        holds the same change). Safe to call more than once."""
        self._mask_hook.remove()
        self._student_capture.remove()
        self._teacher_capture.remove()
        while self._holds:
            module_overrides.release(*self._holds.pop())
        self.attention_mask = None
