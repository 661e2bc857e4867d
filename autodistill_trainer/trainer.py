"""`DistillationTrainer`: a drop-in `transformers.Trainer` that distils a teacher into the model it trains."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Mapping

import torch
from torch import nn
from transformers import Trainer

from .criterion import IntermediateLayersKnowledgeDistillationLoss
from .errors import ConfigError, did_you_mean

logger = logging.getLogger(__name__)

#: Name under which the criterion's feature matchers are attached to the student during training, so
#: that the optimizer, DDP and training checkpoints see them. Removed before the student is exported.
MATCHERS_ATTRIBUTE = "distillation_feature_matchers"

#: Default criterion when none is given: KL between the student's and teacher's output logits, plus
#: the student's own loss (classic logit distillation).
DEFAULT_CRITERION = {"layer_mappings": [("", "logits", "", "logits")], "loss_types": ["KL"], "add_origin_loss": True}

_CRITERION_KEYS = {
    "layer_mappings",
    "layer_mappings_for_knowledge_transfer",
    "loss_types",
    "loss_weights",
    "temperature",
    "add_origin_loss",
    "probe_inputs",
    "matcher_seed",
}


def build_criterion(
    student: nn.Module, teacher: nn.Module, criterion: Mapping[str, Any] | None
) -> IntermediateLayersKnowledgeDistillationLoss:
    """Build the criterion from a dict in the design's vocabulary.

    Keys: ``layer_mappings`` (or the design's ``layer_mappings_for_knowledge_transfer``),
    ``loss_types``, ``loss_weights``, ``temperature``, ``add_origin_loss``, ``probe_inputs``.
    """
    spec = dict(DEFAULT_CRITERION if criterion is None else criterion)
    unknown = set(spec) - _CRITERION_KEYS
    for key in sorted(unknown):
        raise ConfigError(f"criterion: unknown key {key!r}.{did_you_mean(key, _CRITERION_KEYS)}")
    if "layer_mappings_for_knowledge_transfer" in spec:
        if "layer_mappings" in spec:
            raise ConfigError("criterion: give layer_mappings or layer_mappings_for_knowledge_transfer, not both.")
        spec["layer_mappings"] = spec.pop("layer_mappings_for_knowledge_transfer")
    if "layer_mappings" not in spec:
        raise ConfigError("criterion: layer_mappings is required (a list of (student_layer, teacher_layer) pairs).")
    return IntermediateLayersKnowledgeDistillationLoss(student_model=student, teacher_model=teacher, **spec)


class DistillationTrainer(Trainer):
    """A `transformers.Trainer` whose loss distils `teacher_model` into `model`.

    ``loss = student's own loss (if labels are given and add_origin_loss) + criterion.loss_cal()``.
    Each term (``origin_loss`` and one entry per mapping) is averaged over the logging interval and
    across processes and appears in the Trainer's logs beside ``loss``.

    Gradient accumulation gives the update of the equivalent larger batch: each term is a mean over
    its micro-batch (samples, real tokens, or label items for the origin loss), re-weighted by the
    micro-batch's share of the accumulated window's count (`get_batch_samples` counts the window), and
    the Trainer divides by the number of accumulation steps (``loss_is_scaled_for_ga = False``; the
    student is not passed ``num_items_in_batch``). Under DDP each process averages its own data and
    DDP averages the gradients: the loss is not multiplied by the world size.

    Evaluation computes only the student's own loss (the teacher does not run).

    Args:
        model: the student.
        teacher_model: the teacher; prepared once for evaluation (device placement, accelerate's
            evaluation mode, never wrapped in DDP), kept in eval mode without gradients.
        criterion: an :class:`IntermediateLayersKnowledgeDistillationLoss` built on this student and
            teacher, or a dict for :func:`build_criterion`; default :data:`DEFAULT_CRITERION`.
        teacher_dtype: optional dtype for the teacher (``torch.float16``, ``"bfloat16"``...).
        learning_rate_scales: optional ``{module prefix: multiplier}``; parameters under a prefix (exact
            module-prefix match) train at ``learning_rate * multiplier`` (MobileBERT's soft freeze).
        teacher_cache: optional :class:`~autodistill_trainer.teacher_cache.TeacherOutputCache`; when every
            teacher feature of the criterion can be cached, the train dataset gets the cached columns
            and training steps read them instead of running the teacher.
        Other arguments are those of `transformers.Trainer`.
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module | None = None,
        args: Any = None,
        *trainer_args: Any,
        teacher_model: nn.Module | None = None,
        criterion: IntermediateLayersKnowledgeDistillationLoss | Mapping[str, Any] | None = None,
        teacher_dtype: torch.dtype | str | None = None,
        learning_rate_scales: Mapping[str, float] | None = None,
        teacher_cache: Any = None,
        **trainer_kwargs: Any,
    ):
        if model is None or teacher_model is None:
            raise ConfigError("DistillationTrainer needs both model (the student) and teacher_model.")
        if teacher_dtype is not None:
            dtype = getattr(torch, teacher_dtype) if isinstance(teacher_dtype, str) else teacher_dtype
            if not isinstance(dtype, torch.dtype):
                raise ConfigError(f"teacher_dtype {teacher_dtype!r} is not a torch dtype (e.g. 'float16', 'bfloat16').")
            teacher_model = teacher_model.to(dtype)
        teacher_model.eval()
        teacher_model.requires_grad_(False)
        if not isinstance(criterion, IntermediateLayersKnowledgeDistillationLoss):
            criterion = build_criterion(model, teacher_model, criterion)
        elif criterion.student_model is not model or criterion.teacher_model is not teacher_model:
            raise ConfigError("criterion was built on other models than model/teacher_model.")
        self.criterion = criterion
        self.learning_rate_scales = dict(learning_rate_scales or {})
        if args is not None and getattr(args, "ddp_find_unused_parameters", None) is None:
            # Matchers are used in the forward but their outputs are not in the model's outputs, which
            # DDP's unused-parameter search would count as unused: every trainable parameter gets a
            # gradient in distillation, so the search is not needed.
            args.ddp_find_unused_parameters = False
        self.teacher_cache = teacher_cache
        self._cached_columns: list[str] | None = None
        self._teacher_cache_checked = False
        self._attach_matchers(model)  # before the Trainer places the model, so matchers move with it
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
        self.teacher_model.eval()
        self.criterion.teacher_model = self.teacher_model
        self._kd_term_sums: dict[str, torch.Tensor] = {}
        self._kd_term_count = 0

    # ------------------------------------------------------------------ teacher cache
    def get_train_dataloader(self):
        """`Trainer.get_train_dataloader`, reading cached teacher outputs when the criterion's are cacheable.

        The cache is consulted here, on the first training dataloader, so that a trainer that never
        trains (e.g. one that only drives a search) makes no teacher pass.
        """
        if self.teacher_cache is not None and not self._teacher_cache_checked:
            self._teacher_cache_checked = True
            self._use_teacher_cache(self.teacher_cache)
        return super().get_train_dataloader()

    def _use_teacher_cache(self, cache: Any) -> None:
        from transformers import DataCollatorWithPadding, default_data_collator

        from .teacher_cache import TeacherCacheCollator, teacher_column

        if self.train_dataset is None:
            return
        columns = [teacher_column(m) for m in self.criterion.layer_mappings]
        dataset = cache.dataset_for(self.train_dataset, self.criterion.layer_mappings)
        if not all(c in getattr(dataset, "column_names", ()) for c in columns):
            return
        collator = self._base_collator() or cache.data_collator
        if collator is None:
            collator = DataCollatorWithPadding(self.processing_class) if self.processing_class is not None else default_data_collator
        self.train_dataset = dataset
        self.data_collator = TeacherCacheCollator(collator)
        self._cached_columns = columns
        self._signature_columns = None
        logger.info("Training steps read the cached teacher outputs (%s).", ", ".join(columns))

    def _base_collator(self):
        """This trainer's collator without the teacher-cache wrapper."""
        return getattr(self.data_collator, "base", self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._cached_columns:
            self._signature_columns = list(dict.fromkeys([*self._signature_columns, *self._cached_columns]))

    # ------------------------------------------------------------------ matchers
    def _attach_matchers(self, student: nn.Module) -> None:
        if len(self.criterion.feature_matchers) and getattr(student, MATCHERS_ATTRIBUTE, None) is None:
            student.add_module(MATCHERS_ATTRIBUTE, self.criterion.feature_matchers)

    def _detach_matchers(self) -> None:
        student = self.accelerator.unwrap_model(self.model)
        student._modules.pop(MATCHERS_ATTRIBUTE, None)

    @contextlib.contextmanager
    def matchers_detached(self):
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
        """`Trainer.train`, with the feature matchers attached to the student while it runs."""
        self._attach_matchers(self.accelerator.unwrap_model(self.model))
        try:
            return super().train(*args, **kwargs)
        finally:
            self._detach_matchers()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the plain student (no matchers) for `AutoModelFor...from_pretrained`.

        Training checkpoints (``_internal_call=True``) keep the matchers so that a resumed run
        continues with them.
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
        for group in groups:
            optimizer.param_groups.append(group)
        return optimizer

    def _lr_scale(self, name: str) -> float:
        name = name.removeprefix("module.")
        for prefix, scale in self.learning_rate_scales.items():
            if name == prefix or name.startswith(prefix + "."):
                return float(scale)
        return 1.0

    # ------------------------------------------------------------------ schedules
    def distill(self, flash_distillation: Any = None, regular_distillation: Any = None) -> list:
        """Run flash distillation (block by block) then regular distillation on this trainer's student.

        Uses this trainer's teacher, arguments, train dataset, collator and processing class; each stage
        is a fresh DistillationTrainer with its own criterion, optimizer and scheduler (see
        :func:`autodistill_trainer.schedule.run_distillation` for the accepted config forms). This
        trainer's own criterion captures nothing meanwhile. Returns one
        :class:`~autodistill_trainer.schedule.StageResult` per stage (losses, steps, time).
        """
        from .schedule import run_distillation

        student = self.accelerator.unwrap_model(self.model)
        self._detach_matchers()
        with self.criterion.suspended():
            return run_distillation(
                student, self.teacher_model, self.args, self.train_dataset,
                flash_distillation=flash_distillation, regular_distillation=regular_distillation,
                data_collator=self._base_collator(), processing_class=self.processing_class,
                teacher_cache=self.teacher_cache,
            )

    # ------------------------------------------------------------------ search
    def model_builder_builtin(self, model_arch_paras: Mapping[str, Any], model_cls: Any = None) -> nn.Module:
        """Build a student of `model_cls` (default: this trainer's student class) from this trainer's
        student config with the architecture values `model_arch_paras` set on it (eager attention).

        Raises :class:`~autodistill_trainer.errors.InvalidArchitectureError` for architectures that
        cannot work (e.g. heads that do not divide the attention width).
        """
        from .builders import build_model

        base = self.accelerator.unwrap_model(self.model)
        return build_model(model_cls or type(base), base.config, dict(model_arch_paras), attn_implementation="eager")

    def autodistillation(
        self,
        teacher_model: nn.Module,
        model_builder: Any = None,
        model_cls: Any = None,
        train_func: Any = None,
        eval_func: Any = None,
        profile_func: Any = None,
    ) -> Any:
        """Search student architectures (the design's ``Trainer.autodistillation``); return the
        :class:`~autodistill_trainer.search.AutoDistillationResult` (best arch, best student's directory,
        Pareto front, rows, failure reasons).

        Needs ``self.autodistillation_config`` (the design's ``{'search': ..., 'flash_distillation': ...,
        'regular_distillation': ...}`` or an :class:`~autodistill_trainer.configs.AutoDistillationConfig`).
        OOB mode uses this trainer's arguments, data, collator, ``compute_metrics`` and student class/config
        (see :mod:`autodistill_trainer.search.oob`); advanced mode takes your ``model_builder(arch)``,
        ``train_func(model)``, ``eval_func(model)``. Under ``accelerate launch`` rank 0 drives the study and
        broadcasts each architecture; all processes train it together. The
        :class:`~autodistill_trainer.search.AutoDistillation` agent is kept in ``self.autodistillation_agent``.
        """
        from .configs.autodistillation import AutoDistillationConfig
        from .search.oob import OOBContext, run_autodistillation  # the search package imports the schedule

        config = getattr(self, "autodistillation_config", None)
        if config is None:
            raise ConfigError(
                "set trainer.autodistillation_config = {'search': {...}, 'flash_distillation': {...}, "
                "'regular_distillation': {...}} before calling autodistillation()."
            )
        agent, result = run_autodistillation(
            OOBContext.from_trainer(self), teacher_model, AutoDistillationConfig.from_design(config),
            model_builder=model_builder, model_cls=model_cls, train_func=train_func, eval_func=eval_func,
            profile_func=profile_func,
        )
        self.autodistillation_agent = agent
        return result

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
            origin_loss = _output_loss(outputs) if "labels" in inputs else None
            self.criterion.clear_features()
            return (origin_loss, outputs) if return_outputs else origin_loss

        cached = bool(self._cached_columns) and all(c in inputs for c in self._cached_columns)
        if cached:
            self.criterion.attention_mask = inputs.get("attention_mask")
        else:
            # The teacher runs first: its transient activations are freed before the student allocates its own.
            self.criterion.teacher_model_forward(inputs)
        outputs = model(**student_inputs)
        origin_loss = _output_loss(outputs) if "labels" in inputs else None
        scales = self._accumulation_scales(inputs)
        teacher_outputs = [inputs[c] for c in self._cached_columns] if cached else None
        loss = self.criterion.loss_cal(teacher_outputs=teacher_outputs, scales=scales)
        terms = dict(self.criterion.last_loss_terms)
        if self.criterion.add_origin_loss and origin_loss is not None:
            loss = loss + origin_loss * scales["labels"]
            terms["origin_loss"] = origin_loss.detach()
        self._record_terms(terms)
        return (loss, outputs) if return_outputs else loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """`Trainer.get_batch_samples`, also counting the accumulation window's samples, tokens and labels."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window_batches = len(batch_samples)
        self._window_counts = None
        if len(batch_samples) > 1:  # only accumulation needs the counts (they may sync an accelerator)
            counts = [_batch_counts(batch) for batch in batch_samples]
            self._window_counts = {key: sum(c[key] for c in counts) for key in ("sample", "token", "labels")}
        return batch_samples, num_items_in_batch

    def _accumulation_scales(self, inputs: Mapping[str, Any]) -> dict[str, float]:
        """Factor turning this micro-batch's means into its share of the accumulated window's mean."""
        window = getattr(self, "_window_counts", None)
        steps = getattr(self, "_window_batches", 1)
        if not window or steps <= 1:
            return {"sample": 1.0, "token": 1.0, "labels": 1.0}
        local = _batch_counts(inputs)
        return {key: (local[key] * steps / window[key]) if window[key] else 1.0 for key in local}

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if not k.startswith("teacher_")}
        try:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        finally:
            self.criterion.clear_features()

    # ------------------------------------------------------------------ logging
    def _record_terms(self, terms: Mapping[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.float()
            self._kd_term_sums[name] = self._kd_term_sums[name] + value if name in self._kd_term_sums else value
        self._kd_term_count += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (averaged across processes)."""
        if "loss" in logs and self._kd_term_count:
            names = sorted(self._kd_term_sums)
            means = torch.stack([self._kd_term_sums[n] for n in names]) / self._kd_term_count
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means.to(self.accelerator.device), reduction="mean")
            logs.update({name: round(float(v), 6) for name, v in zip(names, means.tolist())})
            self._kd_term_sums, self._kd_term_count = {}, 0
        super().log(logs, start_time)


#: Keys of `Trainer.evaluate()` that describe the evaluation run rather than the model.
_EVALUATION_BOOKKEEPING = {"runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time"}


def arch_slug(arch: Mapping[str, Any]) -> str:
    """A directory name for an architecture: its search-space values, ``hidden_size-128_...``."""
    return "_".join(f"{k}-{v}" for k, v in arch.items()) or "model"


def _batch_counts(batch: Mapping[str, Any]) -> dict[str, int]:
    """Samples, real tokens (attention mask) and label items (labels != -100) of one batch."""
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim > 0), None)
    samples = int(first.shape[0]) if first is not None else 0
    mask = batch.get("attention_mask")
    tokens = int(mask.sum()) if isinstance(mask, torch.Tensor) else samples
    labels = batch.get("labels")
    label_items = int(labels.ne(-100).sum()) if isinstance(labels, torch.Tensor) else samples
    return {"sample": samples, "token": tokens, "labels": label_items}


def _output_loss(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, Mapping) or hasattr(outputs, "keys"):
        return outputs.get("loss") if hasattr(outputs, "get") else None
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor) and outputs[0].ndim == 0:
        return outputs[0]
    return None

