"""`StageTrainer`: one distillation run of a teacher into the model a `transformers.Trainer` trains.

Everything a single run needs lives here (criterion building, the loss with exact gradient accumulation,
feature matchers, teacher preparation, teacher-cache use, per-term logs, export of the plain student).
:mod:`autodistill_trainer.schedule` builds one StageTrainer per flash/regular stage, and
:class:`~autodistill_trainer.DistillationTrainer` extends it with ``distill()`` and ``autodistillation()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Iterator, Mapping

import torch
from torch import nn
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_callback import DefaultFlowCallback, PrinterCallback, ProgressCallback

from .accumulation import (UNIT_SCALES, batch_counts, has_labelled_rows, may_hold_unlabelled_rows, origin_loss_parts,
                           output_loss, window_scales)
from .criterion import IntermediateLayersKnowledgeDistillationLoss
from .errors import ConfigError, did_you_mean
from .guards import check_finite_parameters, requires_grad_restored, teacher_in_dtype
from .labelled_share import LabelledShareMixin
from .teacher_cache import TeacherCacheCollator, teacher_column

logger = logging.getLogger(__name__)

#: Name under which the criterion's feature matchers are attached to the student during training, so
#: that the optimizer, DDP and training checkpoints see them. Removed before the student is exported.
MATCHERS_ATTRIBUTE = "distillation_feature_matchers"

#: Default criterion when none is given: KL between the student's and teacher's output logits, plus
#: the student's own loss (classic logit distillation).
DEFAULT_CRITERION = {"layer_mappings": [("", "logits", "", "logits")], "loss_types": ["KL"], "add_origin_loss": True}

#: ``add_origin_loss`` of a criterion dict that does not say (the same as :data:`DEFAULT_CRITERION`).
DEFAULT_ADD_ORIGIN_LOSS = True

_CRITERION_KEYS = {"layer_mappings", "layer_mappings_for_knowledge_transfer", "loss_types", "loss_weights",
                   "temperature", "add_origin_loss", "probe_inputs", "matcher_seed"}


def build_criterion(
    student: nn.Module, teacher: nn.Module, criterion: Mapping[str, Any] | None
) -> IntermediateLayersKnowledgeDistillationLoss:
    """Build the criterion from a dict in the design's vocabulary (parsed here, once).

    Keys: ``layer_mappings`` (or the design's ``layer_mappings_for_knowledge_transfer``), ``loss_types``,
    ``loss_weights``, ``temperature``, ``add_origin_loss`` (default True, as :data:`DEFAULT_CRITERION`),
    ``probe_inputs``, ``matcher_seed``.
    """
    spec = dict(DEFAULT_CRITERION if criterion is None else criterion)
    for key in sorted(set(spec) - _CRITERION_KEYS):
        raise ConfigError(f"criterion: unknown key {key!r}.{did_you_mean(key, _CRITERION_KEYS)}")
    if "layer_mappings_for_knowledge_transfer" in spec:
        if "layer_mappings" in spec:
            raise ConfigError("criterion: give layer_mappings or layer_mappings_for_knowledge_transfer, not both.")
        spec["layer_mappings"] = spec.pop("layer_mappings_for_knowledge_transfer")
    if "layer_mappings" not in spec:
        raise ConfigError("criterion: layer_mappings is required (a list of (student_layer, teacher_layer) pairs).")
    spec.setdefault("add_origin_loss", DEFAULT_ADD_ORIGIN_LOSS)
    return IntermediateLayersKnowledgeDistillationLoss(student_model=student, teacher_model=teacher, **spec)


class StageTrainer(LabelledShareMixin, Trainer):
    """A `transformers.Trainer` whose loss distils `teacher_model` into `model` (one distillation run).

    ``loss = student's own loss (if labels are given and add_origin_loss) + criterion.loss_cal()``. Each term
    (``origin_loss`` and one entry per mapping) is averaged over the logging interval and across processes and
    appears in the Trainer's logs beside ``loss``.

    Gradient accumulation gives the update of the equivalent larger batch: each term is a mean over its own
    unit in the micro-batch (samples, real tokens, or label items; a composite student loss such as MLM +
    next-sentence is split and each part weighted by its own items), re-weighted by the micro-batch's share of
    the accumulated window's count, and the Trainer divides by the number of accumulation steps
    (``loss_is_scaled_for_ga = False``; the student is not passed ``num_items_in_batch``). Under DDP each
    process averages its own data and DDP averages the gradients.

    While ``train()`` runs, the teacher is in eval mode without gradients; its ``requires_grad`` flags (and
    those of the student's parameters frozen for the run) are restored afterwards. Under DDP, parameters the
    loss does not reach (found with one probe backward) are not trained in this run, so that DDP needs no
    unused-parameter search (``ddp_find_unused_parameters`` defaults to False in a copy of `args`; the
    caller's `args` are never changed). After training, non-finite weights raise
    :class:`~autodistill_trainer.guards.NonFiniteParametersError`. Evaluation computes only the student's own loss.

    Args:
        model: the student.
        teacher_model: the teacher; prepared once for evaluation (device, accelerate's evaluation mode, no DDP).
        criterion: an :class:`IntermediateLayersKnowledgeDistillationLoss` built on this student and teacher,
            or a dict for :func:`build_criterion`; default :data:`DEFAULT_CRITERION`.
        teacher_dtype: optional dtype for the teacher (``torch.float16``, ``"bfloat16"``...); converts it in place.
        learning_rate_scales: optional ``{module prefix: multiplier}``; parameters under a prefix (exact
            module-prefix match) train at ``learning_rate * multiplier`` (MobileBERT's soft freeze).
        teacher_cache: optional :class:`~autodistill_trainer.teacher_cache.TeacherOutputCache`; when every
            teacher feature of the criterion can be cached, training steps read them instead of running the teacher.
        Other arguments are those of `transformers.Trainer`.
    """

    loss_is_scaled_for_ga = False
    log_step_offset: int = 0  #: added to the logged step: the earlier stages' steps (one step count per trial)

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        *trainer_args: Any,
        teacher_model: nn.Module | None = None,
        criterion: IntermediateLayersKnowledgeDistillationLoss | Mapping[str, Any] | None = None,
        teacher_dtype: torch.dtype | str | None = None,
        learning_rate_scales: Mapping[str, float] | None = None,
        teacher_cache: Any = None,
        **trainer_kwargs: Any,
    ):
        if model is None or teacher_model is None:
            raise ConfigError(f"{type(self).__name__} needs both model (the student) and teacher_model.")
        teacher_model = teacher_in_dtype(teacher_model, teacher_dtype)
        if not isinstance(criterion, IntermediateLayersKnowledgeDistillationLoss):
            criterion = build_criterion(model, teacher_model, criterion)
        elif criterion.student_model is not model or criterion.teacher_model is not teacher_model:
            raise ConfigError("criterion was built on other models than model/teacher_model.")
        self.criterion = criterion
        self.learning_rate_scales = dict(learning_rate_scales or {})
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")  # what Trainer itself would use
        if args.ddp_find_unused_parameters is None:
            # Matchers run inside the forward but their outputs are not in the model's outputs, which DDP's
            # unused-parameter search would count as unused (and then fail); parameters the loss does not
            # reach are frozen for the run instead (see `unreached_parameters_frozen`).
            args = dataclasses.replace(args, ddp_find_unused_parameters=False)
        self.teacher_cache = teacher_cache
        self._cached_columns: list[str] | None = None
        self._teacher_cache_checked = False
        self._attach_matchers(model)  # before the Trainer places the model, so matchers move with it
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.criterion.teacher_model = self.teacher_model
        self._kd_term_sums: dict[str, torch.Tensor] = {}
        self._kd_term_counts: dict[str, int] = {}
        self._kd_term_count = 0
        self._window_counts: dict[str, int] | None = None
        self._unlabelled_rows = may_hold_unlabelled_rows(self.train_dataset)
        self._window_batches = 1

    # ------------------------------------------------------------------ callbacks, collator
    def user_callbacks(self) -> list:
        """This trainer's callbacks other than the ones every Trainer creates for itself (flow, progress,
        printer, the ``report_to`` integrations): what the stages of ``distill()`` must also receive."""
        defaults = (DefaultFlowCallback, ProgressCallback, PrinterCallback,
                    *get_reporting_integration_callbacks(self.args.report_to))
        return [cb for cb in self.callback_handler.callbacks if not isinstance(cb, defaults)]

    def _base_collator(self) -> Any:
        """This trainer's collator without the teacher-cache wrapper."""
        return getattr(self.data_collator, "base", self.data_collator)

    # ------------------------------------------------------------------ teacher cache
    def get_train_dataloader(self):
        """`Trainer.get_train_dataloader`, reading cached teacher outputs when the criterion's are cacheable.

        The cache is consulted here, on the first training dataloader, so that a trainer that never
        trains (e.g. one that only drives a search) makes no teacher pass.
        """
        self._maybe_use_teacher_cache()
        return super().get_train_dataloader()

    def _maybe_use_teacher_cache(self) -> None:
        if self.teacher_cache is not None and not self._teacher_cache_checked:
            self._teacher_cache_checked = True
            self._use_teacher_cache(self.teacher_cache)

    def _use_teacher_cache(self, cache: Any) -> None:
        if self.train_dataset is None:
            return
        columns = [teacher_column(m) for m in self.criterion.layer_mappings]
        dataset = cache.dataset_for(self.train_dataset, self.criterion.layer_mappings)
        if not all(c in getattr(dataset, "column_names", ()) for c in columns):
            return
        collator = self._base_collator() or cache.data_collator
        if collator is None and self.processing_class is not None:
            collator = DataCollatorWithPadding(self.processing_class)
        collator = collator or default_data_collator
        self.train_dataset = dataset
        self.data_collator = TeacherCacheCollator(collator)
        self._cached_columns = columns
        self._signature_columns = None
        logger.info("Training steps read the cached teacher outputs (%s).", ", ".join(columns))

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._cached_columns:
            self._signature_columns = list(dict.fromkeys([*self._signature_columns, *self._cached_columns]))

    # ------------------------------------------------------------------ matchers, training, export
    def _attach_matchers(self, student: nn.Module) -> None:
        if len(self.criterion.feature_matchers) and getattr(student, MATCHERS_ATTRIBUTE, None) is None:
            student.add_module(MATCHERS_ATTRIBUTE, self.criterion.feature_matchers)

    def _detach_matchers(self) -> None:
        self.accelerator.unwrap_model(self.model)._modules.pop(MATCHERS_ATTRIBUTE, None)

    @contextlib.contextmanager
    def matchers_detached(self) -> Iterator[nn.Module]:
        """Context in which the student carries no feature matchers (for exporting it)."""
        student = self.accelerator.unwrap_model(self.model)
        attached = student._modules.get(MATCHERS_ATTRIBUTE)
        self._detach_matchers()
        try:
            yield student
        finally:
            if attached is not None:
                student.add_module(MATCHERS_ATTRIBUTE, attached)

    def train(self, *args: Any, **kwargs: Any):
        """`Trainer.train` with the matchers attached and the teacher frozen while it runs; restores the
        teacher's and student's ``requires_grad`` flags, then checks that every trained weight is finite."""
        student = self.accelerator.unwrap_model(self.model)
        self._attach_matchers(student)
        teacher_was_training = self.teacher_model.training
        try:
            with requires_grad_restored(self.teacher_model, student):
                self.teacher_model.eval().requires_grad_(False)
                with contextlib.ExitStack() as stack:
                    if self.accelerator.num_processes > 1:
                        stack.enter_context(self.unreached_parameters_frozen())
                    output = super().train(*args, **kwargs)
                check_finite_parameters(student)
        finally:
            self.teacher_model.train(teacher_was_training)
            self._detach_matchers()
        return output

    @contextlib.contextmanager
    def unreached_parameters_frozen(self) -> Iterator[list[str]]:
        """Context in which trainable parameters that get no gradient from this trainer's loss do not train.

        One probe forward/backward on the first training batch (under a forked random state, so the run's
        random stream is unchanged) finds them; under DDP the processes agree on the union of what is
        reached. Yields their names; their ``requires_grad`` flags and all gradients are reset on exit.
        """
        model = self.accelerator.unwrap_model(self.model)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        devices = [self.args.device] if self.args.device.type == "cuda" else []
        was_training = model.training
        with torch.random.fork_rng(devices=devices):
            model.train()
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, self._prepare_inputs(self._probe_batch()))
            if not loss.requires_grad:
                raise ConfigError(
                    "the distillation loss reaches none of the trainable parameters: map features of the modules "
                    "that train (flash_distillation.block_names) or train the modules the mappings read."
                )
            loss.backward()
        model.train(was_training)
        reached = torch.tensor([float(p.grad is not None) for _, p in trainable], device=self.args.device)
        for p in model.parameters():
            p.grad = None
        self._kd_term_sums, self._kd_term_counts, self._kd_term_count = {}, {}, 0
        if self.accelerator.num_processes > 1:
            reached = self.accelerator.reduce(reached, reduction="sum")
        frozen = [(n, p) for (n, p), hit in zip(trainable, reached.tolist()) if not hit]
        if frozen:
            logger.info("%d parameter tensors get no gradient from this loss and do not train in this run: %s",
                        len(frozen), ", ".join(n for n, _ in frozen[:8]) + (" ..." if len(frozen) > 8 else ""))
        with requires_grad_restored(model):
            for _, p in frozen:
                p.requires_grad_(False)
            yield [n for n, _ in frozen]

    def _probe_batch(self) -> Any:
        """The first training batch, collated as the Trainer does, without a sampler or accelerate's wrapper."""
        self._maybe_use_teacher_cache()
        dataset, collator = self.train_dataset, self.data_collator
        if callable(getattr(dataset, "remove_columns", None)) and hasattr(dataset, "column_names"):
            dataset = self._remove_unused_columns(dataset, description="training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="training")
        loader = torch.utils.data.DataLoader(dataset, batch_size=self._train_batch_size, collate_fn=collator)
        return next(iter(loader))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the plain student (no matchers) for `AutoModelFor...from_pretrained`.

        Training checkpoints (``_internal_call=True``) keep the matchers so that a resumed run continues with them.
        """
        if _internal_call:
            return super().save_model(output_dir, _internal_call=True)
        with self.matchers_detached():
            super().save_model(output_dir, _internal_call=False)

    def create_optimizer(self, model=None):
        """`Trainer.create_optimizer`, then split parameter groups by `learning_rate_scales`."""
        optimizer = super().create_optimizer(model)
        if not self.learning_rate_scales:
            return optimizer
        names = {id(p): n for n, p in (model or self.model).named_parameters()}
        groups = []
        for group in optimizer.param_groups:
            by_scale: dict[float, list] = {}
            for p in group["params"]:
                by_scale.setdefault(self._lr_scale(names.get(id(p), "")), []).append(p)
            for scale, params in by_scale.items():
                groups.append({**group, "params": params, "lr": group["lr"] * scale})
        optimizer.param_groups.clear()
        optimizer.param_groups.extend(groups)
        return optimizer

    def _lr_scale(self, name: str) -> float:
        name = name.removeprefix("module.")
        for prefix, scale in self.learning_rate_scales.items():
            if name == prefix or name.startswith(prefix + "."):
                return float(scale)
        return 1.0

    # ------------------------------------------------------------------ loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        student_inputs = {k: v for k, v in inputs.items() if not k.startswith("teacher_")}
        if not model.training:
            outputs = model(**student_inputs)
            origin_loss = output_loss(outputs) if "labels" in inputs else None
            self.criterion.clear_features()
            return (origin_loss, outputs) if return_outputs else origin_loss

        cached = bool(self._cached_columns) and all(c in inputs for c in self._cached_columns)
        if cached:
            self.criterion.attention_mask = inputs.get("attention_mask")
        else:
            # The teacher runs first: its transient activations are freed before the student allocates its own.
            self.criterion.teacher_model_forward(inputs)
        outputs = model(**student_inputs)
        scales = (window_scales(batch_counts(inputs), self._window_counts, self._window_batches)
                  if self._window_counts else UNIT_SCALES)  # counting syncs an accelerator: only when accumulating
        teacher_outputs = [inputs[c] for c in self._cached_columns] if cached else None
        loss = self.criterion.loss_cal(teacher_outputs=teacher_outputs, scales=scales)
        terms = dict(self.criterion.last_loss_terms)
        # Unlabelled rows (label -100: unlabeled_file, augmented copies) feed the KD terms only; a micro-batch
        # without any labelled row has no label loss (the model's mean over zero rows would be NaN).
        labelled = not self._unlabelled_rows or has_labelled_rows(inputs)  # checked only where -100 rows exist
        parts = origin_loss_parts(outputs, inputs) if labelled else []
        uncounted: tuple[str, ...] = ()
        if self.criterion.add_origin_loss and parts:
            for part, unit in parts:
                loss = loss + part * scales[unit]
            terms["origin_loss"] = sum(part.detach() for part, _ in parts)
        elif self.criterion.add_origin_loss and "labels" in inputs:  # same term names on every process (DDP logs)
            terms["origin_loss"] = loss.detach().new_zeros(())
            uncounted = ("origin_loss",)
        self._record_terms(terms, uncounted)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """`Trainer.get_batch_samples`, also counting the accumulation window's samples, tokens and label items."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window_batches = len(batch_samples)
        self._window_counts = None
        if len(batch_samples) > 1:  # only accumulation needs the counts (they may sync an accelerator)
            counts = [batch_counts(batch) for batch in batch_samples]
            self._window_counts = {key: sum(c[key] for c in counts) for key in counts[0]}
        return batch_samples, num_items_in_batch

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if not k.startswith("teacher_")}
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self.criterion.clear_features()

    # ------------------------------------------------------------------ logging
    def _record_terms(self, terms: Mapping[str, torch.Tensor], uncounted: tuple[str, ...] = ()) -> None:
        """Add one micro-batch's terms; a term in `uncounted` (no labelled row: no label loss) is not averaged in."""
        for name, value in terms.items():
            value = value.float()
            self._kd_term_sums[name] = self._kd_term_sums[name] + value if name in self._kd_term_sums else value
            self._kd_term_counts[name] = self._kd_term_counts.get(name, 0) + (name not in uncounted)
        self._kd_term_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (averaged across processes)."""
        if "loss" in logs and self._kd_term_count:
            names = sorted(self._kd_term_sums)
            means = torch.stack([self._kd_term_sums[n] / max(self._kd_term_counts[n], 1) for n in names])
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean")
            logs.update({name: round(float(v), 6) for name, v in zip(names, means.tolist())})
            self._kd_term_sums, self._kd_term_counts, self._kd_term_count = {}, {}, 0
        self.state.global_step += self.log_step_offset
        try:
            super().log(logs, start_time)
        finally:
            self.state.global_step -= self.log_step_offset
